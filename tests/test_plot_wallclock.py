"""soap_lab.plot_wallclock (loss vs steps and wall-clock), soap_lab.plot_efficiency (the efficiency fit) and
soap_lab.plot_overhead (the timing study's overhead), from synthetic records with one seed and with three, and a
synthetic timing study with known per-round times; the efficiency text says when the fit never reaches a baseline."""
import math

import pandas as pd
import pytest

pytest.importorskip("seaborn")
from conftest import SEED_FACTOR, SEED_SHIFT  # noqa: E402

from soap_lab import analysis, efficiency, overhead, plot_efficiency, plot_overhead, plot_wallclock, plotting, seeded_claims  # noqa: E402

T_975_2 = 4.302652729749464  # Student t quantile 0.975 with 2 degrees of freedom (tables)


def _timing_study():
    return {"params": {"preset": "tiny", "n_matrices": 2, "n_params": 100, "batch_size": 8, "threads": 1, "repeats": 1,
                       "window": 10},
            "adamw_step_s": 1e-3, "forward_backward_s": 1e-2,
            "summary": [{"f": f, "overhead_pct": 5 + 50 / f, "opt_ratio": 2 + 10 / f, "soap_step_s": 1e-3 + 1e-2 / f}
                        for f in (1, 10, 100)],
            "fit": overhead.fit_floor([1, 10, 100], [5 + 50 / f for f in (1, 10, 100)])}


#: per round r: AdamW step, forward+backward, and the floor c_r / refresh term b_r (in % of a step) of SOAP's overhead
ROUNDS = [(1e-3, 9e-3, 4.0, 40.0), (2e-3, 8e-3, 5.0, 50.0), (1e-3, 1.1e-2, 6.0, 45.0)]
FS = (1, 10, 100)


def _timing_study_with_rounds():
    d = _timing_study()
    d["params"]["repeats"] = len(ROUNDS)
    d["adamw_times"] = [a for a, *_ in ROUNDS]
    d["forward_backward_times"] = [fb for _, fb, *_ in ROUNDS]
    d["soap_times"] = {str(f): [a + (c + b / f) / 100 * (fb + a) for a, fb, c, b in ROUNDS] for f in FS}
    return d


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


# ------------------------------------------------------------------------------------------ seeds
def test_mean_curve_is_the_mean_over_seeds_at_common_steps():
    cur = pd.DataFrame({"run_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 2, "step": [10, 20, 30, 10, 20, 30, 10, 20],
                        "time": [1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 2.0, 3.0],
                        "val_loss": [3.0, 2.0, 1.0, 4.0, 3.0, 2.0, 5.0, 4.0]})
    mc = plot_wallclock.mean_curve(cur, "time")
    assert list(mc["step"]) == [10.0, 20.0]  # step 30: seed c did not evaluate it
    assert list(mc["x"]) == [2.0, 3.0] and list(mc["mean"]) == [4.0, 3.0] and list(mc["n"]) == [3, 3]
    assert mc["half"].tolist() == pytest.approx([T_975_2 / math.sqrt(3)] * 2)


def test_efficiency_per_seed_savings_on_known_curves(synthetic_seeded_pool, synthetic_seeded_scale):
    sd = analysis.study_data("comparison", synthetic_seeded_scale, synthetic_seeded_pool)
    fits = plot_efficiency.seed_fits(sd.runs, synthetic_seeded_scale.base_frequency)
    saved = seeded_claims.savings(sd.runs, synthetic_seeded_scale.base_frequency, "AdamW")
    assert sorted(fits) == sorted(saved) == [0, 1, 2]
    for seed in (0, 1, 2):
        soap_shift = SEED_SHIFT[seed]  # conftest: every loss of a seed moved by SEED_SHIFT × the optimizer's factor
        target = 2.0 + SEED_SHIFT[seed] * SEED_FACTOR["adamw"] + 3.0 * 40 ** -0.5  # the same seed's AdamW final loss
        assert fits[seed].a == pytest.approx(1.8 + soap_shift, abs=2e-3) and fits[seed].beta == pytest.approx(0.5, abs=2e-2)
        n_star = (3.0 / (target - 1.8 - soap_shift)) ** 2
        assert saved[seed] == pytest.approx(1 - n_star / 40, abs=1e-2)


def test_seeded_wallclock_figures_draw_and_are_deterministic(synthetic_pool, synthetic_scale, synthetic_seeded_pool,
                                                             synthetic_seeded_scale, tmp_path):
    data = {"cpu": analysis.study_data("comparison", synthetic_scale, synthetic_pool),
            "cpu_freq": analysis.study_data("comparison", synthetic_seeded_scale, synthetic_seeded_pool), "gpu": None}
    ov = {"cpu": _timing_study(), "cpu_freq": _timing_study_with_rounds()}
    for k in ("a", "b"):
        plot_wallclock.plot_comparison(data, tmp_path / k)
        plot_efficiency.plot_efficiency(data, tmp_path / k, overhead=ov)
    for name in ("comparison.png", "comparison.pdf", "efficiency.png", "efficiency.pdf"):
        a, b = (tmp_path / k / name for k in ("a", "b"))
        assert a.stat().st_size > 1000 and a.read_bytes() == b.read_bytes()


def test_seeded_efficiency_is_the_same_bytes_when_the_fits_move_in_their_last_digits(
        synthetic_seeded_pool, synthetic_seeded_scale, tmp_path, monkeypatch):
    data = {"cpu_freq": analysis.study_data("comparison", synthetic_seeded_scale, synthetic_seeded_pool)}
    a = plot_efficiency.plot_efficiency(data, tmp_path / "a")
    fit = efficiency.fit_power_law

    def wobbly(steps, losses):  # another CPU's BLAS: the same fit to ~1e-8
        f = fit(steps, losses)
        return efficiency.PowerLawFit(a=f.a * (1 + 3e-8), b=f.b * (1 - 2e-8), beta=f.beta * (1 + 1e-8))

    monkeypatch.setattr(efficiency, "fit_power_law", wobbly)
    b = plot_efficiency.plot_efficiency(data, tmp_path / "b")
    assert [p.read_bytes() for p in a] == [q.read_bytes() for q in b]


def test_overhead_per_round_known_numbers():
    d = _timing_study_with_rounds()
    r = plot_overhead.rounds(d)
    for f in FS:
        assert r["pct"][f] == pytest.approx([c + b / f for _, _, c, b in ROUNDS])
        assert r["ratio"][f] == pytest.approx([(a + (c + b / f) / 100 * (fb + a)) / a for a, fb, c, b in ROUNDS])
    fits = plot_overhead.round_fits(r["pct"])
    assert fits["floor_pct"].values == pytest.approx([4.0, 5.0, 6.0])  # each round's c recovered exactly
    assert fits["floor_pct"].mean == pytest.approx(5.0)
    assert fits["floor_pct"].half_width == pytest.approx(T_975_2 * 1.0 / math.sqrt(3))
    assert fits["per_refresh_pct"].mean == pytest.approx(45.0) and fits["per_refresh_pct"].n == 3
    # the same numbers as the seeded claims' Fig. 7 left rows
    rows = {row["claim"].split(" (")[0]: row for row in seeded_claims.overhead_claims(d)}
    assert rows["SOAP's overhead has a nonzero floor"]["mean"] == pytest.approx(fits["floor_pct"].mean)
    assert plot_overhead.rounds(_timing_study()) is None  # no per-round times: drawn from the summary


def test_overhead_per_round_with_seeded_runs_and_a_missing_timing_study(synthetic_seeded_pool, synthetic_seeded_scale,
                                                                        tmp_path):
    runs = {"cpu": analysis.study_data("frequency", synthetic_seeded_scale, synthetic_seeded_pool)}
    paths = plot_overhead.plot_overhead({"cpu": _timing_study_with_rounds(), "cpu_freq": None}, tmp_path, runs=runs)
    assert paths[0].stat().st_size > 1000
    assert plotting.missing_hint("cpu_freq", timing=True) == "python -m soap_lab.freq_study --timing"
