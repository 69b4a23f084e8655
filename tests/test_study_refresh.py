"""soap_lab.studies.refresh: the frontier's arithmetic, the two claims on records with known numbers, figures."""
from __future__ import annotations

import math

import pytest

from conftest import _write_synthetic_record
from soap_lab import stats
from soap_lab.records import store
from soap_lab.studies import get_scale, lr_sweep_configs
from soap_lab.studies import refresh as R


def test_refreshes_needed_reads_the_monotone_fixed_curve_on_log_refreshes():
    curve = [(1.0, 2.0), (10.0, 1.8), (100.0, 1.7), (1000.0, 1.72)]  # the last point rises: pooled with its neighbour
    assert R._monotone([0, 1, 2, 3], [2.0, 1.8, 1.7, 1.72]) == pytest.approx([2.0, 1.8, 1.71, 1.71])
    assert R.refreshes_needed(curve, 1.9) == pytest.approx(10 ** 0.5)
    assert R.refreshes_needed(curve, 1.8) == pytest.approx(10.0)
    assert R.refreshes_needed(curve, 1.6) is None and R.refreshes_needed(curve, 2.1) is None  # outside: unsolved


SCALE = dict(preset="tiny", steps=101, eval_every=50, lrs={"soap": (1e-2,), "shampoo": (1e-2,)}, seeds=(0, 1, 2),
             fixed=(1, 10, 100), intervals=(1,), tolerances=(0.01, 0.1), staleness_f=10)


def _loss(opt, refreshes, seed):
    """Fixed f: 1.5 + 0.1·(2 − log10 refreshes); SOAP a little better; the seed shifts everything."""
    return 1.5 + 0.1 * (2 - math.log10(max(refreshes, 1))) + (0.0 if opt == "soap" else 0.05) + 0.01 * seed


@pytest.fixture
def pool(tmp_path):
    sc = get_scale("cpu", **SCALE)
    for c in lr_sweep_configs(sc, tmp_path, seeds=sc.seeds):
        c.optimizer in ("soap", "shampoo") and _write_synthetic_record(c, tmp_path)
    for c in R.STUDY.configs(sc, tmp_path):
        _write_synthetic_record(c, tmp_path)
        path = store.record_path(c, tmp_path)
        rec = store.read_record(path)
        f, hp = c.precondition_frequency, c.hparams
        if hp.get("refresh_policy") == "adaptive" and hp["refresh_tolerance"] > 0:
            # adaptive: a third of fixed f = 1's refreshes; at τ = 0.01 the loss of f = 1, at τ = 0.1 (SOAP) or
            # 0.1 (Shampoo: + 0.05) worse
            n = (c.steps - 1) / 3
            worse = 0.0 if hp["refresh_tolerance"] < 0.05 else (0.005 if c.optimizer == "soap" else 0.05)
            loss = _loss(c.optimizer, c.steps - 1, c.seed) + worse
        else:
            n = (c.steps - 1) // f
            loss = _loss(c.optimizer, n, c.seed)
            rec["metrics"]["staleness"] = [[s, "mlp.fc1.weight:0", 0.01 * (s % f + 1), 1.0] for s in range(f, 101, f)]
        rec["summary"]["final_val_loss"] = loss
        rec["summary"]["refresh"] = {"refreshes_per_factor": float(n)}
        store.write_json_atomic(rec, path)
    return sc, tmp_path


def test_claims_on_known_numbers(pool):
    sc, root = pool
    rows = {(r["claim"][:20], r.get("optimizer"), r.get("tau")): r for r in R.claims(sc, root)}
    saved = rows[("adaptive reaches fix", "soap", 0.01)]
    assert saved["n"] == 3 and saved["mean"] == pytest.approx(100 - 100 / 3) and saved["verdict"] == stats.REPRODUCED
    tol = next(r for r in R.claims(sc, root) if r["claim"].startswith("SOAP tolerates"))
    # SOAP loses 0.005 at τ = 0.1 (< 0.01: clamped at the grid's end, log10 0.1 = −1); Shampoo crosses 0.01 between
    # τ = 0.01 (+0) and 0.1 (+0.05): at log10 τ = −2 + 0.01/0.05 = −1.8
    assert tol["mean"] == pytest.approx(-1 - (-1.8)) and "clamped" in tol["where"] and tol["n"] == 3


def test_a_tau0_run_stands_for_fixed_f_on_its_own_commit(pool):
    """τ = 0 refreshes at every check: the fixed trajectory, computed where the adaptive runs were (module docstring)."""
    sc, root = pool
    fr = R.fixed_runs(R.frame(sc, root), "soap")
    assert sorted(fr[fr["f"] == 10]["policy"]) == ["adaptive"] * 3 and sorted(fr[fr["f"] == 1]["policy"]) == ["adaptive"] * 3
    assert sorted(fr[fr["f"] == 100]["policy"]) == ["fixed"] * 3 and len(fr) == 9


def test_the_frontier_table_and_figures(pool, tmp_path):
    sc, root = pool
    (title, table), = R.tables(sc, root)
    assert "| soap | fixed | 100 |" in table and "| shampoo | adaptive | 1 | 0.01 |" in table
    sd = R.STUDY.data(sc, root)
    a = R.draw_frontier({"cpu": sd}, tmp_path / "a")
    b = R.draw_staleness({"cpu": sd}, tmp_path / "b")
    assert all(p.stat().st_size > 10_000 for p in a + b)
    again = R.draw_frontier({"cpu": sd}, tmp_path / "c")
    assert again[1].read_bytes() == a[1].read_bytes()


def test_the_summary_counts_the_read_off_and_names_what_keeps_the_loss():
    from soap_lab import stats
    from soap_lab.studies import refresh

    def row(claim, where, verdict, mean=0.0):
        share = float(where.split(": ")[-1].split("%")[0]) / 100 if "%" in where else None
        return {"claim": claim, "where": where, "verdict": verdict, "mean": mean, "low": mean - 1e-3,
                "high": mean + 1e-3, "n": 3, "refresh_share": share}

    rows = [row("adaptive reaches fixed f's loss with fewer refreshes", "soap, check every 1, τ = 0.1", stats.REPRODUCED, 5),
            row("adaptive reaches fixed f's loss with fewer refreshes",
                "soap, check every 10, τ = 0.3 (seeds [2] outside the fixed curve)", stats.CONTRADICTED, -5),
            row("adaptive costs less than 0.01 of loss", "soap, f = 1, τ = 0.1: 49% of fixed's refreshes", stats.REPRODUCED),
            row("adaptive costs less than 0.01 of loss", "soap, f = 10, τ = 0.01: 100% of fixed's refreshes", stats.REPRODUCED),
            row("adaptive costs less than 0.01 of loss", "soap, f = 10, τ = 0.3: 40% of fixed's refreshes", stats.CONTRADICTED, 0.02)]
    text = refresh.summary(rows)
    assert "saves refreshes in 1 of 2 settings, saves none or needs more in 1" in text and "in 1 of them" in text
    assert "fewer refreshes at soap, f = 1, τ = 0.1: 49%" in text and "100%" not in text
    assert "loses more than 0.01 at soap, f = 10, τ = 0.3: 40%" in text
    assert refresh.summary([]) == ""
