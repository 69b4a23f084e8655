"""soap_lab.studies.width: per-width lr sweeps, a grid that grows once they are stored, the trend across widths."""
import math

import pytest

from conftest import _write_synthetic_record
from soap_lab import stats
from soap_lab.records import store
from soap_lab.studies import get_scale, lr_sweep_configs
from soap_lab.studies import width as W

SMALL = dict(preset="tiny", steps=40, eval_every=10, seeds=(0, 1, 2), lrs={"adamw": (1e-2,), "soap": (1e-2,),
             "shampoo": (1e-2,)}, presets=("tiny", "2L-d128"), n_seeds={"2L-d128": 3}, width_lrs=(1e-3, 1e-2),
             check_seeds=(1,), frequencies=(1, 30))


def test_the_committed_grid_matches_the_trained_width_arm():
    sc = get_scale("cpu_freq")
    cfgs = W.STUDY.configs(sc)
    d128 = [c for c in cfgs if c.preset == "2L-d128"]
    assert {(c.optimizer, c.lr, c.seed) for c in d128 if c.precondition_frequency in (None, 10)} >= \
        {(o, lr, 0) for o in ("adamw", "soap", "shampoo") for lr in (3e-3, 1e-2, 3e-2)}  # the sweep, at f = 10
    mini = [c for c in cfgs if c.preset == "mini"]
    assert sorted({c.seed for c in mini}) == list(range(10)) and {c.precondition_frequency for c in mini} == {None, 1, 30}


def test_the_grid_grows_once_the_sweep_is_stored_and_the_claims_follow(tmp_path):
    sc = get_scale("cpu", **SMALL)
    for c in lr_sweep_configs(sc, tmp_path):
        _write_synthetic_record(c, tmp_path)
    first = W.STUDY.configs(sc, tmp_path)
    assert {c.preset for c in first} == {"tiny", "2L-d128"}
    assert not [c for c in first if c.preset == "2L-d128" and c.precondition_frequency in (1, 30)]  # sweep first
    for c in first:
        _write_synthetic_record(c, tmp_path)
    grown = W.STUDY.configs(sc, tmp_path)
    main = [c for c in grown if c.preset == "2L-d128" and c.precondition_frequency == 30]
    assert len(main) == 6 and {c.lr for c in main} == {1e-2}  # conftest: 0.3 worse at lr < 5e-3
    for c in grown:
        store.has_record(c) or _write_synthetic_record(c, tmp_path)
    rows = W.claims(sc, tmp_path)
    per = [r for r in rows if r["claim"].startswith("SOAP's rise")]
    # conftest: SOAP 0.02 worse at f > 10, Shampoo the same at every f: +0.02 on every seed
    assert [r["where"].split(",")[0] for r in per] == ["d_model 32", "d_model 128"]
    assert all(r["mean"] == pytest.approx(0.02) and r["verdict"] == stats.CONTRADICTED for r in per)
    trend = next(r for r in rows if r["claim"].startswith("the difference of rises falls"))
    assert trend["mean"] == pytest.approx(0.0, abs=1e-12) and trend["n"] == 3 and trend["unit"] == "slope"
    figs = W.draw({"cpu": W.STUDY.data(sc, tmp_path)}, tmp_path / "fig")
    assert figs[0].stat().st_size > 10_000
    # a width still training (fewer than MIN_TREND_SEEDS seeds) stays out of the trend; its own row stays
    for c in grown:
        if c.preset == "2L-d128" and c.seed == 2 and c.precondition_frequency == 30:
            store.record_path(c).unlink()
    rows = W.claims(sc, tmp_path)
    assert [r["n"] for r in rows if r["claim"].startswith("SOAP's rise")] == [3, 2]
    assert not [r for r in rows if r["claim"].startswith("the difference of rises falls")]


def test_slope_is_the_mean_of_per_seed_least_squares_slopes():
    iv = stats.slope([1, 2, 3], {0: [0, 1, 2], 1: [1, 1, 1], 2: [0, 2, 4], 3: [0, math.nan, 1]})
    assert iv.values == pytest.approx([1.0, 0.0, 2.0]) and iv.mean == pytest.approx(1.0) and iv.n == 3
