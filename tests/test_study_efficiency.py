"""soap_lab.studies.efficiency (paper Figs. 1-3): the power-law fit and its solve on known curves, whether each
solve lies inside SOAP's measured budgets, the per-seed claims on frames with known verdicts, the wall-clock claims
with a known timing study, the grid against the committed records, and the figures (from synthetic pools and from
a snapshot of the committed records; the same bytes when drawn twice or when the fit moves in its last digits)."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as t_dist
from study_pools import snapshot, synthetic_pool, synthetic_scale

from soap_lab.figures import seeds as S
from soap_lab.records import store
from soap_lab.studies import efficiency as E
from soap_lab.studies import get_scale, registry, report, tuned_lr

F, STEPS = 10, 1000
T_975_2 = 4.302652729749464  # Student t quantile 0.975 with 2 degrees of freedom (tables)
N = np.array([500, 625, 750, 875, 1000.0])


# ============================================================================================= the fit
def test_fit_recovers_a_known_power_law_and_solves_for_steps():
    a, b, beta = 2.0, 300.0, 0.8
    fit = E.fit_power_law(N, a + b * N ** (-beta))
    assert abs(fit.a - a) < 1e-4 and abs(fit.beta - beta) < 1e-3
    assert abs(fit.steps_to_reach(a + b * 800.0 ** (-beta)) - 800.0) < 0.5
    assert math.isinf(fit.steps_to_reach(a - 0.1))


@pytest.mark.parametrize("n_star, inside", [(600.0, True), (1000.0, True), (400.0, False), (1200.0, False)])
def test_savings_say_whether_the_solve_lies_inside_the_measured_budgets(n_star, inside):
    law = lambda n: 2.0 + 300.0 * n ** (-0.8)  # noqa: E731
    s = E.savings(N, law(N), law(n_star), full_steps=1000)
    assert s.steps_saved == pytest.approx(1 - n_star / 1000, abs=1e-4) and s.min_steps == 500.0
    assert s.inside is inside
    assert s.steps_needed == float(f"{s.steps_needed:.6g}")  # N* to 6 significant digits


def test_a_target_below_the_asymptote_is_never_reached_and_outside():
    s = E.savings(N, 2.0 + 300.0 * N ** (-0.8), 1.5, full_steps=1000)
    assert math.isinf(s.steps_needed) and s.inside is False


def test_bad_inputs():
    with pytest.raises(ValueError, match="3"):
        E.fit_power_law([1, 2], [3.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        E.fit_power_law([1, 2, 3], [3.0, float("nan"), 2.0])


# ============================================================================================ the claims
def _law(n, s):
    return 1.0 + 2.0 * (n / 100.0) ** -1.0 + 0.01 * s


def _frame(n_star=500.0, budgets=(0.5, 0.625, 0.75, 0.875, 1.0), shampoo_n_star=None):
    """Seeds 0-2. SOAP's loss at N steps is _law(N, seed): it reaches AdamW's full-budget loss _law(n_star, seed) at
    exactly n_star steps (Shampoo's: at shampoo_n_star; default its loss is AdamW's + 0.001·seed)."""
    rows = []
    for s in range(3):
        rows.append(("AdamW", None, s, 1.0, STEPS, _law(n_star, s)))
        rows.append(("Shampoo", F, s, 1.0, STEPS, _law(shampoo_n_star, s) if shampoo_n_star else _law(n_star, s) + 0.001 * s))
        rows += [("SOAP", F, s, b, int(b * STEPS), _law(b * STEPS, s)) for b in budgets]
    return pd.DataFrame([dict(run_id=f"r{i}", label=lb, f=f, seed=s, batch_size=16, budget_fraction=b, steps_total=n,
                              final_val_loss=v) for i, (lb, f, s, b, n, v) in enumerate(rows)])


def _by(rows, word):
    return next(r for r in rows if word in r["claim"])


def test_efficiency_recovers_the_known_saving_per_seed():
    rows = E.efficiency_claims(_frame(n_star=600.0), F, 16)
    adamw = _by(rows, "AdamW")
    assert adamw["values"] == pytest.approx([0.4] * 3, abs=1e-3) and adamw["seeds"] == [0, 1, 2]
    assert adamw["unreached"] == [] and adamw["outside"] == [] and adamw["note"] == ""
    assert adamw["headline"] is True and _by(rows, "Shampoo")["headline"] is False
    assert adamw["where"] == "steps vs AdamW, batch 16, f = 10"
    assert _by(E.efficiency_claims(_frame(n_star=400.0), F, 16), "AdamW")["verdict"] == "reproduced"  # 60% > 40%
    slow = _by(E.efficiency_claims(_frame(n_star=800.0), F, 16), "AdamW")
    assert slow["values"] == pytest.approx([0.2] * 3, abs=1e-3) and slow["verdict"] == "contradicted"


def test_a_solve_below_the_smallest_budget_is_flagged_as_extrapolated():
    """N* = 400 < 500, the smallest budget: every seed extrapolated; with budgets down to 250 none is."""
    rows = E.efficiency_claims(_frame(n_star=400.0), F, 16)
    r = _by(rows, "AdamW")
    assert r["outside"] == [0, 1, 2] and r["note"] == "3 of 3 seeds extrapolated"
    assert r["values"] == pytest.approx([0.6] * 3, abs=1e-3)  # the same number, only flagged
    low = _by(E.efficiency_claims(_frame(n_star=400.0, budgets=(0.25, 0.375, 0.5, 0.75, 1.0)), F, 16), "AdamW")
    assert low["outside"] == [] and low["note"] == "" and low["values"] == pytest.approx([0.6] * 3, abs=1e-3)
    text = report.terminal([{"study": "efficiency", **r}]) + report.markdown_rows([r])
    assert text.count("steps vs AdamW, batch 16, f = 10 (3 of 3 seeds extrapolated)") == 2


def test_a_fit_that_never_reaches_counts_as_no_saving():
    df = _frame(n_star=500.0)
    df.loc[df["label"] == "AdamW", "final_val_loss"] = 0.5  # below SOAP's asymptote 1 + 0.01·seed
    r = _by(E.efficiency_claims(df, F, 16), "AdamW")
    assert r["values"] == [-1.0] * 3 and r["unreached"] == [0, 1, 2] and r["outside"] == [0, 1, 2]


def _timing(ratios_adamw, ratios_shampoo, fb=0.1, adam=0.01):
    """A stored timing study whose round r gives SOAP/AdamW = ratios_adamw[r] and SOAP/Shampoo = ratios_shampoo[r]."""
    soap = [ra * (fb + adam) - fb for ra in ratios_adamw]
    shampoo = [(fb + t) / rs - fb for t, rs in zip(soap, ratios_shampoo)]
    n = len(soap)
    return {"forward_backward_times": [fb] * n, "adamw_times": [adam] * n, "soap_times": {str(F): soap},
            "shampoo_times": {str(F): shampoo}}


def test_time_ratios_pair_the_rounds():
    t = _timing([1.2, 1.3, 1.25], [0.9, 0.95, 0.92])
    assert E.time_ratios(t, F) == pytest.approx([1.2, 1.3, 1.25])
    assert E.time_ratios(t, F, "Shampoo") == pytest.approx([0.9, 0.95, 0.92])
    assert E.time_ratios(t, 3) == [] and E.time_ratios({}, F) == [] and E.time_ratios(None, F) == []
    assert E.time_ratios({**t, "adamw_times": [0.01]}, F) == []  # rounds that do not pair


def test_wallclock_combines_steps_and_time_with_a_bonferroni_interval():
    """Steps saved 0.5 on every seed; time ratio 1.2 ± a little: wall-clock saved 1 − 0.5·1.2 = 0.4 per seed, with
    an interval from the ratio's spread alone (the seeds agree)."""
    ratios = [1.18, 1.2, 1.22, 1.2]
    rows = E.wallclock_claims(_frame(n_star=500.0), F, _timing(ratios, [0.8] * 4), 16)
    adamw, shampoo = _by(rows, "than AdamW"), _by(rows, "than Shampoo")
    assert adamw["values"] == pytest.approx([0.4] * 3, abs=1e-3) and adamw["time_ratio"] == pytest.approx(1.2)
    half = t_dist.ppf(0.9875, 3) * np.std(ratios, ddof=1) / 2  # the ratio's 97.5% t-interval over 4 rounds
    assert adamw["low"] == pytest.approx(1 - 0.5 * (1.2 + half), abs=1e-3)
    assert adamw["high"] == pytest.approx(1 - 0.5 * (1.2 - half), abs=1e-3)
    assert adamw["verdict"] == "reproduced" and adamw["rounds"] == 4  # [0.375, 0.425] sits above 0.35
    assert adamw["where"] == "wall-clock vs AdamW, batch 16, f = 10"
    # Shampoo's loss is AdamW's + 0.001·seed, which SOAP's law meets at N = 200 / (0.4 + 0.001·seed) steps
    assert shampoo["values"] == pytest.approx([1 - 0.8 * 0.2 / (0.4 + 0.001 * s) for s in range(3)], abs=1e-3)
    slow = E.wallclock_claims(_frame(n_star=500.0), F, _timing([1.4, 1.5, 1.45, 1.45], [0.8] * 4), 16)
    assert _by(slow, "than AdamW")["verdict"] == "contradicted"  # 1 − 0.5·1.45 ≈ 0.28 < 0.35
    assert E.wallclock_claims(_frame(), F, None, 16) == []
    assert _by(E.wallclock_claims(_frame(n_star=400.0), F, _timing(ratios, [0.8] * 4), 16), "AdamW")["note"] == \
        "3 of 3 seeds extrapolated"


def test_the_timing_study_is_read_from_its_file():
    t = E.timing(get_scale("cpu_freq"))
    assert t == store.read_record(store.REPO_ROOT / "data" / "overhead" / "overhead_cpu_freq.json")
    assert E.timing(get_scale("cpu_freq", steps=3)) is None  # an overridden scale: out/overhead, not stored


# =============================================================================================== the grid
def _committed(scale_name):
    """The configs of the committed records of ``scale_name`` (data/runs/paper_<scale>)."""
    sc = get_scale(scale_name)
    return sc, [(p, json.loads(p.read_text())["config"]) for p in sorted((store.DEFAULT_RUNS_ROOT / sc.experiment).glob("*.json"))]


@pytest.mark.parametrize("scale_name", ["cpu", "cpu_freq"])
def test_the_grid_holds_every_committed_record_of_the_study(scale_name):
    """Every committed record of the comparison (AdamW, Shampoo and SOAP at their tuned lr, the reference batch and
    steps, f = base_frequency, no other hyperparameter, a seed of the scale) is a run of the grid: same config hash."""
    sc, recs = _committed(scale_name)
    keys = {store.run_key(store.run_id(c)) for c in registry.get("efficiency").configs(sc)}
    lr = {o: tuned_lr(o, sc) for o in ("adamw", "shampoo", "soap")}
    mine = [p for p, c in recs if c["optimizer"] in lr and c["lr"] == lr[c["optimizer"]] and
            c["batch_size"] == sc.batch_size and c["steps"] == sc.steps and c["seed"] in sc.seeds and
            c.get("preset", sc.preset) == sc.preset and
            c.get("precondition_frequency") in (None, sc.base_frequency) and
            {k: v for k, v in (c.get("hparams") or {}).items() if k not in ("exponent", "eps", "grafting")} == {}]
    assert len(mine) >= {"cpu": 7, "cpu_freq": 21}[scale_name]
    assert [p.name for p in mine if store.run_key(p.stem) not in keys] == []


def test_the_grid_at_cpu_freq_reaches_down_to_a_quarter_of_the_budget():
    sc = get_scale("cpu_freq")
    cfgs = registry.get("efficiency").configs(sc)
    soap = [c for c in cfgs if c.optimizer == "soap"]
    assert sorted({c.budget_fraction for c in soap}) == [0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    assert len(cfgs) == 27 and {c.seed for c in cfgs} == {0, 1, 2}
    assert {c.budget_fraction for c in registry.get("efficiency").configs(get_scale("cpu"))} == \
        {0.5, 0.625, 0.75, 0.875, 1.0}


# ============================================================================================ the figures
def test_mean_curve_is_the_mean_over_seeds_at_common_steps():
    cur = pd.DataFrame({"run_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 2, "step": [10, 20, 30, 10, 20, 30, 10, 20],
                        "time": [1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 2.0, 3.0],
                        "val_loss": [3.0, 2.0, 1.0, 4.0, 3.0, 2.0, 5.0, 4.0]})
    mc = S.mean_curve(cur, "time")
    assert list(mc["step"]) == [10.0, 20.0]  # step 30: seed c did not evaluate it
    assert list(mc["x"]) == [2.0, 3.0] and list(mc["mean"]) == [4.0, 3.0] and list(mc["n"]) == [3, 3]
    assert mc["half"].tolist() == pytest.approx([T_975_2 / math.sqrt(3)] * 2)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    return synthetic_pool(tmp_path_factory.mktemp("seeded"), synthetic_scale((0, 1, 2)), "efficiency")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return synthetic_pool(tmp_path_factory.mktemp("single"), synthetic_scale((0,)), "efficiency")


def test_per_seed_savings_on_known_curves(seeded):
    from conftest import SEED_FACTOR, SEED_SHIFT

    solves = E.solve_seeds(seeded.runs, F, "AdamW")
    assert sorted(solves) == [0, 1, 2]
    for seed, s in solves.items():  # conftest: losses a + 3·N^-0.5 (batch 8), a moved by SEED_SHIFT × a factor
        target = 2.0 + SEED_SHIFT[seed] * SEED_FACTOR["adamw"] + 3.0 * 40 ** -0.5  # the same seed's AdamW loss
        assert s.fit.a == pytest.approx(1.8 + SEED_SHIFT[seed], abs=2e-3) and s.fit.beta == pytest.approx(0.5, abs=2e-2)
        assert s.steps_saved == pytest.approx(1 - (3.0 / (target - 1.8 - SEED_SHIFT[seed])) ** 2 / 40, abs=1e-2)
        assert s.min_steps == 20 and s.full_steps == 40


def test_pool_step_times_per_optimizer(seeded):
    # synthetic step times: 0.03 s for every SOAP/Shampoo run, 0.01 s for AdamW
    assert E.pool_step_times(seeded, 8, F) == pytest.approx({"AdamW": 0.01, "SOAP": 0.03, "Shampoo": 0.03})


def _timing_with_rounds():
    return _timing([2.8, 3.0, 3.2], [0.9, 1.0, 1.1])


def test_figures_draw_one_seed_next_to_three_with_a_timing_study(seeded, single, tmp_path, monkeypatch):
    monkeypatch.setattr(E, "timing", lambda sc: _timing_with_rounds() if sc == seeded.scale else None)
    data = {"cpu": single, "cpu_freq": seeded, "gpu": None}  # gpu: named in the footer
    paths = E.draw_comparison(data, tmp_path) + E.draw_efficiency(data, tmp_path)
    assert [p.name for p in paths] == ["comparison.png", "comparison.pdf", "efficiency.png", "efficiency.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_efficiency_is_the_same_bytes_when_the_fit_moves_in_its_last_digits(seeded, tmp_path, monkeypatch):
    a = E.draw_efficiency({"cpu_freq": seeded}, tmp_path / "a")
    fit = E.fit_power_law

    def wobbly(steps, losses):  # another CPU's BLAS: the same fit to ~1e-8
        f = fit(steps, losses)
        return E.PowerLawFit(a=f.a * (1 + 3e-8), b=f.b * (1 - 2e-8), beta=f.beta * (1 + 1e-8))

    monkeypatch.setattr(E, "fit_power_law", wobbly)
    b = E.draw_efficiency({"cpu_freq": seeded}, tmp_path / "b")
    assert [p.read_bytes() for p in a] == [q.read_bytes() for q in b]


def test_no_scale_with_results_is_an_error(tmp_path):
    with pytest.raises(store.MissingResults, match="study run"):
        E.draw_efficiency({"cpu": None}, tmp_path)


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """The study's data from a snapshot of the committed records at cpu_freq and cpu."""
    root = tmp_path_factory.mktemp("committed")
    return {k: registry.get("efficiency").data(snapshot(root, k, "efficiency")[0], root) for k in ("cpu_freq", "cpu")}


def test_figures_from_the_committed_records_are_the_same_bytes_twice(committed, tmp_path):
    assert len(committed["cpu_freq"].runs) >= 21 and len(committed["cpu"].runs) == 7
    for k in ("a", "b"):
        E.draw_comparison(committed, tmp_path / k)
        E.draw_efficiency(committed, tmp_path / k)
    for name in ("comparison.png", "comparison.pdf", "efficiency.png", "efficiency.pdf"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_the_claims_of_the_committed_records(committed):
    """On the old protocol's budgets (0.5 to 1), the numbers of ``python -m soap_lab.freq_study --report`` before the
    port (commit 34f1877), now flagged: N* of seeds 0 and 1 lies below the smallest budget; the wall-clock rows use
    the timing study as re-measured with Muon (2026-12-06, commit fe8e9e6)."""
    sd = committed["cpu_freq"]
    ref = sd.runs[(sd.runs["batch_size"] == 16) & (sd.runs["budget_fraction"] >= 0.5)]
    rows = {r["claim"]: r for r in E.efficiency_claims(ref, F, 16) + E.wallclock_claims(ref, F, E.timing(sd.scale), 16)}
    steps = rows["SOAP needs ≥ 40% fewer steps than AdamW (saved > 0.40)"]
    assert [round(v, 4) for v in steps["values"]] == [0.5578, 0.5897, 0.4917] and steps["verdict"] == "reproduced"
    assert (round(steps["low"], 4), round(steps["high"], 4)) == (0.4223, 0.6705)
    assert steps["outside"] == [0, 1] and steps["note"] == "2 of 3 seeds extrapolated"
    wall = rows["SOAP needs ≥ 35% less wall-clock than AdamW (saved > 0.35)"]
    assert (round(wall["mean"], 4), round(wall["low"], 4), round(wall["high"], 4)) == (0.4228, 0.1844, 0.6552)
    assert round(rows["SOAP needs fewer steps than Shampoo (saved > 0)"]["mean"], 4) == -0.0435
    assert round(rows["SOAP needs less wall-clock than Shampoo (saved > 0)"]["high"], 4) == 0.3432
