"""soap_lab.studies.equivalence (Claim 1, §3) and soap_lab.equivalence.widget: the claims on the stored data set
(exact, n = 1) and on data sets with known answers, measuring refuses to replace the stored data, the two figures
from the stored data (the same bytes twice; issue 21: the annotation box clear of the points, headroom above
them), and the widget's cache and parameters.

Replaces: tests/test_plot_equivalence.py (both tests); the widget parts of tests/test_notebook.py
(::test_claim1_widget_recomputes_only_for_a_new_shape_or_conditioning, ::test_equivalence_params_are_coerced_and_checked);
tests/test_hygiene.py::test_a_corrupt_data_file_is_named. tests/test_claim1.py stays (it tests
soap_lab.equivalence.experiments)."""
import copy

import pytest

pytest.importorskip("seaborn")
import matplotlib.pyplot as plt  # noqa: E402

from soap_lab import cli  # noqa: E402
from soap_lab.equivalence import experiments, widget  # noqa: E402
from soap_lab.records import datasets, store  # noqa: E402
from soap_lab.studies import get_scale, registry, report  # noqa: E402
from soap_lab.studies import equivalence as E  # noqa: E402
from soap_lab.studies.params import ParameterError  # noqa: E402


@pytest.fixture(scope="module")
def claim1():
    return E.load_claim1()


def test_registered_as_a_measured_study():
    s = registry.get("equivalence")
    assert s is E.STUDY and s.measure is E.measure and s.grid is None and not s.tuned
    assert set(s.figures) == {"equivalence_claim1", "equivalence_gap"}


def test_claims_on_the_stored_data_are_exact(claim1):
    rows = E.claims(get_scale("cpu_freq"))
    assert rows == E.claims(get_scale("gpu"))  # the same at every scale
    assert [r["verdict"] for r in rows] == ["reproduced"] * 4
    assert all(r["n"] == 1 and r["exact"] and r["seeds"] == [] and r["where"].startswith("exact (float64)") for r in rows)
    holds, quarter, trace, stale = rows
    assert holds["mean"] == claim1["exact_error"] < 1e-10 and holds["threshold"] == 1e-10
    assert quarter["mean"] == pytest.approx(0.9907, abs=1e-4) and trace["mean"] == pytest.approx(0.9069, abs=1e-4)
    assert stale["mean"] == pytest.approx(0.1653, abs=1e-4) and stale["staleness"] == 4  # the smallest of s = 1..40
    md = report.markdown_rows([{"study": "equivalence", **r} for r in rows])
    assert "| exact (float64): 1.4e-14 |" in md and "| — |" in md


def test_claims_on_data_with_known_answers(claim1):
    broken = copy.deepcopy(claim1)
    broken["exact_error"] = 1e-6
    for r in broken["exponent"]:
        if r["exponent"] == 0.25:
            r["error"] = 1e-4
    broken["staleness"][3]["error"] = 1e-3
    holds, quarter, trace, stale = E.claim_rows(broken)
    assert holds["verdict"] == quarter["verdict"] == stale["verdict"] == "contradicted"
    assert trace["verdict"] == "reproduced" and stale["staleness"] == 3
    small = experiments.claim1_study(m=5, n=4, n_batches=8, max_staleness=3, exponents=(0.5, 0.7))
    assert [r["verdict"] for r in E.claim_rows(small)] == ["reproduced"] * 3  # no ¼ computed: no row for it
    with pytest.raises(ValueError, match="kind must be"):
        E.exact_row("x", 1.0, "equal", 0.1)


SMALL = dict(claim1=dict(m=5, n=4, n_batches=8, max_staleness=3, exponents=(0.25, 0.5)),
             gap=dict(frequencies=(2,), refreshes=("qr",), problems=("teaching",), steps=8, m=5, n=4, batch=16))


def test_measure_writes_both_and_refuses_to_replace_them(tmp_path, monkeypatch):
    out = E.measure(None, out_dir=tmp_path, log=None, **SMALL)
    assert out == tmp_path and sorted(p.name for p in tmp_path.iterdir()) == ["claim1.json", "gap_trajectory.json"]
    c, g = E.load_claim1(tmp_path), E.load_gap(tmp_path)
    assert c["params"]["m"] == 5 and "provenance" in c and "provenance" in g and g["params"]["steps"] == 8
    monkeypatch.setattr(experiments, "claim1_study", lambda **kw: pytest.fail("computed although stored"))
    with pytest.raises(ParameterError, match=r"stored at .*claim1\.json: pass --force"):
        E.measure(None, out_dir=tmp_path, log=None)
    (tmp_path / "claim1.json").unlink()  # one of the two is enough to refuse
    with pytest.raises(ParameterError, match=r"gap_trajectory\.json: pass --force"):
        E.measure(None, out_dir=tmp_path, log=None)


def test_the_cli_refuses_in_one_line_naming_force(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["study", "run", "equivalence", "--scale", "cpu"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "--force" in err and "claim1.json" in err


def test_missing_data_name_the_command(tmp_path):
    with pytest.raises(store.MissingResults, match="run `python -m soap_lab study run equivalence`"):
        E.load_claim1(tmp_path)


def test_claim1_figure_is_the_same_bytes_twice_or_returned_with_values_circled(claim1, tmp_path):
    a, b = E.draw_claim1(claim1, tmp_path / "a"), E.draw_claim1(claim1, tmp_path / "b")
    assert [p.name for p in a] == ["equivalence_claim1.png", "equivalence_claim1.pdf"]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    fig = E.draw_claim1(claim1, None, highlight={"exponent": 0.25, "staleness": 2})
    assert len(fig.axes) == 4 and len(fig.axes[1].collections) == 1  # the circle
    plt.close(fig)


def test_issue_21_the_box_leaves_the_exponent_points_clear_and_they_have_headroom(claim1):
    fig = E.draw_claim1(claim1, None)
    ax = fig.axes[1]
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    box = next(t for t in ax.texts if t.get_bbox_patch() is not None).get_bbox_patch().get_window_extent(r)
    x, y = ax.lines[0].get_xdata(), ax.lines[0].get_ydata()
    pts = ax.transData.transform(list(zip(x, y)))
    assert not any(box.x0 - 5 <= px <= box.x1 + 5 and box.y0 - 5 <= py <= box.y1 + 5 for px, py in pts)
    top = ax.get_window_extent(r).y1
    assert all(top - py > 20 for px, py in pts)  # ≥ 20 px below the top frame
    assert ax.get_ylim()[1] >= 10 * max(y)
    plt.close(fig)


def test_gap_figure_from_the_stored_data_and_without_rows(tmp_path):
    g = E.load_gap()
    a, b = E.draw_gap(g, tmp_path / "a"), E.draw_gap(g, tmp_path / "b")
    assert [p.name for p in a] == ["equivalence_gap.png", "equivalence_gap.pdf"] and a[0].stat().st_size > 10000
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    with pytest.raises(store.MissingResults, match="the gap trajectory has no rows"):
        E.draw_gap({"params": g["params"], "columns": {}}, tmp_path)


def test_make_figures_draws_from_the_stored_data_and_names_a_corrupt_file(tmp_path, monkeypatch, capsys):
    scales = {"cpu_freq": get_scale("cpu_freq")}
    assert report.draw_all(scales, ["equivalence_claim1"], out=tmp_path / "fig", log=lambda m: None) == []
    assert (tmp_path / "fig" / "equivalence_claim1.png").is_file()
    (tmp_path / datasets.CLAIM1_FILE).write_text('{"params": {"m": 1')
    monkeypatch.setattr(datasets, "EQUIVALENCE_DIR", tmp_path)
    assert report.draw_all(scales, ["equivalence_claim1"], out=tmp_path / "fig2", log=lambda m: None) == ["equivalence_claim1"]
    err = capsys.readouterr().err
    assert "skipped equivalence_claim1" in err and str(tmp_path / datasets.CLAIM1_FILE) in err


# ------------------------------------------------------------------------------------------ the widget
def test_claim1_widget_recomputes_only_for_a_new_shape_or_conditioning():
    study = widget.claim1_cache(n_batches=8, max_staleness=3)
    a = study(6, 4, 10.0, 0.25)
    assert study(6, 4, 10.0, 0.5) is a and study(6, 4, 10.0, 0.7000000001) is a  # exponent slider: cached
    assert {r["exponent"] for r in a["exponent"]} >= set(widget.EXPONENT_GRID)
    off = study(6, 4, 10.0, 0.33)  # off the slider's grid: computed once more, with it
    assert off is not a and any(abs(r["exponent"] - 0.33) < 1e-12 for r in off["exponent"])
    assert study(6, 5, 10.0, 0.25) is not a
    assert study.cache_info().misses == 3 and study.cache_info().hits == 2


def test_equivalence_params_are_coerced_and_checked():
    out = widget.equivalence_params(16, 12, 100.0, 64, 0.25, 10, 40, "[10, 50]", ["qr"], ["teaching"], 200, "tiny")
    assert tuple(out[7]) == (10, 50) and out[:2] == (16, 12)
    with pytest.raises(ParameterError, match="need 0 <= staleness <= max_staleness"):
        widget.equivalence_params(16, 12, 100.0, 64, 0.25, 50, 40, [10], ["qr"], ["teaching"], 200, "tiny")
    with pytest.raises(ParameterError, match="unknown gpt_preset 'huge'"):
        widget.equivalence_params(16, 12, 100.0, 64, 0.25, 10, 40, [10], ["qr"], ["teaching"], 200, "huge")
    assert widget.gap_shape("32", 24.0) == (32, 24)
    with pytest.raises(ParameterError, match="gap_m must be an integer >= 2"):
        widget.gap_shape(1, 24)
