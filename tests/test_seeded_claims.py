"""soap_lab.seeded_claims: the paper's other claims, paired by seed, on a synthetic frame with known answers."""
import pandas as pd
import pytest

from soap_lab import ablations, results, seeded_claims

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
        f = max(1, round(10 * 16 / b))
        for s in range(3):
            rows.append(dict(run_id=f"a{b}{s}", label="AdamW", f=None, seed=s, batch_size=b, budget_fraction=1.0,
                             steps_total=STEPS, final_val_loss=2.0 + 0.01 * s))
            rows.append(dict(run_id=f"s{b}{s}", label="SOAP", f=f, seed=s, batch_size=b, budget_fraction=1.0,
                             steps_total=STEPS, final_val_loss=2.0 + 0.01 * s - lead - 0.001 * s))
    out = seeded_claims.batch_claims(pd.DataFrame(rows), sc)
    assert [r["baseline"] for r in out] == ["batch 8", "batch 32", "batch 128", "batch 128 vs 8"]
    assert all(r["verdict"] == "reproduced" for r in out)
    assert out[-1]["values"] == pytest.approx([-0.1] * 3)


def test_markdown_shows_every_seed():
    text = seeded_claims.markdown(seeded_claims.qr_vs_eigh(_frame()))
    assert "+0.0050, +0.0060, +0.0070" in text and "| 3 | reproduced |" in text


def test_the_study_grid_holds_each_claims_runs():
    sc = ablations.get_scale("cpu_freq")
    cfgs = ablations.configs("seeded_others", sc)
    labels = {ablations.label(c) for c in cfgs}
    assert {"SOAP (eigh)", "SOAP factorized", "SOAP one-sided", "SOAP factorized + one-sided"} <= labels
    assert {c.budget_fraction for c in cfgs} == set(sc.budget_fractions)
    assert {c.seed for c in cfgs} == set(sc.seeds)
    assert len({results.run_id(c) for c in cfgs}) == len(cfgs)  # shared runs appear once
