"""python -m soap_lab: train and sweep commands, clear errors (exit code 2, allowed values listed)."""
import os
import subprocess
import sys

import pytest

from soap_lab import results
from soap_lab.__main__ import main
from soap_lab.train import TrainConfig

REPO = results.REPO_ROOT
TINY = ["--preset", "tiny", "--steps", "3", "--batch-size", "4", "--seq-len", "32", "--eval-batches", "1",
        "--eval-every", "0", "--no-progress"]


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "soap_lab", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=120)


def test_unknown_optimizer_exits_2_listing_allowed_names():
    p = run_cli("train", "--optimizer", "adam")
    assert p.returncode == 2
    assert "invalid choice: 'adam'" in p.stderr and "soap_factorized_one_sided" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "huge"], "invalid choice: 'huge'"),
    (["train", "--corpus", "c5"], "unknown corpus 'c5'; allowed: austen, shakespeare"),
    (["train", "--optimizer", "adamw", "-f", "10"], "takes no precondition_frequency"),
    (["train", "--precision", "fp8"], "invalid choice: 'fp8'"),
    (["sweep", "--shard", "4/4"], "bad shard spec '4/4'"),
    (["sweep", "--shard", "one/4"], "bad shard spec 'one/4'"),
    (["sweep", "--optimizers", "adamw", "lion"], "invalid choice: 'lion'"),
    (["sweep", "--budget-fractions", "1.5"], "budget_fraction must be in (0, 1]"),
])
def test_bad_values_exit_2(capsys, args, message):
    pytest.importorskip("soap_lab.models")
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_presets_are_listed_on_error(capsys):
    models = pytest.importorskip("soap_lab.models")
    with pytest.raises(SystemExit):
        main(["train", "--preset", "huge"])
    err = capsys.readouterr().err
    assert all(name in err for name in models.PRESETS)


def test_stub_commands(capsys):
    assert main(["figures"]) == 1 and "not yet implemented" in capsys.readouterr().err


def test_cli_imports_no_notebook_or_plotting_stack():
    code = ("import sys, soap_lab.__main__ as m; m.build_parser(); "
            "bad = [x for x in ('papermill', 'seaborn', 'matplotlib', 'pandas') if x in sys.modules]; "
            "assert not bad, bad")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr


def test_train_command_writes_a_record(tmp_path, capsys):
    pytest.importorskip("soap_lab.models")
    assert main(["train", "--experiment", "cli", "--runs-root", str(tmp_path), "--lr", "0.01", *TINY]) == 0
    files = list((tmp_path / "cli").glob("*.json"))
    assert len(files) == 1 and files[0].stem.startswith("adamw_lr0.01_s0_b1.0_")
    assert files[0].stem in capsys.readouterr().out
    rec = results.read_record(files[0])
    assert rec["config"]["steps"] == 3 and rec["summary"]["steps_done"] == 3


def test_sweep_shards_cover_the_grid(tmp_path, capsys):
    pytest.importorskip("soap_lab.models")
    grid = ["--experiment", "g", "--runs-root", str(tmp_path), "--lrs", "1e-3", "3e-3", "--seeds", "0", "1",
            "--budget-fractions", "0.5", "1.0", *TINY]
    assert main(["sweep", *grid, "--shard", "0/3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "shard 0/3: 3 runs" in out and out.count("todo") == 3
    for i in range(3):
        assert main(["sweep", *grid, "--shard", f"{i}/3"]) == 0
    names = sorted(p.stem for p in (tmp_path / "g").glob("*.json"))
    assert len(names) == 8
    base = TrainConfig(preset="tiny", steps=3, batch_size=4, seq_len=32, eval_batches=1, eval_every=0)
    configs = results.grid(base, lrs=[1e-3, 3e-3], seeds=[0, 1], budget_fractions=[0.5, 1.0])
    assert names == sorted(results.run_id(c) for c in configs)
    capsys.readouterr()
    assert main(["sweep", *grid]) == 0  # everything done: all skipped
    assert capsys.readouterr().out.count("skip") == 8
