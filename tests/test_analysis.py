"""soap_lab.analysis: the tables behind the figures, on synthetic run records with known numbers (no training).

The records (``synthetic_pool``, conftest.py) have loss curves a + 3·(step·batch/8)^-0.5 per optimizer, so the
derived tables (refresh counts, efficiency fit, steps to target) can be checked exactly.
"""
import math

import pytest

from soap_lab import ablations, analysis


def test_basis_refreshes_counts():
    assert analysis.basis_refreshes("soap", 100, 300) == 2  # the paper's runs: >= 30
    assert analysis.basis_refreshes("soap", 10, 300) == 29
    assert analysis.basis_refreshes("shampoo", 100, 300) == 3
    assert analysis.basis_refreshes("adamw", None, 300) == 0


def test_steps_to_target_interpolates():
    assert analysis.steps_to_target([10, 20, 30], [3.0, 2.0, 1.0], 1.5) == (25.0, "interpolated")
    assert analysis.steps_to_target([10, 20], [1.0, 0.5], 2.0) == (10.0, "first eval")
    step, how = analysis.steps_to_target([10, 20], [3.0, 2.5], 1.0)
    assert math.isnan(step) and how == "not reached"


def test_study_data_selects_the_study_runs(synthetic_pool, synthetic_scale):
    sc = synthetic_scale
    sd = analysis.study_data("frequency", sc, synthetic_pool)
    assert sd.complete and len(sd.runs) == 1 + 3 * len(sc.frequencies)
    assert set(sd.runs["label"]) == {"AdamW", "Shampoo", "SOAP", "SOAP (eigh)"}
    assert "Synthetic CPU" in sd.caption() and "preset tiny" in sd.caption()
    assert ablations.tuned_lr("soap", sc, synthetic_pool) == 1e-2
    lr = analysis.lr_table(analysis.study_data("lr_sweep", sc, synthetic_pool))
    assert set(lr[lr["tuned"]]["lr"]) == {1e-2}


def test_efficiency_table_on_known_curves(synthetic_pool, synthetic_scale):
    sd = analysis.study_data("comparison", synthetic_scale, synthetic_pool)
    eff = {e["baseline"]: e for e in analysis.efficiency_table(sd)}
    # SOAP's final losses are 1.8 + 3 N^-0.5: the fit must recover them and solve N* for AdamW's final loss
    fit = eff["AdamW"]["fit"]
    assert fit["a"] == pytest.approx(1.8, abs=1e-3) and fit["beta"] == pytest.approx(0.5, abs=1e-2)
    target = 2.0 + 3.0 * 40 ** -0.5
    n_star = (3.0 / (target - 1.8)) ** 2
    assert eff["AdamW"]["reached"] and eff["AdamW"]["steps_needed"] == pytest.approx(n_star, rel=1e-2)
    assert eff["AdamW"]["steps_saved"] == pytest.approx(1 - n_star / 40, abs=1e-2)
    # SOAP's step is 3x AdamW's here, so the wall-clock saving is 1 - 3 N*/N
    assert eff["AdamW"]["wallclock_saved"] == pytest.approx(1 - 3 * n_star / 40, abs=3e-2)


def test_efficiency_table_says_when_the_fit_never_reaches(never_reached):
    e = never_reached  # conftest.py: AdamW's final loss set below SOAP's asymptote
    assert e["reached"] is False and e["steps_needed"] == float("inf")


def test_batch_size_table_target_is_adamw_at_smallest_batch(synthetic_pool, synthetic_scale):
    tab = analysis.batch_size_table(analysis.study_data("batch_size", synthetic_scale, synthetic_pool))
    adam4 = tab[(tab["optimizer"] == "adamw") & (tab["batch_size"] == 4)].iloc[0]
    assert adam4["target"] == pytest.approx(adam4["final_val_loss"])
    assert adam4["steps_to_target"] == pytest.approx(40)  # reaches its own final loss at the last step
    soap4 = tab[(tab["optimizer"] == "soap") & (tab["batch_size"] == 4)].iloc[0]
    assert soap4["how"] == "interpolated" and 20 < soap4["steps_to_target"] < 30  # between the evals at 20 and 30
    soap16 = tab[(tab["optimizer"] == "soap") & (tab["batch_size"] == 16)].iloc[0]
    assert soap16["how"] == "first eval" and soap16["steps_to_target"] == 10
    assert set(tab[tab["optimizer"] == "soap"]["f"]) == {20, 10, 5}  # f scaled with 1/batch


def test_variants_table_memory_per_parameter(synthetic_pool, synthetic_scale):
    tab = analysis.variants_table(analysis.study_data("variants", synthetic_scale, synthetic_pool))
    soap = tab[tab["optimizer"] == "soap"].iloc[0]
    assert soap["state_per_param"] == pytest.approx(9.0) and soap["state_MB"] == pytest.approx(36000 / 2**20)


def test_step_time_ratio_from_a_timing_study():
    study = {"forward_backward_s": 0.09, "adamw_step_s": 0.01, "summary": [{"f": 10, "soap_step_s": 0.03}]}
    assert analysis.step_time_ratio(study, 10) == pytest.approx(1.2)
    assert analysis.step_time_ratio(study, 3) is None and analysis.step_time_ratio(None, 10) is None
