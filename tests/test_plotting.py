"""Figures and the tables behind them, on synthetic run records (no training), plus the figure entry point.

The records are written with the same layout ``soap_lab.train`` writes (config, summary, metrics, provenance) for
every config of a small scale's studies, with loss curves whose numbers are known, so the derived tables
(refresh counts, efficiency fit, steps to target) can be checked exactly.
"""
import json
import math
import subprocess
import sys

import pytest

from soap_lab import ablations, analysis, claim1, figures, overhead, results, stored

pytest.importorskip("seaborn")

OVERRIDES = dict(preset="tiny", steps=40, eval_every=10, batch_size=8,
                 lrs={"adamw": (1e-3, 1e-2), "soap": (1e-3, 1e-2), "shampoo": (1e-3, 1e-2)},
                 frequencies=(1, 10), batch_sizes=(4, 8, 16), budget_fractions=(0.5, 0.75, 1.0))
# asymptote of each optimizer's synthetic loss curve (lower is better)
FLOOR = {"adamw": 2.0, "shampoo": 1.9, "soap": 1.8, "soap_factorized": 1.82, "soap_one_sided": 1.9,
         "soap_factorized_one_sided": 1.95}


def _scale():
    return figures.notebook_scale("cpu", overrides=OVERRIDES)


def synthetic_loss(cfg, step):
    """a + 3·(step·batch/8)^-0.5, worse by 0.3 at the non-tuned lr (1e-3)."""
    a = FLOOR[cfg.optimizer] + (0.3 if cfg.lr < 5e-3 else 0.0)
    if cfg.optimizer.startswith("soap") and cfg.precondition_frequency and cfg.precondition_frequency > 10:
        a += 0.02
    return a + 3.0 * (step * cfg.batch_size / 8) ** -0.5


def write_record(cfg, root, step_time=0.01):
    steps = max(1, int(math.floor(cfg.budget_fraction * cfg.steps + 0.5)))
    st = step_time * (3 if cfg.optimizer != "adamw" else 1)
    val_steps = list(range(cfg.eval_every, steps, cfg.eval_every)) + [steps]
    metrics = {
        "step": list(range(1, steps + 1)),
        "loss": [synthetic_loss(cfg, s) for s in range(1, steps + 1)],
        "step_time": [st] * steps,
        "opt_time": [st / 2] * steps,
        "time": [st * s for s in range(1, steps + 1)],
        "val_step": val_steps,
        "val_loss": [synthetic_loss(cfg, s) for s in val_steps],
        "val_time": [st * s for s in val_steps],
    }
    state = {"adamw": 2, "shampoo": 9, "soap": 9, "soap_factorized": 8, "soap_one_sided": 3,
             "soap_factorized_one_sided": 1.5}[cfg.optimizer]
    summary = {"steps_total": steps, "steps_done": steps, "final_val_loss": metrics["val_loss"][-1],
               "final_train_loss": metrics["loss"][-1], "diverged": False, "wall_time": st * steps,
               "opt_time_total": st / 2 * steps, "step_time_mean": st, "optimizer_state_bytes": int(state * 4000),
               "num_params": 1000, "tokens_per_step": cfg.batch_size * 32, "seq_len_used": 32}
    rec = {"schema": 1, "run_id": results.run_id(cfg), "experiment": cfg.experiment, "config": results.config_dict(cfg),
           "summary": summary, "metrics": metrics,
           "provenance": {"device": {"type": "cpu", "name": "Synthetic CPU"}, "git_commit": None}}
    results.write_json_atomic(rec, results.record_path(cfg, root))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Synthetic records for every study of the small scale (lr sweep first: the others need tuned lrs)."""
    root = tmp_path_factory.mktemp("runs")
    sc = _scale()
    for study in ablations.STUDIES:
        for cfg in ablations.configs(study, sc, root):
            if not results.has_record(cfg):
                write_record(cfg, root)
    return root


# ---------------------------------------------------------------------------------------- tables
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


def test_study_data_selects_the_study_runs(pool):
    sc = _scale()
    sd = analysis.study_data("frequency", sc, pool)
    assert sd.complete and len(sd.runs) == 1 + 3 * len(sc.frequencies)
    assert set(sd.runs["label"]) == {"AdamW", "Shampoo", "SOAP", "SOAP (eigh)"}
    assert "Synthetic CPU" in sd.caption() and "preset tiny" in sd.caption()
    assert ablations.tuned_lr("soap", sc, pool) == 1e-2
    lr = analysis.lr_table(analysis.study_data("lr_sweep", sc, pool))
    assert set(lr[lr["tuned"]]["lr"]) == {1e-2}


def test_efficiency_table_on_known_curves(pool):
    sd = analysis.study_data("comparison", _scale(), pool)
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


def test_efficiency_table_says_when_the_fit_never_reaches(pool, monkeypatch):
    sd = analysis.study_data("comparison", _scale(), pool)
    runs = sd.runs.copy()
    runs.loc[runs["label"] == "AdamW", "final_val_loss"] = 1.0  # below SOAP's asymptote 1.8
    sd.runs = runs
    e = analysis.efficiency_table(sd, baselines=("AdamW",))[0]
    assert e["reached"] is False and e["steps_needed"] == float("inf")
    from soap_lab import plot_wallclock

    assert "never reaches" in plot_wallclock._efficiency_text(e)


def test_batch_size_table_target_is_adamw_at_smallest_batch(pool):
    tab = analysis.batch_size_table(analysis.study_data("batch_size", _scale(), pool))
    adam4 = tab[(tab["optimizer"] == "adamw") & (tab["batch_size"] == 4)].iloc[0]
    assert adam4["target"] == pytest.approx(adam4["final_val_loss"])
    assert adam4["steps_to_target"] == pytest.approx(40)  # reaches its own final loss at the last step
    soap4 = tab[(tab["optimizer"] == "soap") & (tab["batch_size"] == 4)].iloc[0]
    assert soap4["how"] == "interpolated" and 20 < soap4["steps_to_target"] < 30  # between the evals at 20 and 30
    soap16 = tab[(tab["optimizer"] == "soap") & (tab["batch_size"] == 16)].iloc[0]
    assert soap16["how"] == "first eval" and soap16["steps_to_target"] == 10
    assert set(tab[tab["optimizer"] == "soap"]["f"]) == {20, 10, 5}  # f scaled with 1/batch


def test_overhead_fit_recovers_floor():
    fit = overhead.fit_floor([1, 3, 10, 30, 100], [5 + 50 / f for f in (1, 3, 10, 30, 100)])
    assert fit["floor_pct"] == pytest.approx(5) and fit["per_refresh_pct"] == pytest.approx(50)
    study = {"forward_backward_s": 0.09, "adamw_step_s": 0.01, "summary": [{"f": 10, "soap_step_s": 0.03}]}
    assert analysis.step_time_ratio(study, 10) == pytest.approx(1.2)
    assert analysis.step_time_ratio(study, 3) is None and analysis.step_time_ratio(None, 10) is None


def test_timing_study_runs_on_tiny_shapes():
    d = overhead.timing_study(figures.notebook_scale("cpu", overrides={"preset": "tiny", "batch_size": 2}),
                              frequencies=[1, 3], repeats=1, window=3, fb_reps=1, log=None)
    assert [r["f"] for r in d["summary"]] == [1, 3] and len(d["soap_times"]["3"]) == 1
    assert d["params"]["n_matrices"] > 0 and d["adamw_step_s"] > 0 and d["forward_backward_s"] > 0
    with pytest.raises(ValueError, match="frequencies is empty"):
        overhead.timing_study("cpu", frequencies=[])


# ---------------------------------------------------------------------------------------- figures
def _files(out, name):
    return [out / f"{name}.png", out / f"{name}.pdf"]


@pytest.mark.parametrize("name", ["lr_sweep", "frequency", "comparison", "efficiency", "batch_size", "variants"])
def test_run_figures_draw_from_records(pool, tmp_path, name):
    paths = figures.draw(name, pool, tmp_path, scales={"cpu": _scale()})
    assert paths == _files(tmp_path, name)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_missing_scale_is_named_and_no_scale_is_an_error(pool, tmp_path):
    from soap_lab import plot_studies

    sd = analysis.study_data("variants", _scale(), pool)
    plot_studies.plot_variants({"cpu": sd, "gpu": None}, tmp_path)  # gpu missing: drawn with a footer note
    assert (tmp_path / "variants.png").exists()
    with pytest.raises(ablations.MissingResults, match="make ablations SCALE=cpu"):
        plot_studies.plot_variants({"cpu": None}, tmp_path)
    with pytest.raises(ablations.MissingResults, match="make ablations SCALE=cpu"):
        figures.draw("frequency", tmp_path / "empty", tmp_path, scales={"cpu": _scale()}, only_scales=True)


def test_data_figures_draw_from_stored_files(tmp_path):
    eq_dir, ov_dir, out = tmp_path / "eq", tmp_path / "ov", tmp_path / "fig"
    c = claim1.claim1_study(m=5, n=4, n_batches=8, max_staleness=3, exponents=(0.25, 0.5))
    assert c["exact_error"] < 1e-10 and c["no_trace_error"] > 1e-2
    stored.save_json(c, eq_dir / figures.CLAIM1_FILE)
    g = claim1.gap_trajectory(frequencies=(2,), refreshes=("qr",), problems=("teaching",), steps=8, m=5, n=4, batch=16)
    assert g["columns"]["gap_fresh"] and max(g["columns"]["gap_fresh"]) < 1e-8
    stored.save_json(g, eq_dir / figures.GAP_FILE)
    ov = {"params": {"preset": "tiny", "n_matrices": 2, "n_params": 100, "batch_size": 8, "threads": 1, "repeats": 1,
                     "window": 10},
          "adamw_step_s": 1e-3, "forward_backward_s": 1e-2,
          "summary": [{"f": f, "overhead_pct": 5 + 50 / f, "opt_ratio": 2 + 10 / f} for f in (1, 10, 100)],
          "fit": overhead.fit_floor([1, 10, 100], [5 + 50 / f for f in (1, 10, 100)])}
    results.write_json_atomic(ov, ov_dir / "overhead_cpu.json")
    for name in ("equivalence_claim1", "equivalence_gap", "overhead"):
        assert figures.draw(name, tmp_path / "runs", out, equivalence_dir=eq_dir, overhead_dir=ov_dir) == _files(out, name)


def test_main_figures_draws_everything_and_reports_missing(pool, tmp_path, capsys):
    argv = ["--runs-root", str(pool), "--figures-dir", str(tmp_path / "fig"), "--scales", "cpu",
            "--scale-overrides", json.dumps(OVERRIDES), "--equivalence-dir", str(tmp_path / "none"),
            "--overhead-dir", str(tmp_path / "none")]
    assert figures.main_figures(argv) == 1  # equivalence/overhead data missing
    err = capsys.readouterr().err
    assert "skipped overhead" in err and "make ablations SCALE=cpu" in err
    for name in ("lr_sweep", "frequency", "comparison", "efficiency", "batch_size", "variants"):
        assert (tmp_path / "fig" / f"{name}.png").exists()
    assert figures.main_figures(argv[:4] + ["--only", "frequency"]) == 1  # default cpu configs: no such runs
    assert "make ablations SCALE=cpu" in capsys.readouterr().err


def test_notebook_scale_parameter_errors():
    with pytest.raises(figures.ParameterError, match="frequencies is empty"):
        figures.notebook_scale("cpu", frequencies=[])
    with pytest.raises(figures.ParameterError, match="unknown optimizer 'sgd'"):
        figures.notebook_scale("cpu", lrs={"sgd": [0.1]})
    with pytest.raises(figures.ParameterError, match="unknown scale"):
        figures.notebook_scale("tpu")
    with pytest.raises(figures.ParameterError, match="unknown scale field 'stepz'"):
        figures.notebook_scale("cpu", overrides={"stepz": 3})
    sc = figures.notebook_scale("cpu", steps=20, lrs={"soap": [1e-3]})
    assert sc.steps == 20 and sc.lrs["soap"] == (1e-3,) and sc.lrs["adamw"] == ablations.SCALES["cpu"].lrs["adamw"]


def test_figure_and_ablation_modules_import_nothing_heavy():
    code = ("import sys, soap_lab.figures, soap_lab.ablations, soap_lab.analysis, soap_lab.overhead; "
            "heavy = [m for m in ('papermill', 'seaborn', 'matplotlib', 'pandas') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
