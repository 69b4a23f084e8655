"""soap_lab.rerun: ``make ablations`` runs each study through its notebook (papermill), or directly through
soap_lab without papermill; shards leave the scale-independent studies to shard 0."""
import json

import pytest

from soap_lab import ablations, cli, notebook, rerun


def test_every_study_has_its_notebook():
    assert set(rerun.STUDY_NOTEBOOKS) == set(ablations.STUDIES) | {"equivalence", "overhead"}
    assert all((rerun.NOTEBOOKS_DIR / nb).is_file() for nb in rerun.STUDY_NOTEBOOKS.values())


def test_shards_leave_the_scale_independent_studies_to_shard_0(tmp_path, capsys):
    sc = notebook.notebook_scale("cpu", overrides={"preset": "tiny"})
    assert rerun.run_ablations(sc, "cpu", ["equivalence", "overhead"], shard="1/2", runs_root=str(tmp_path),
                               no_papermill=True) == 0
    assert capsys.readouterr().out.splitlines() == ["equivalence: left to shard 0", "overhead: left to shard 0"]


def test_without_papermill_every_study_runs_directly_in_order(tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(rerun, "_run_direct", lambda study, sc, root, shard, log: ran.append((study, root, shard)))
    gpu = notebook.notebook_scale("gpu", device="cpu", overrides={"preset": "tiny"})
    assert rerun.run_ablations(gpu, "gpu", None, shard="0/2", runs_root=str(tmp_path), no_papermill=True) == 0
    assert [r[0] for r in ran] == [s for s in rerun.STUDY_NOTEBOOKS if s != "equivalence"]
    assert all(r[1:] == (str(tmp_path), "0/2") for r in ran)
    out = capsys.readouterr().out
    assert "equivalence: scale-independent (CPU, float64); run it with --scale cpu" in out
    assert f"== lr_sweep (scale {gpu.name}, device cpu, shard 0/2)" in out


def test_main_ablations_runs_a_study_through_its_notebook(smoke_pool, smoke_overrides, tmp_path):
    pytest.importorskip("papermill")
    root, _ = smoke_pool
    argv = ["--scale", "cpu", "--study", "lr_sweep", "--runs-root", str(root), "--figures-dir", str(tmp_path / "fig"),
            "--executed-dir", str(tmp_path / "executed"), "--scale-overrides", json.dumps(smoke_overrides),
            "--torch-threads", "1"]
    assert cli.ablations_main(argv) == 0
    sc = notebook.notebook_scale("cpu", overrides=smoke_overrides)  # overridden: named cpu-<hash>
    assert sc.name.startswith("cpu-") and (tmp_path / "executed" / f"lr_sweep_{sc.name}.ipynb").exists()
    assert (tmp_path / "fig" / "lr_sweep.png").exists()
    # without papermill (the GPU machine): the same study through soap_lab directly, nothing to retrain here
    assert cli.ablations_main(argv + ["--no-papermill"]) == 0
