"""soap_lab.plot_wallclock: loss vs wall-clock, the efficiency fit and the timing study's overhead, from synthetic
records; the efficiency text says when the fit never reaches a baseline."""
import pytest

pytest.importorskip("seaborn")
from soap_lab import analysis, overhead, plot_wallclock  # noqa: E402


def _timing_study():
    return {"params": {"preset": "tiny", "n_matrices": 2, "n_params": 100, "batch_size": 8, "threads": 1, "repeats": 1,
                       "window": 10},
            "adamw_step_s": 1e-3, "forward_backward_s": 1e-2,
            "summary": [{"f": f, "overhead_pct": 5 + 50 / f, "opt_ratio": 2 + 10 / f, "soap_step_s": 1e-3 + 1e-2 / f}
                        for f in (1, 10, 100)],
            "fit": overhead.fit_floor([1, 10, 100], [5 + 50 / f for f in (1, 10, 100)])}


def test_comparison_and_efficiency(synthetic_pool, synthetic_scale, tmp_path):
    sd = analysis.study_data("comparison", synthetic_scale, synthetic_pool)
    assert plot_wallclock.plot_comparison({"cpu": sd}, tmp_path)[0].name == "comparison.png"
    paths = plot_wallclock.plot_efficiency({"cpu": sd, "gpu": None}, tmp_path, overhead={"cpu": _timing_study()})
    assert [p.name for p in paths] == ["efficiency.png", "efficiency.pdf"] and paths[0].stat().st_size > 1000


def test_overhead_with_the_runs_own_points(synthetic_pool, synthetic_scale, tmp_path):
    runs = {"cpu": analysis.study_data("frequency", synthetic_scale, synthetic_pool)}
    paths = plot_wallclock.plot_overhead({"cpu": _timing_study(), "gpu": None}, tmp_path, runs=runs)
    assert [p.name for p in paths] == ["overhead.png", "overhead.pdf"] and paths[0].stat().st_size > 1000


def test_efficiency_text_says_when_the_fit_never_reaches(never_reached):
    e = never_reached  # conftest.py: AdamW's final loss set below SOAP's asymptote
    assert "never reaches" in plot_wallclock._efficiency_text(e)
    assert "fit never reaches" in plot_wallclock._efficiency_text(e, short=True)
