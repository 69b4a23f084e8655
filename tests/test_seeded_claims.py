"""soap_lab.seeded_claims: the paper's other claims, paired by seed, on a synthetic frame with known answers."""
import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as t_dist

from soap_lab import ablations, seeded_claims
from soap_lab.records import store

F = 10
STEPS = 1000


def _frame(eigh_shift=0.005, factorized_shift=0.001, one_sided_vs_shampoo=0.05, n_star=500.0):
    """Seeds 0-2. SOAP's loss at N steps follows 1 + 2·(N/100)^-1 (+ a seed offset), so it reaches the target
    1 + 2·(n_star/100)^-1 at exactly n_star steps; AdamW's and Shampoo's full-budget losses are that target."""
    rows = []
    law = lambda n, s: 1.0 + 2.0 * (n / 100.0) ** -1.0 + 0.01 * s  # noqa: E731
    for s in range(3):
        target = law(n_star, s)
        rows.append(("AdamW", None, s, 1.0, STEPS, target))
        rows.append(("Shampoo", F, s, 1.0, STEPS, target + 0.001 * s))
        for b in (0.5, 0.625, 0.75, 0.875, 1.0):
            rows.append(("SOAP", F, s, b, int(b * STEPS), law(b * STEPS, s)))
        for f in (1, 30):
            rows.append(("SOAP", f, s, 1.0, STEPS, 1.2 + 0.01 * s))
            rows.append(("SOAP (eigh)", f, s, 1.0, STEPS, 1.2 + 0.01 * s - eigh_shift - 0.001 * s))
        soap = law(STEPS, s)
        rows.append(("SOAP factorized", F, s, 1.0, STEPS, soap + factorized_shift))
        rows.append(("SOAP one-sided", F, s, 1.0, STEPS, target + 0.001 * s + one_sided_vs_shampoo))
        rows.append(("SOAP factorized + one-sided", F, s, 1.0, STEPS, target - 0.1))
    return pd.DataFrame([dict(run_id=f"r{i}", label=l, f=f, seed=s, batch_size=16, budget_fraction=b, steps_total=n,
                              final_val_loss=v) for i, (l, f, s, b, n, v) in enumerate(rows)])


def _by_claim(rows, word):
    return [r for r in rows if word in r["claim"]]


def test_qr_vs_eigh_is_paired_per_f():
    rows = seeded_claims.qr_vs_eigh(_frame())
    assert [r["f"] for r in rows] == [1, 30]
    for r in rows:  # SOAP − eigh = 0.005 + 0.001·seed
        assert r["values"] == pytest.approx([0.005, 0.006, 0.007]) and r["n"] == 3
        assert r["verdict"] == "reproduced"  # the interval sits inside ±0.02
    far = seeded_claims.qr_vs_eigh(_frame(eigh_shift=0.1))
    assert all(r["verdict"] == "contradicted" for r in far)


def test_variants_claims():
    rows = seeded_claims.variants(_frame(), F)
    fac, one, both = (_by_claim(rows, w)[0] for w in ("factorized SOAP", "one-sided SOAP", "beats AdamW"))
    assert fac["values"] == pytest.approx([0.001] * 3) and fac["verdict"] == "reproduced"
    assert one["values"] == pytest.approx([0.05] * 3) and one["verdict"] == "contradicted"
    assert both["values"] == pytest.approx([-0.1] * 3) and both["verdict"] == "reproduced"


def test_efficiency_recovers_the_known_saving_per_seed():
    rows = seeded_claims.efficiency_claims(_frame(n_star=500.0), F)
    adamw = _by_claim(rows, "AdamW")[0]
    assert adamw["values"] == pytest.approx([0.5, 0.5, 0.5], abs=1e-3)  # N* = 500 of 1000 on every seed
    assert adamw["verdict"] == "reproduced" and adamw["unreached"] == []
    slow = seeded_claims.efficiency_claims(_frame(n_star=800.0), F)
    assert _by_claim(slow, "AdamW")[0]["values"] == pytest.approx([0.2] * 3, abs=1e-3)
    assert _by_claim(slow, "AdamW")[0]["verdict"] == "contradicted"  # 20% saved, the claim says ≥ 40%


def test_batch_claims_pair_soap_and_adamw_at_each_batch():
    """SOAP's f scales with 1/batch (10·16/b); its lead over AdamW grows from 0.05 (batch 8) to 0.15 (batch 128)."""
    sc = ablations.get_scale("cpu_freq")
    rows = []
    for b, lead in ((8, 0.05), (32, 0.1), (128, 0.15)):
        f = ablations.batch_frequency(sc, b)
        for s in range(3):
            rows.append(dict(run_id=f"a{b}{s}", label="AdamW", f=None, seed=s, batch_size=b, budget_fraction=1.0,
                             steps_total=STEPS, final_val_loss=2.0 + 0.01 * s))
            rows.append(dict(run_id=f"s{b}{s}", label="SOAP", f=f, seed=s, batch_size=b, budget_fraction=1.0,
                             steps_total=STEPS, final_val_loss=2.0 + 0.01 * s - lead - 0.001 * s))
    out = seeded_claims.batch_claims(pd.DataFrame(rows), sc)
    assert [r["baseline"] for r in out] == ["batch 8", "batch 32", "batch 128", "batch 128 vs 8"]
    assert all(r["verdict"] == "reproduced" for r in out)
    assert out[-1]["values"] == pytest.approx([-0.1] * 3)


def _law(n, s):
    return 1.0 + 2.0 * (n / 100.0) ** -1.0 + 0.01 * s


def test_batch_claims_in_the_papers_form_recover_the_known_step_savings():
    """SOAP reaches AdamW's loss at n_star(b) = 800, 600, 400 steps of 1000 (saved 0.2, 0.4, 0.6) at batches 8, 32,
    128, and Shampoo's at batch 8 at 500 steps: the rows recover each saving per seed and its growth (+0.4)."""
    sc = ablations.get_scale("cpu_freq")
    rows = []
    for b, n_star in ((8, 800.0), (32, 600.0), (128, 400.0)):
        f = ablations.batch_frequency(sc, b)
        for s in range(3):
            rows.append(dict(label="AdamW", f=None, seed=s, batch_size=b, budget_fraction=1.0, steps_total=STEPS,
                             final_val_loss=_law(n_star, s)))
            if b == 8:
                rows.append(dict(label="Shampoo", f=f, seed=s, batch_size=b, budget_fraction=1.0, steps_total=STEPS,
                                 final_val_loss=_law(500.0, s)))
            for frac in sc.budget_fractions:
                rows.append(dict(label="SOAP", f=f, seed=s, batch_size=b, budget_fraction=frac,
                                 steps_total=int(frac * STEPS), final_val_loss=_law(frac * STEPS, s)))
    df = pd.DataFrame([dict(run_id=f"r{i}", **r) for i, r in enumerate(rows)])
    out = {r["baseline"]: r for r in seeded_claims.batch_claims(df, sc)}
    for b, saved in ((8, 0.2), (32, 0.4), (128, 0.6)):
        assert out[f"steps, batch {b}"]["values"] == pytest.approx([saved] * 3, abs=1e-3)
        assert out[f"steps, batch {b}"]["verdict"] == "reproduced"
    grow = out["steps, batch 128 vs 8"]
    assert grow["values"] == pytest.approx([0.4] * 3, abs=1e-3) and grow["verdict"] == "reproduced"
    assert out["steps vs Shampoo, batch 8"]["values"] == pytest.approx([0.5] * 3, abs=1e-3)
    # without the budget fractions only the final-loss rows remain
    full = seeded_claims.batch_claims(df[df["budget_fraction"] == 1.0], sc)
    assert all(not r["baseline"].startswith("steps") for r in full)


def _timing(ratios_adamw, ratios_shampoo, fb=0.1, adam=0.01):
    """A stored timing study whose round r gives SOAP/AdamW = ratios_adamw[r] and SOAP/Shampoo = ratios_shampoo[r]."""
    soap = [ra * (fb + adam) - fb for ra in ratios_adamw]
    shampoo = [(fb + t) / rs - fb for t, rs in zip(soap, ratios_shampoo)]
    n = len(soap)
    return {"forward_backward_times": [fb] * n, "adamw_times": [adam] * n, "soap_times": {str(F): soap},
            "shampoo_times": {str(F): shampoo}}


def test_time_ratios_pair_the_rounds():
    t = _timing([1.2, 1.3, 1.25], [0.9, 0.95, 0.92])
    assert seeded_claims.time_ratios(t, F) == pytest.approx([1.2, 1.3, 1.25])
    assert seeded_claims.time_ratios(t, F, "Shampoo") == pytest.approx([0.9, 0.95, 0.92])
    assert seeded_claims.time_ratios(t, 3) == [] and seeded_claims.time_ratios({}, F) == []
    assert seeded_claims.time_ratios({**t, "adamw_times": [0.01]}, F) == []  # rounds that do not pair


def test_wallclock_combines_steps_and_time_with_a_bonferroni_interval():
    """Steps saved 0.5 on every seed (n_star = 500 of 1000); time ratio 1.2 ± a little: wall-clock saved
    1 − 0.5·1.2 = 0.4 per seed, with an interval from the ratio's spread alone (the seeds agree)."""
    ratios = [1.18, 1.2, 1.22, 1.2]
    rows = seeded_claims.wallclock_claims(_frame(n_star=500.0), F, _timing(ratios, [0.8] * 4))
    adamw, shampoo = (_by_claim(rows, w)[0] for w in ("than AdamW", "than Shampoo"))
    assert adamw["values"] == pytest.approx([0.4] * 3, abs=1e-3) and adamw["time_ratio"] == pytest.approx(1.2)
    half = t_dist.ppf(0.9875, 3) * np.std(ratios, ddof=1) / 2  # the ratio's 97.5% t-interval over 4 rounds
    assert adamw["low"] == pytest.approx(1 - 0.5 * (1.2 + half), abs=1e-3)
    assert adamw["high"] == pytest.approx(1 - 0.5 * (1.2 - half), abs=1e-3)
    assert adamw["verdict"] == "reproduced"  # [0.375, 0.425] sits above 0.35
    # Shampoo's loss is AdamW's + 0.001·seed, which SOAP's law meets at N = 200 / (0.4 + 0.001·seed) steps
    assert shampoo["values"] == pytest.approx([1 - 0.8 * 0.2 / (0.4 + 0.001 * s) for s in range(3)], abs=1e-3)
    slow = seeded_claims.wallclock_claims(_frame(n_star=500.0), F, _timing([1.4, 1.5, 1.45, 1.45], [0.8] * 4))
    assert _by_claim(slow, "than AdamW")[0]["verdict"] == "contradicted"  # 1 − 0.5·1.45 ≈ 0.28 < 0.35
    assert seeded_claims.wallclock_claims(_frame(), F, None) == []


def test_overhead_fit_per_round_recovers_floor_and_refresh_cost():
    """Round r: overhead(f) = (5 + r) + 40/f % of an AdamW step (fb 0.1 s, AdamW 0.01 s): c = 5, 6, 7, b = 40."""
    fs, fb, adam = (1, 3, 10, 30), 0.1, 0.01
    soap = {str(f): [adam + (5 + r + 40 / f) / 100 * (fb + adam) for r in range(3)] for f in fs}
    rows = seeded_claims.overhead_claims({"forward_backward_times": [fb] * 3, "adamw_times": [adam] * 3,
                                          "soap_times": soap})
    falls, floor = rows
    assert falls["values"] == pytest.approx([40] * 3) and falls["verdict"] == "reproduced"
    assert floor["values"] == pytest.approx([5, 6, 7]) and floor["rounds"] == 3
    assert seeded_claims.overhead_claims(None) == []


def test_markdown_shows_every_seed():
    text = seeded_claims.markdown(seeded_claims.qr_vs_eigh(_frame()))
    assert "+0.0050, +0.0060, +0.0070" in text and "| 3 | reproduced |" in text


def test_the_study_grid_holds_each_claims_runs():
    sc = ablations.get_scale("cpu_freq")
    cfgs = ablations.configs("seeded_others", sc)
    labels = {ablations.label(c) for c in cfgs}
    assert {"SOAP (eigh)", "SOAP factorized", "SOAP one-sided", "SOAP factorized + one-sided"} <= labels
    assert {c.budget_fraction for c in cfgs} == set(sc.budget_fractions)
    for b in sc.batch_sizes:  # the efficiency protocol at every batch size, f scaled with 1/batch
        soap = [c for c in cfgs if c.optimizer == "soap" and c.batch_size == b and not c.hparams.get("refresh")]
        assert {c.budget_fraction for c in soap} == set(sc.budget_fractions)
        assert {c.precondition_frequency for c in soap} == {ablations.batch_frequency(sc, b)}
    assert any(c.optimizer == "shampoo" and c.batch_size == min(sc.batch_sizes) for c in cfgs)
    assert {c.seed for c in cfgs} == set(sc.seeds)
    assert len({store.run_id(c) for c in cfgs}) == len(cfgs)  # shared runs appear once
