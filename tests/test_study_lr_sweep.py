"""soap_lab.studies.lr_sweep and the tuned lr (replaces the lr parts of test_ablations.py, test_analysis.py,
test_plot_studies.py and test_seeded_claims.py)."""
import pytest

from conftest import _write_synthetic_record
from soap_lab.records import store
from soap_lab.studies import get_scale, lr_sweep_configs, tuned_lr
from soap_lab.studies import lr_sweep as L
from soap_lab.studies.base import CorruptResults, MissingResults


def test_tuned_lr_averages_the_tuning_seeds_and_names_a_missing_record(tmp_path):
    sc = get_scale("cpu", preset="tiny", steps=40, eval_every=10, seeds=(0, 1), lrs={"soap": (1e-3, 1e-2)})
    with pytest.raises(MissingResults, match="python -m soap_lab study run lr_sweep --scale cpu"):
        tuned_lr("soap", sc, tmp_path)
    for c in lr_sweep_configs(sc, tmp_path):
        _write_synthetic_record(c, tmp_path)  # conftest: 0.3 worse at lr < 5e-3
    assert tuned_lr("soap", sc, tmp_path) == 1e-2 and tuned_lr("soap_factorized", sc, tmp_path) == 1e-2
    bad = store.record_path(lr_sweep_configs(sc, tmp_path)[0], tmp_path)
    bad.write_text("{not json")
    with pytest.raises(CorruptResults, match=bad.name):
        tuned_lr("soap", sc, tmp_path)


def test_the_tuning_is_checked_on_every_seed(synthetic_seeded_pool, synthetic_seeded_scale):
    sc, root = synthetic_seeded_scale, synthetic_seeded_pool
    sd = L.STUDY.data(sc, root)
    assert sorted(sd.runs["seed"].unique()) == [0, 1, 2] and not sd.missing
    assert L.tuned_lrs(sd) == {lb: 1e-2 for lb in ("AdamW", "SOAP", "Shampoo")}
    rows = L.claims(sc, root)
    assert {r["where"] for r in rows} == {"adamw lr 0.001", "soap lr 0.001", "shampoo lr 0.001"}
    assert all(r["n"] == 3 and r["verdict"] == "reproduced" and r["mean"] > 0.2 for r in rows)


def test_the_committed_check_at_cpu_freq():
    rows = {r["where"]: r for r in L.claims(get_scale("cpu_freq"))}
    assert rows["adamw lr 0.003"]["mean"] == pytest.approx(0.0678, abs=1e-4)  # the numbers of the old report
    assert rows["soap lr 0.03"]["verdict"] == "inconclusive at this power"


def test_the_figure_draws_every_seed_twice_the_same(synthetic_seeded_pool, synthetic_seeded_scale, tmp_path):
    sd = L.STUDY.data(synthetic_seeded_scale, synthetic_seeded_pool)
    a = L.draw({"cpu_freq": sd, "gpu": None}, tmp_path / "a")
    b = L.draw({"cpu_freq": sd, "gpu": None}, tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b] and a[0].stat().st_size > 10_000
