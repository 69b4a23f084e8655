"""soap_lab.overhead: the timing study's fit and a run on tiny shapes."""
import pytest

from soap_lab import notebook, overhead


def test_overhead_fit_recovers_floor():
    fit = overhead.fit_floor([1, 3, 10, 30, 100], [5 + 50 / f for f in (1, 3, 10, 30, 100)])
    assert fit["floor_pct"] == pytest.approx(5) and fit["per_refresh_pct"] == pytest.approx(50)


def test_timing_study_runs_on_tiny_shapes(one_thread):
    d = overhead.timing_study(notebook.notebook_scale("cpu", overrides={"preset": "tiny", "batch_size": 2}),
                              frequencies=[1, 3], repeats=2, window=3, fb_reps=1, shampoo=True, log=None)
    assert [r["f"] for r in d["summary"]] == [1, 3] and len(d["soap_times"]["3"]) == 2
    assert len(d["shampoo_times"]["1"]) == len(d["adamw_times"]) == len(d["forward_backward_times"]) == 2
    assert d["params"]["n_matrices"] > 0 and d["adamw_step_s"] > 0 and d["forward_backward_s"] > 0
    with pytest.raises(ValueError, match="frequencies is empty"):
        overhead.timing_study("cpu", frequencies=[])


def test_per_round_overhead_and_fits_recover_known_rounds():
    """Round r: overhead(f) = (4 + r) + 30/f % of an AdamW training step; each round's fit recovers it."""
    fs, adam, fb = (1, 10, 100), [1e-3, 2e-3], [9e-3, 8e-3]
    soap = {str(f): [a + (4 + r + 30 / f) / 100 * (b + a) for r, (a, b) in enumerate(zip(adam, fb))] for f in fs}
    per = overhead.per_round({"soap_times": soap, "adamw_times": adam, "forward_backward_times": fb})
    assert per["pct"][10] == pytest.approx([7.0, 8.0])
    assert per["ratio"][1] == pytest.approx([soap["1"][0] / 1e-3, soap["1"][1] / 2e-3])
    fits = overhead.round_fits(per["pct"])
    assert [f["floor_pct"] for f in fits] == pytest.approx([4.0, 5.0])
    assert [f["per_refresh_pct"] for f in fits] == pytest.approx([30.0, 30.0])
    assert overhead.per_round({"soap_times": soap, "adamw_times": adam[:1], "forward_backward_times": fb}) is None
    assert overhead.round_fits({10: [1.0]}) == []
