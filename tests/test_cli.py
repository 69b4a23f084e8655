"""soap_lab.cli: train, sweep, study, figures and show; clear one-line errors (exit 2, allowed values listed)."""
import subprocess
import sys

import pytest
import torch

from soap_lab.cli import main
from soap_lab.records import store, sweep
from soap_lab.train.config import TrainConfig


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

REPO = store.REPO_ROOT
TINY = ["--preset", "tiny", "--steps", "3", "--batch-size", "4", "--seq-len", "32", "--eval-batches", "1",
        "--eval-every", "0", "--no-progress"]


def run_cli(env, *args):
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "soap_lab", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=120)


def test_unknown_optimizer_exits_2_listing_allowed_names(one_thread_env):
    # -X importtime lists every module imported on the way to the error (on stderr)
    p = run_cli(one_thread_env, "train", "--optimizer", "adam")
    assert p.returncode == 2
    assert "invalid choice: 'adam'" in p.stderr and "soap_factorized_one_sided" in p.stderr
    assert "Traceback" not in p.stderr and "usage:" not in p.stderr  # one line, not argparse's whole usage
    assert len([ln for ln in p.stderr.splitlines() if not ln.startswith("import time:")]) == 1
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in p.stderr.splitlines()
                if line.startswith("import time:")}
    assert "soap_lab" in imported and "torch" in imported
    assert not imported & {"papermill", "seaborn", "matplotlib", "pandas"}  # the GPU machine lacks some


@pytest.mark.parametrize("args, messages", [
    (["train", "--preset", "huge"], ["invalid choice: 'huge'", "660m"]),
    (["train", "--corpus", "c5"], ["unknown corpus 'c5'", "'austen', 'shakespeare'", "hf:NAME_OR_PATH"]),
    (["train", "--model", "n_layers=3"], ["unknown model fields ['n_layers']; allowed: vocab_size, seq_len"]),
    (["train", "--seq-len", "64"], ["seq_len 64 exceeds the model's context length 32"]),
    (["train", "--optimizer", "adamw", "-f", "10"], ["takes no precondition_frequency", "soap_one_sided"]),
    (["train", "--precision", "fp8"], ["invalid choice: 'fp8'", "bf16"]),
    (["sweep", "--shard", "4/4"], ["bad shard spec '4/4'", "0 <= i < N"]),
    (["sweep", "--shard", "one/4"], ["bad shard spec 'one/4'"]),
    (["sweep", "--optimizers", "adamw", "lion"], ["invalid choice: 'lion'", "eigen_adafactor"]),
    (["sweep", "--hparam", "lion:beta=0.9"], ["unknown optimizer 'lion'; allowed: adamw"]),
    (["sweep", "--budget-fractions", "1.5"], ["budget_fraction must be in (0, 1]"]),
    (["train", "--hparam", "foo=1"], ["optimizer 'adamw' takes no keyword foo; its keywords: lr, betas"]),
    (["train", "--optimizer", "soap", "--hparam", "exponent=0.5"], ["takes no keyword exponent", "refresh"]),
    (["train", "--model", "n_layer=0"], ["GPTConfig.n_layer must be >= 1, got 0"]),
    (["train", "--checkpoint-every", "-1"], ["checkpoint_every must be >= 0"]),
    (["train", "--lr", "nan"], ["lr must be a finite number > 0, got nan"]),
    (["train", "--optimizer", "shampoo", "--hparam", "exponent=abc"], ["optimizer 'shampoo' rejects its values",
                                                                        "exponent='abc'"]),
    (["study", "run", "nope"], ["unknown study 'nope'; allowed: equivalence, lr_sweep"]),
    (["study", "run", "frequency", "--set", "steps=2.5"], ["steps must be an integer >= 1, got 2.5"]),
    (["study", "report", "--scale", "tpu"], ["invalid choice: 'tpu'"]),
    (["figures", "--only", "nope"], ["unknown figure 'nope'; allowed: equivalence_claim1"]),
] + ([] if torch.cuda.is_available() else [
    (["train", "--device", "cuda"], ["device 'cuda' asked for but CUDA is not available here"]),
]))
def test_bad_values_exit_2(capsys, args, messages):
    pytest.importorskip("soap_lab.train.models")
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    for message in messages:
        assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "usage:" not in err


def test_a_diverging_run_is_recorded_and_exits_3(tmp_path, capsys):
    pytest.importorskip("soap_lab.train.models")
    code = main(["train", "--lr", "1e6", "--experiment", "div", "--runs-root", str(tmp_path), *TINY])
    assert code == 3
    err = capsys.readouterr().err
    assert "run diverged: non-finite loss at step" in err and "recorded with diverged=true" in err
    assert "Traceback" not in err
    (path,) = (tmp_path / "div").glob("*.json")
    assert store.read_record(path)["summary"]["diverged"] is True
    assert main(["train", "--lr", "1e6", "--experiment", "div2", "--runs-root", str(tmp_path), "--no-save", *TINY]) == 3
    assert "nothing written (--no-save)" in capsys.readouterr().err and not (tmp_path / "div2").exists()


def test_help_shows_defaults_and_the_program_name(capsys, monkeypatch):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "(default: 0.003)" in out and "peak learning rate" in out and "python -m soap_lab train" in out
    assert "(default float32)" not in out and "(default: float32)" not in out  # each default said once
    assert "(default: None)" not in out  # "unset: ..." says what an unset option means
    monkeypatch.setattr(sys, "argv", ["/usr/bin/soap-lab", "--help"])
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: soap-lab") and "``" not in out


def test_presets_are_listed_on_error(capsys):
    models = pytest.importorskip("soap_lab.train.models")
    with pytest.raises(SystemExit):
        main(["train", "--preset", "huge"])
    err = capsys.readouterr().err
    assert all(name in err for name in models.PRESETS)


def test_figures_without_records_exit_1_naming_the_command(tmp_path, capsys):
    code = main(["figures", "--runs-root", str(tmp_path / "runs"), "--figures-dir", str(tmp_path / "fig"),
                 "--only", "frequency", "--scales", "cpu"])
    assert code == 1 and "python -m soap_lab study run frequency --scale cpu" in capsys.readouterr().err


def test_study_list_and_report_read_the_committed_records(capsys):
    assert main(["study", "list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("equivalence") and "frequency" in out and "muon" in out
    assert main(["study", "report", "frequency", "--scale", "cpu_freq"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("== frequency: Does SOAP degrade")
    first = out.splitlines()[1]
    assert first.split("  ")[0] in ("reproduced", "contradicted", "inconclusive at this power")  # verdicts first


def test_a_default_train_run_leaves_the_tree_clean():
    r = subprocess.run(["git", "check-ignore", "-q", "data/runs/default/adamw_lr0.003_bs32_s0_budget1.0_x.json"],
                       cwd=REPO)
    assert r.returncode == 0  # ignored: `train` without --experiment writes there


def test_train_command_writes_a_record(tmp_path, capsys):
    pytest.importorskip("soap_lab.train.models")
    assert main(["train", "--experiment", "cli", "--runs-root", str(tmp_path), "--lr", "0.01", *TINY]) == 0
    files = list((tmp_path / "cli").glob("*.json"))
    assert len(files) == 1 and files[0].stem.startswith("adamw_lr0.01_bs")
    assert files[0].stem in capsys.readouterr().out
    rec = store.read_record(files[0])
    assert rec["config"]["steps"] == 3 and rec["summary"]["steps_done"] == 3


def test_sweep_shards_cover_the_grid(tmp_path, capsys):
    pytest.importorskip("soap_lab.train.models")
    grid = ["--experiment", "g", "--runs-root", str(tmp_path), "--lrs", "1e-3", "3e-3",
            "--budget-fractions", "0.5", "1.0", *TINY]
    assert main(["sweep", *grid, "--shard", "0/3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "shard 0/3: 2 runs" in out and out.count("todo") == 2
    for i in range(3):
        assert main(["sweep", *grid, "--shard", f"{i}/3"]) == 0
    names = sorted(p.stem for p in (tmp_path / "g").glob("*.json"))
    assert len(names) == 4
    base = TrainConfig(preset="tiny", steps=3, batch_size=4, seq_len=32, eval_batches=1, eval_every=0)
    configs = sweep.grid(base, lrs=[1e-3, 3e-3], budget_fractions=[0.5, 1.0])
    assert names == sorted(store.run_id(c) for c in configs)
    capsys.readouterr()
    assert main(["sweep", *grid]) == 0  # everything done: all skipped
    assert capsys.readouterr().out.count("skip") == 4
