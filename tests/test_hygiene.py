"""Results hygiene: smoke runs write nowhere committed, figures are the same bytes, a bad record is named.

Synthetic records (``synthetic_pool``, conftest.py), no training.
"""
import json

import pytest

from soap_lab import ablations, analysis, cli, efficiency, figures, notebook, overhead, step_times
from soap_lab.records import store, datasets

pytest.importorskip("seaborn")


# ------------------------------------------------------------------------------- smoke runs stay apart
def test_overridden_scales_write_outside_the_committed_files():
    tiny = notebook.notebook_scale("cpu", overrides={"preset": "tiny", "frequencies": [1, 10]})
    assert tiny.experiment != "paper_cpu"
    assert overhead.default_path(tiny.name).parent == store.REPO_ROOT / "out" / "overhead"
    assert overhead.default_path("cpu") == datasets.OVERHEAD_DIR / "overhead_cpu.json"
    out = figures.default_figures_dir([tiny])
    assert out.is_relative_to(store.REPO_ROOT / "out") and tiny.name in str(out)
    assert figures.default_figures_dir([ablations.get_scale("cpu"), ablations.get_scale("gpu")]) == figures.FIGURES_DIR


def test_equivalence_notebook_writes_scratch_unless_asked_to_store():
    nb = json.loads((store.REPO_ROOT / "notebooks" / "equivalence.ipynb").read_text())
    params = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    assert "store = False" in "".join(params["source"])


# ----------------------------------------------------------------------------------- same bytes
def test_efficiency_figure_is_the_same_bytes_when_the_fit_moves_in_its_last_digits(synthetic_pool, synthetic_scale,
                                                                                   tmp_path, monkeypatch):
    sc = synthetic_scale
    a = figures.draw("efficiency", synthetic_pool, tmp_path / "a", scales={"cpu": sc}, only_scales=True)
    fit = efficiency.fit_power_law

    def wobbly(steps, losses):  # another CPU's BLAS: the same fit to ~1e-8
        f = fit(steps, losses)
        return efficiency.PowerLawFit(a=f.a * (1 + 3e-8), b=f.b * (1 - 2e-8), beta=f.beta * (1 + 1e-8))

    monkeypatch.setattr(efficiency, "fit_power_law", wobbly)
    b = figures.draw("efficiency", synthetic_pool, tmp_path / "b", scales={"cpu": sc}, only_scales=True)
    for p, q in zip(a, b):
        assert p.read_bytes() == q.read_bytes(), p.name


def test_a_figure_drawn_twice_is_the_same_bytes(synthetic_pool, synthetic_scale, tmp_path):
    sc = synthetic_scale
    a = figures.draw("comparison", synthetic_pool, tmp_path / "a", scales={"cpu": sc}, only_scales=True)
    b = figures.draw("comparison", synthetic_pool, tmp_path / "b", scales={"cpu": sc}, only_scales=True)
    assert [p.read_bytes() for p in a] == [q.read_bytes() for q in b]


# ------------------------------------------------------------------------------------- bad records
def test_a_corrupt_record_is_skipped_with_one_line_naming_it(synthetic_pool, synthetic_scale, tmp_path, capsys):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(synthetic_pool, root)
    exp = root / synthetic_scale.experiment
    n = len(store.load(synthetic_scale.experiment, root))
    victim = sorted(p for p in exp.glob("soap_*.json"))[-1]
    victim.write_text(victim.read_text()[:200])  # truncated
    (exp / "zz_empty.json").write_text("{}")
    df = store.load(synthetic_scale.experiment, root)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(df) == n - 1
    assert len(err) == 2 and victim.name in err[0] and "not valid JSON" in err[0] and "zz_empty.json" in err[1]


def test_figures_name_a_corrupt_lr_record_in_one_line(synthetic_pool, synthetic_scale, synthetic_overrides, tmp_path,
                                                      capsys):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(synthetic_pool, root)
    sc = synthetic_scale
    best = [c for c in ablations.lr_sweep(sc, root) if c.optimizer == "adamw" and c.lr == 1e-2][0]
    store.record_path(best).write_text("{}")
    argv = ["--runs-root", str(root), "--figures-dir", str(tmp_path / "fig"), "--scales", "cpu",
            "--scale-overrides", json.dumps(synthetic_overrides), "--only", "comparison"]
    assert cli.figures_main(argv) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("skipped comparison")]
    assert len(err) == 1 and store.record_path(best).name in err[0] and "Traceback" not in err[0]


def test_a_corrupt_data_file_is_named(tmp_path, capsys):
    (tmp_path / datasets.CLAIM1_FILE).write_text('{"params": {"m": 1')
    argv = ["--figures-dir", str(tmp_path / "fig"), "--equivalence-dir", str(tmp_path), "--only", "equivalence_claim1"]
    assert cli.figures_main(argv) == 1
    err = capsys.readouterr().err
    assert "skipped equivalence_claim1" in err and str(tmp_path / datasets.CLAIM1_FILE) in err


# ---------------------------------------------------------------------------------- wall-clock
def test_wallclock_saving_is_undecided_when_step_times_overlap():
    soap = step_times.StepTimes(median=1.2, low=0.3, high=1.3, n=3)
    adam = step_times.StepTimes(median=0.9, low=0.3, high=1.1, n=4)
    w = step_times.wallclock_saving(0.57, soap, adam)
    assert w.mid == pytest.approx(1 - 0.57 * 1.2 / 0.9)
    assert w.low == pytest.approx(1 - 0.57 * 1.3 / 0.3) and w.high == pytest.approx(1 - 0.57 * 0.3 / 1.1)
    assert not w.decided
    tight = step_times.wallclock_saving(0.5, step_times.StepTimes(1.0, 0.95, 1.05, 3),
                                        step_times.StepTimes(1.0, 0.98, 1.02, 3))
    assert tight.decided and tight.low > 0


def test_efficiency_uses_the_pool_step_times_per_baseline(synthetic_pool, synthetic_scale):
    sd = analysis.study_data("comparison", synthetic_scale, synthetic_pool)
    eff = {e["baseline"]: e for e in analysis.efficiency_table(sd)}
    # synthetic step times: 0.03 s for every SOAP/Shampoo run, 0.01 s for AdamW
    assert eff["AdamW"]["step_times"]["AdamW"]["median"] == pytest.approx(0.01)
    assert eff["Shampoo"]["step_times"]["Shampoo"]["median"] == pytest.approx(0.03)
    assert eff["Shampoo"]["baseline_step_time"] != eff["AdamW"]["baseline_step_time"]
