"""soap_lab.figures: every figure drawn from stored results only, and ``make figures`` (``draw_all``), on synthetic
records (``synthetic_pool``, conftest.py) and small stored data sets; no training."""
import json
import subprocess
import sys

import pytest

from soap_lab import ablations, cli, figures, overhead
from soap_lab.equivalence import experiments
from soap_lab.records import store, datasets

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
    c = experiments.claim1_study(m=5, n=4, n_batches=8, max_staleness=3, exponents=(0.25, 0.5))
    assert c["exact_error"] < 1e-10 and c["no_trace_error"] > 1e-2
    datasets.save_json(c, eq_dir / datasets.CLAIM1_FILE)
    g = experiments.gap_trajectory(frequencies=(2,), refreshes=("qr",), problems=("teaching",), steps=8, m=5, n=4, batch=16)
    assert g["columns"]["gap_fresh"] and max(g["columns"]["gap_fresh"]) < 1e-8
    datasets.save_json(g, eq_dir / datasets.GAP_FILE)
    ov = {"params": {"preset": "tiny", "n_matrices": 2, "n_params": 100, "batch_size": 8, "threads": 1, "repeats": 1,
                     "window": 10},
          "adamw_step_s": 1e-3, "forward_backward_s": 1e-2,
          "summary": [{"f": f, "overhead_pct": 5 + 50 / f, "opt_ratio": 2 + 10 / f} for f in (1, 10, 100)],
          "fit": overhead.fit_floor([1, 10, 100], [5 + 50 / f for f in (1, 10, 100)])}
    store.write_json_atomic(ov, ov_dir / "overhead_cpu.json")
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


def test_paper_figures_are_drawn_for_the_seeded_scale_too():
    """``make figures`` draws cpu_freq's row next to cpu's (and names gpu when absent); ``make ablations`` and the
    notebooks still train only the paper's scales (``ablations.PAPER_SCALES``)."""
    assert "cpu_freq" in figures.FIGURE_SCALES and "cpu_freq" not in ablations.PAPER_SCALES
    assert set(ablations.PAPER_SCALES) <= set(figures.FIGURE_SCALES)
    assert list(figures._default_scales()) == list(figures.FIGURE_SCALES)
    assert figures._default_scales()["cpu_freq"] == ablations.get_scale("cpu_freq")


def test_a_seeded_scale_draws_with_the_lr_sweep_on_every_seed(synthetic_pool, synthetic_scale, synthetic_seeded_pool,
                                                              synthetic_seeded_scale, tmp_path):
    for name in ("lr_sweep", "frequency", "comparison", "efficiency", "batch_size", "variants"):
        assert figures.draw(name, synthetic_seeded_pool, tmp_path, scales={"cpu_freq": synthetic_seeded_scale},
                            only_scales=True) == _files(tmp_path, name)
    cache = {}
    sd = figures._study_datas("lr_sweep", {"a": synthetic_seeded_scale, "b": synthetic_scale}, synthetic_seeded_pool, cache)
    assert sorted(sd["a"].runs["seed"].unique()) == [0, 1, 2] and sd["b"] is None  # b: no records in this pool
    assert len(cache) == 2  # one frame per experiment, read once


def test_one_timing_study_file_is_drawn_for_the_named_scale_only(tmp_path, monkeypatch):
    """The overhead notebook names its one output file: no other default scale (gpu, cpu_freq) gets a row of it."""
    from soap_lab import plot_overhead

    ov = {"params": {}, "summary": [{"f": 1, "overhead_pct": 5.0, "opt_ratio": 2.0}]}
    store.write_json_atomic(ov, tmp_path / "timing.json")
    seen = {}
    monkeypatch.setattr(plot_overhead, "plot_overhead", lambda datas, out, name, runs: seen.update(datas) or [])
    figures.draw("overhead", tmp_path / "runs", tmp_path / "fig", scales={"cpu": ablations.get_scale("cpu")},
                 overhead_dir=tmp_path / "timing.json")
    assert list(seen) == ["cpu"] and seen["cpu"]["summary"] == ov["summary"]


def test_default_figures_dir_keeps_smoke_scales_out_of_figures():
    assert figures.default_figures_dir([ablations.get_scale("cpu")]) == figures.FIGURES_DIR
    tiny = ablations.get_scale("cpu", preset="tiny")
    assert figures.default_figures_dir([tiny]) == store.REPO_ROOT / "out" / "figures" / tiny.name


def test_lab_modules_import_nothing_heavy():
    """Only drawing imports matplotlib/seaborn, only a DataFrame pandas, only executing notebooks papermill."""
    modules = ("figures", "ablations", "analysis", "overhead", "stored", "notebook", "rerun", "cli", "claim1",
               "freq_study", "freq_analysis", "plot_seeds", "sweep", "results", "provenance", "train", "train_config",
               "data", "batches", "show")
    code = (f"import sys; import {', '.join('soap_lab.' + m for m in modules)}; "
            "heavy = [m for m in ('papermill', 'seaborn', 'matplotlib', 'pandas') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
