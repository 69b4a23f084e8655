"""soap_lab.studies.batch_size (paper Fig. 4): SOAP's f scaled with 1/batch, the claims per seed on frames with
known answers (final losses and, in the paper's form, steps saved per batch with the extrapolation flag), steps to
a target from validation curves, the grid against the committed records, and the figure (synthetic pools and a
snapshot of the committed records, the same bytes when drawn twice)."""
import json
import math

import pandas as pd
import pytest
from conftest import SEED_FACTOR, SEED_SHIFT
from study_pools import snapshot, synthetic_pool, synthetic_scale

from soap_lab.records import store
from soap_lab.studies import batch_size as B
from soap_lab.studies import get_scale, registry, tuned_lr

STEPS = 1000


def test_batch_frequency_scales_with_one_over_batch():
    sc = get_scale("cpu_freq")  # reference batch 16, f = 10
    assert [B.batch_frequency(sc, b) for b in (8, 16, 32, 128)] == [20, 10, 5, 1]
    assert [B.batch_frequency(get_scale("cpu"), b) for b in (8, 32, 128)] == [40, 10, 2]  # round(2.5) = 2


# ============================================================================================ the claims
def _law(n, s):
    return 1.0 + 2.0 * (n / 100.0) ** -1.0 + 0.01 * s


def test_claims_pair_soap_and_adamw_at_each_batch():
    """SOAP's lead over AdamW grows from 0.05 (batch 8) to 0.15 (batch 128); no budget fractions: final losses only."""
    sc = get_scale("cpu_freq")
    rows = []
    for b, lead in ((8, 0.05), (32, 0.1), (128, 0.15)):
        for s in range(3):
            rows.append(dict(label="AdamW", f=None, seed=s, batch_size=b, budget_fraction=1.0, steps_total=STEPS,
                             final_val_loss=2.0 + 0.01 * s))
            rows.append(dict(label="SOAP", f=B.batch_frequency(sc, b), seed=s, batch_size=b, budget_fraction=1.0,
                             steps_total=STEPS, final_val_loss=2.0 + 0.01 * s - lead - 0.001 * s))
    out = B.claim_rows(pd.DataFrame(rows), sc)
    assert [r["where"] for r in out] == ["final loss, batch 8", "final loss, batch 32", "final loss, batch 128",
                                         "final loss, batch 128 vs 8"]
    assert all(r["verdict"] == "reproduced" for r in out)
    assert out[-1]["values"] == pytest.approx([-0.1] * 3)


def _paper_form(fractions, n_stars=((8, 800.0), (32, 600.0), (128, 400.0))):
    """SOAP reaches AdamW's loss at n_star(b) steps of 1000 at each batch b, and Shampoo's at batch 8 at 500 steps."""
    sc = get_scale("cpu_freq")
    rows = []
    for b, n_star in n_stars:
        f = B.batch_frequency(sc, b)
        for s in range(3):
            rows.append(dict(label="AdamW", f=None, seed=s, batch_size=b, budget_fraction=1.0, steps_total=STEPS,
                             final_val_loss=_law(n_star, s)))
            if b == 8:
                rows.append(dict(label="Shampoo", f=f, seed=s, batch_size=b, budget_fraction=1.0, steps_total=STEPS,
                                 final_val_loss=_law(500.0, s)))
            for frac in (*fractions, 1.0):
                rows.append(dict(label="SOAP", f=f, seed=s, batch_size=b, budget_fraction=frac,
                                 steps_total=int(frac * STEPS), final_val_loss=_law(frac * STEPS, s)))
    return sc, pd.DataFrame([dict(run_id=f"r{i}", **r) for i, r in enumerate(rows)])


def test_claims_in_the_papers_form_recover_the_known_step_savings():
    """Saved 0.2, 0.4, 0.6 at batches 8, 32, 128: each per seed, the growth (+0.4, the headline), and vs Shampoo 0.5;
    with budgets down to 0.25 every solve lies inside them."""
    sc, df = _paper_form((0.25, 0.375, 0.5, 0.625, 0.75, 0.875))
    out = {r["where"]: r for r in B.claim_rows(df, sc)}
    for b, saved in ((8, 0.2), (32, 0.4), (128, 0.6)):
        r = out[f"steps vs AdamW, batch {b}"]
        assert r["values"] == pytest.approx([saved] * 3, abs=1e-3) and r["verdict"] == "reproduced"
        assert r["outside"] == [] and r["note"] == ""
    grow = out["steps vs AdamW, batch 128 vs 8"]
    assert grow["values"] == pytest.approx([0.4] * 3, abs=1e-3) and grow["verdict"] == "reproduced"
    assert grow["headline"] is True and grow["note"] == ""
    assert out["steps vs Shampoo, batch 8"]["values"] == pytest.approx([0.5] * 3, abs=1e-3)
    full = B.claim_rows(df[df["budget_fraction"] == 1.0], sc)  # without the fractions only the final-loss rows
    assert all(r["where"].startswith("final loss") for r in full)


def test_a_solve_below_the_smallest_budget_is_flagged_at_its_batch_and_in_the_growth():
    """Budgets from 0.5 only: N* = 400 at batch 128 lies below them (extrapolated), N* = 600 and 800 inside."""
    sc, df = _paper_form((0.5, 0.625, 0.75, 0.875))
    out = {r["where"]: r for r in B.claim_rows(df, sc)}
    assert out["steps vs AdamW, batch 128"]["note"] == "3 of 3 seeds extrapolated"
    assert out["steps vs AdamW, batch 128"]["values"] == pytest.approx([0.6] * 3, abs=1e-3)
    assert out["steps vs AdamW, batch 8"]["outside"] == [] and out["steps vs AdamW, batch 32"]["outside"] == []
    assert out["steps vs AdamW, batch 128 vs 8"]["outside"] == [0, 1, 2]  # extrapolated at one end


# ================================================================================================ tables
def test_steps_to_target_interpolates():
    assert B.steps_to_target([10, 20, 30], [3.0, 2.0, 1.0], 1.5) == (25.0, "interpolated")
    assert B.steps_to_target([10, 20], [1.0, 0.5], 2.0) == (10.0, "first eval")
    step, how = B.steps_to_target([10, 20], [3.0, 2.5], 1.0)
    assert math.isnan(step) and how == "not reached"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return synthetic_pool(tmp_path_factory.mktemp("single"), synthetic_scale((0,)), "batch_size")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    return synthetic_pool(tmp_path_factory.mktemp("seeded"), synthetic_scale((0, 1, 2)), "batch_size")


def test_batch_size_table_target_is_adamw_at_the_smallest_batch(single):
    tab = B.batch_size_table(single)
    assert set(tab["label"]) == {"AdamW", "SOAP"} and set(tab["batch_size"]) == {4, 8, 16}  # full budget only
    adam4 = tab[(tab["optimizer"] == "adamw") & (tab["batch_size"] == 4)].iloc[0]
    assert adam4["target"] == pytest.approx(adam4["final_val_loss"])
    assert adam4["steps_to_target"] == pytest.approx(40)  # reaches its own final loss at the last step
    soap4 = tab[(tab["optimizer"] == "soap") & (tab["batch_size"] == 4)].iloc[0]
    assert soap4["how"] == "interpolated" and 20 < soap4["steps_to_target"] < 30  # between the evals at 20 and 30
    soap16 = tab[(tab["optimizer"] == "soap") & (tab["batch_size"] == 16)].iloc[0]
    assert soap16["how"] == "first eval" and soap16["steps_to_target"] == 10
    assert set(tab[tab["optimizer"] == "soap"]["f"]) == {20, 10, 5}  # f scaled with 1/batch


def test_batch_size_target_is_each_seeds_own_adamw(seeded):
    tab = B.batch_size_table(seeded)
    for seed in (0, 1, 2):
        g = tab[tab["seed"] == seed]
        d = SEED_SHIFT[seed] * SEED_FACTOR["adamw"]
        assert list(g["target"]) == pytest.approx([2.0 + d + 3 * (40 * 4 / 8) ** -0.5] * len(g))  # AdamW, batch 4


# =============================================================================================== the grid
@pytest.mark.parametrize("scale_name", ["cpu", "cpu_freq"])
def test_the_grid_holds_every_committed_record_of_the_study(scale_name):
    """Every committed record at the study's batches other than the reference one (AdamW, SOAP at f(b) and
    Shampoo at the tuned lr, the scale's steps and seeds, no other hyperparameter) is a run of the grid."""
    sc = get_scale(scale_name)
    keys = {store.run_key(store.run_id(c)) for c in registry.get("batch_size").configs(sc)}
    lr = {o: tuned_lr(o, sc) for o in ("adamw", "shampoo", "soap")}
    recs = [(p, json.loads(p.read_text())["config"]) for p in sorted((store.DEFAULT_RUNS_ROOT / sc.experiment).glob("*.json"))]
    mine = [p for p, c in recs if c["optimizer"] in lr and c["lr"] == lr[c["optimizer"]] and c["steps"] == sc.steps and
            c["batch_size"] in B.PARAMS[scale_name]["batch_sizes"] and c["batch_size"] != sc.batch_size and
            c["seed"] in sc.seeds and c.get("precondition_frequency") in (None, B.batch_frequency(sc, c["batch_size"]))
            and {k: v for k, v in (c.get("hparams") or {}).items() if k not in ("exponent", "eps", "grafting")} == {}]
    assert len(mine) >= {"cpu": 4, "cpu_freq": 57}[scale_name]
    assert [p.name for p in mine if store.run_key(p.stem) not in keys] == []


def test_the_grid_at_cpu_freq_has_every_fraction_at_every_batch_and_shampoo_at_the_smallest():
    sc = get_scale("cpu_freq")
    cfgs = registry.get("batch_size").configs(sc)
    for b in (8, 32, 128):
        soap = [c for c in cfgs if c.optimizer == "soap" and c.batch_size == b]
        assert sorted({c.budget_fraction for c in soap}) == [0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
        assert {c.precondition_frequency for c in soap} == {B.batch_frequency(sc, b)}
    assert [(c.batch_size, c.precondition_frequency) for c in cfgs if c.optimizer == "shampoo"] == [(8, 20)] * 3
    assert len(cfgs) == 75 and {c.seed for c in cfgs} == {0, 1, 2}
    cpu = registry.get("batch_size").configs(get_scale("cpu"))  # the one-seed scale: its final-loss grid
    assert len(cpu) == 6 and {c.budget_fraction for c in cpu} == {1.0}


# ============================================================================================ the figure
def test_the_figure_draws_one_seed_next_to_three(single, seeded, tmp_path):
    paths = B.draw({"cpu": single, "cpu_freq": seeded, "gpu": None}, tmp_path)
    assert [p.name for p in paths] == ["batch_size.png", "batch_size.pdf"] and paths[0].stat().st_size > 1000


def test_the_figure_from_the_committed_records_is_the_same_bytes_twice(tmp_path):
    root = tmp_path / "runs"
    data = {k: registry.get("batch_size").data(snapshot(root, k, "batch_size")[0], root) for k in ("cpu_freq", "cpu")}
    assert len(data["cpu_freq"].runs) >= 57 and len(data["cpu"].runs) == 6
    a, b = B.draw(data, tmp_path / "a"), B.draw(data, tmp_path / "b")
    assert [p.read_bytes() for p in a] == [q.read_bytes() for q in b]
