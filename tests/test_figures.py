"""soap_lab.figures: every figure drawn from stored results only, and ``make figures`` (``draw_all``), on synthetic
records (``synthetic_pool``, conftest.py) and small stored data sets; no training."""
import json
import subprocess
import sys

import pytest

from soap_lab import ablations, claim1, cli, figures, overhead, results, stored

pytest.importorskip("seaborn")


def _files(out, name):
    return [out / f"{name}.png", out / f"{name}.pdf"]


@pytest.mark.parametrize("name", ["lr_sweep", "frequency", "comparison", "efficiency", "batch_size", "variants"])
def test_run_figures_draw_from_records(synthetic_pool, synthetic_scale, tmp_path, name):
    paths = figures.draw(name, synthetic_pool, tmp_path, scales={"cpu": synthetic_scale})
    assert paths == _files(tmp_path, name)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_no_scale_with_results_is_an_error_naming_the_command(synthetic_scale, tmp_path):
    with pytest.raises(ablations.MissingResults, match="make ablations SCALE=cpu"):
        figures.draw("frequency", tmp_path / "empty", tmp_path, scales={"cpu": synthetic_scale}, only_scales=True)


def test_data_figures_draw_from_stored_files(tmp_path):
    eq_dir, ov_dir, out = tmp_path / "eq", tmp_path / "ov", tmp_path / "fig"
    c = claim1.claim1_study(m=5, n=4, n_batches=8, max_staleness=3, exponents=(0.25, 0.5))
    assert c["exact_error"] < 1e-10 and c["no_trace_error"] > 1e-2
    stored.save_json(c, eq_dir / stored.CLAIM1_FILE)
    g = claim1.gap_trajectory(frequencies=(2,), refreshes=("qr",), problems=("teaching",), steps=8, m=5, n=4, batch=16)
    assert g["columns"]["gap_fresh"] and max(g["columns"]["gap_fresh"]) < 1e-8
    stored.save_json(g, eq_dir / stored.GAP_FILE)
    ov = {"params": {"preset": "tiny", "n_matrices": 2, "n_params": 100, "batch_size": 8, "threads": 1, "repeats": 1,
                     "window": 10},
          "adamw_step_s": 1e-3, "forward_backward_s": 1e-2,
          "summary": [{"f": f, "overhead_pct": 5 + 50 / f, "opt_ratio": 2 + 10 / f} for f in (1, 10, 100)],
          "fit": overhead.fit_floor([1, 10, 100], [5 + 50 / f for f in (1, 10, 100)])}
    results.write_json_atomic(ov, ov_dir / "overhead_cpu.json")
    for name in ("equivalence_claim1", "equivalence_gap", "overhead"):
        assert figures.draw(name, tmp_path / "runs", out, equivalence_dir=eq_dir, overhead_dir=ov_dir) == _files(out, name)


def test_main_figures_draws_everything_and_reports_missing(synthetic_pool, synthetic_overrides, tmp_path, capsys):
    argv = ["--runs-root", str(synthetic_pool), "--figures-dir", str(tmp_path / "fig"), "--scales", "cpu",
            "--scale-overrides", json.dumps(synthetic_overrides), "--equivalence-dir", str(tmp_path / "none"),
            "--overhead-dir", str(tmp_path / "none")]
    assert cli.figures_main(argv) == 1  # equivalence/overhead data missing
    err = capsys.readouterr().err
    assert "skipped overhead" in err and "make ablations SCALE=cpu" in err
    for name in ("lr_sweep", "frequency", "comparison", "efficiency", "batch_size", "variants"):
        assert (tmp_path / "fig" / f"{name}.png").exists()
    assert cli.figures_main(argv[:4] + ["--only", "frequency"]) == 1  # default cpu configs: no such runs
    assert "make ablations SCALE=cpu" in capsys.readouterr().err


def test_draw_all_returns_the_skipped_figures(tmp_path, capsys):
    lines = []
    skipped = figures.draw_all({"cpu": ablations.get_scale("cpu")}, ["equivalence_gap"], tmp_path / "runs",
                               tmp_path / "fig", equivalence_dir=tmp_path / "eq", log=lines.append)
    assert skipped == ["equivalence_gap"] and lines[-1].startswith("0 figures in ")
    assert "skipped equivalence_gap: no gap-trajectory data at" in capsys.readouterr().err


def test_default_figures_dir_keeps_smoke_scales_out_of_figures():
    assert figures.default_figures_dir([ablations.get_scale("cpu")]) == figures.FIGURES_DIR
    tiny = ablations.get_scale("cpu", preset="tiny")
    assert figures.default_figures_dir([tiny]) == results.REPO_ROOT / "out" / "figures" / tiny.name


def test_lab_modules_import_nothing_heavy():
    """Only drawing imports matplotlib/seaborn, only a DataFrame pandas, only executing notebooks papermill."""
    modules = ("figures", "ablations", "analysis", "overhead", "stored", "notebook", "rerun", "cli", "claim1",
               "freq_study", "freq_analysis", "plot_seeds", "sweep", "results", "provenance", "train", "train_config",
               "data", "batches", "show")
    code = (f"import sys; import {', '.join('soap_lab.' + m for m in modules)}; "
            "heavy = [m for m in ('papermill', 'seaborn', 'matplotlib', 'pandas') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
