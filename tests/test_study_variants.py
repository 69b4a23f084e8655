"""soap_lab.studies.variants (paper Fig. 6): its grid is the committed runs, its claims on a frame with known answers
and on the committed records (the numbers of the report before the redesign), its figure drawn twice the same.

Replaces: tests/test_seeded_claims.py::test_variants_claims (claims on a synthetic frame) and the variants part of
::test_the_study_grid_holds_each_claims_runs; tests/test_plot_studies.py::test_each_figure_names_a_missing_scale
[variants] and ::test_no_scale_with_results_is_an_error; tests/test_hygiene.py::test_a_figure_drawn_twice_is_the_same_bytes
(for this figure)."""
import pandas as pd
import pytest

pytest.importorskip("seaborn")

from soap_lab.records import store  # noqa: E402
from soap_lab.studies import get_scale, label, registry, report  # noqa: E402
from soap_lab.studies import variants as V  # noqa: E402

F = 10


@pytest.fixture(scope="module")
def committed():
    """The variants study at scale cpu_freq from the committed records (data/runs/paper_cpu_freq)."""
    return V.STUDY.data(get_scale("cpu_freq"))


def test_registered_with_its_figure():
    assert registry.get("variants") is V.STUDY and registry.figures()["variants"] == (V.STUDY, V.draw)


@pytest.mark.parametrize("scale, n", [("cpu_freq", 18), ("cpu", 6)])
def test_the_grid_is_the_committed_runs(scale, n):
    """Same run ids as the old ``ablations.variants``: every config has its committed record."""
    sc = get_scale(scale)
    cfgs = V.STUDY.configs(sc)
    assert len(cfgs) == n and all(store.has_record(c) for c in cfgs)
    assert [label(c) for c in cfgs[::len(sc.seeds)]] == ["AdamW", "Shampoo", "SOAP", "SOAP factorized", "SOAP one-sided",
                                                         "SOAP factorized + one-sided"]
    assert {c.seed for c in cfgs} == set(sc.seeds) and {c.batch_size for c in cfgs} == {sc.batch_size}
    assert {c.precondition_frequency for c in cfgs if c.optimizer != "adamw"} == {sc.base_frequency}
    assert {c.lr for c in cfgs if c.optimizer.startswith("soap")} == {cfgs[len(sc.seeds) * 2].lr}  # SOAP's tuned lr


def _frame(factorized_shift=0.001, one_sided_vs_shampoo=0.05, both_vs_adamw=-0.1):
    rows = []
    for s in range(3):
        base = 1.5 + 0.01 * s
        rows += [("AdamW", None, s, base), ("Shampoo", F, s, base - 0.2 + 0.001 * s), ("SOAP", F, s, base - 0.2),
                 ("SOAP factorized", F, s, base - 0.2 + factorized_shift),
                 ("SOAP one-sided", F, s, base - 0.2 + 0.001 * s + one_sided_vs_shampoo),
                 ("SOAP factorized + one-sided", F, s, base + both_vs_adamw), ("SOAP", 30, s, 9.0)]
    return pd.DataFrame([dict(run_id=f"r{i}", label=lb, f=f, seed=s, final_val_loss=v)
                         for i, (lb, f, s, v) in enumerate(rows)])


def test_claims_on_a_frame_with_known_answers():
    rows = V.claim_rows(_frame(), F)
    fac, one, both = rows
    assert fac["values"] == pytest.approx([0.001] * 3) and fac["verdict"] == "reproduced"
    assert one["values"] == pytest.approx([0.05] * 3) and one["verdict"] == "contradicted"
    assert both["values"] == pytest.approx([-0.1] * 3) and both["verdict"] == "reproduced"
    assert all(r["f"] == F and r["where"] == "f = 10" and r["n"] == 3 for r in rows)
    worse = V.claim_rows(_frame(factorized_shift=0.1, both_vs_adamw=0.05), F)
    assert worse[0]["verdict"] == "contradicted" and worse[2]["verdict"] == "contradicted"
    assert V.claim_rows(_frame()[lambda d: d["label"] != "AdamW"], F)[-1]["claim"].startswith("one-sided")


def test_claims_on_the_committed_records_are_the_reports(committed):
    """The numbers of the report before the redesign (docs: /work/baseline/report_before.md, f = 10, 3 seeds)."""
    rows = V.claims(get_scale("cpu_freq"))
    got = [(round(r["mean"], 4), round(r["low"], 4), round(r["high"], 4), r["n"], r["verdict"]) for r in rows]
    assert got == [(-0.0084, -0.0223, 0.0056, 3, "inconclusive at this power"),
                   (0.0456, 0.0270, 0.0641, 3, "contradicted"),
                   (-0.0976, -0.1385, -0.0566, 3, "reproduced")]
    term = report.terminal([{"study": "variants", **r} for r in rows])
    assert "one-sided SOAP ≈ Shampoo" in term and "f = 10" in term


def test_table_has_memory_per_optimizer(committed):
    tab = V.table(committed.runs)
    assert set(tab["label"]) == {label(c) for c in V.STUDY.configs(get_scale("cpu_freq"))}
    mem = tab.groupby("label")["state_MB"].mean()
    assert mem["SOAP factorized + one-sided"] < mem["AdamW"] < mem["SOAP"]
    (title, md), = V.tables(get_scale("cpu_freq"))
    assert "memory" in title and "| SOAP factorized + one-sided |" in md


def test_figure_is_the_same_bytes_twice_and_names_a_missing_scale(committed, tmp_path):
    a = V.draw({"cpu_freq": committed, "gpu": None}, tmp_path / "a")
    b = V.draw({"cpu_freq": committed, "gpu": None}, tmp_path / "b")
    assert [p.name for p in a] == ["variants.png", "variants.pdf"] and a[0].stat().st_size > 10000
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))


def test_no_scale_with_results_is_one_error_naming_the_command(tmp_path):
    with pytest.raises(store.MissingResults, match=r"variants: no stored runs: run `python -m soap_lab study run variants --scale cpu`"):
        V.draw({"cpu": None}, tmp_path)
