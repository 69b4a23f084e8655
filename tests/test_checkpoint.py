"""soap_lab.train.checkpoint: an interrupted run resumes and ends with the record of an uninterrupted one (bit-exact
on CPU), from a signal in-process and from a real SIGTERM to the CLI; unusable checkpoints are set aside."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from soap_lab.train import checkpoint, loop as train_mod
from soap_lab.records import store
from soap_lab.train.loop import train
from soap_lab.train.config import TrainConfig

pytest.importorskip("soap_lab.train.models")
pytest.importorskip("soap_lab.train.data")

# What the inputs determine; times and provenance differ between any two runs.
COMPARED = ("step", "loss", "lr", "grad_norm", "val_step", "val_loss")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def cfg(root, **kw):
    base = dict(preset="tiny", optimizer="soap", precondition_frequency=2, steps=12, batch_size=4, seq_len=32,
                eval_every=4, eval_batches=2, checkpoint_every=5, progress=False, out_dir=str(root), experiment="ck")
    base.update(kw)
    return TrainConfig(**base)


def _same_record(a, b):
    for key in COMPARED:
        assert a["metrics"][key] == b["metrics"][key], key
    for key in ("final_val_loss", "final_train_loss", "steps_done", "diverged", "optimizer_state_bytes"):
        assert a["summary"][key] == b["summary"][key], key
    where = ("out_dir", "checkpoint_every")  # where and how often the two runs write, not what they compute
    assert {k: v for k, v in a["config"].items() if k not in where} == \
        {k: v for k, v in b["config"].items() if k not in where}
    assert a["run_id"] == b["run_id"]


def _interrupt_at(monkeypatch, at_step):
    """SIGINT to this process when the loop asks for step ``at_step``'s lr (a deterministic point mid-run)."""
    real = train_mod.lr_at

    def lr_at(step, *args):
        if step == at_step:
            os.kill(os.getpid(), signal.SIGINT)
        return real(step, *args)

    monkeypatch.setattr(train_mod, "lr_at", lr_at)


def test_interrupted_run_resumes_to_the_uninterrupted_record(tmp_path, monkeypatch, capsys):
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    full = train(cfg(tmp_path / "full"))
    config = cfg(tmp_path / "cut")
    ckpt = checkpoint.checkpoint_path(store.record_path(config))
    with monkeypatch.context() as m:
        _interrupt_at(m, 7)
        with pytest.raises(checkpoint.RunInterrupted, match=r"interrupted after step 8/12 .*rerun the same command"):
            train(config)
    assert ckpt.is_file() and not store.record_path(config).exists()
    assert torch.load(ckpt, weights_only=False)["step"] == 8
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    capsys.readouterr()
    resumed = train(config)
    assert "resumed from step 8 of 12" in capsys.readouterr().out  # said even with progress off
    assert not ckpt.exists()  # the record supersedes it
    a, b = store.read_record(full.record_path), store.read_record(resumed.record_path)
    _same_record(a, b)
    assert b["provenance"]["resumed_from_step"] == 8 and a["provenance"]["resumed_from_step"] is None
    assert len(b["metrics"]["time"]) == 12 and b["metrics"]["time"] == sorted(b["metrics"]["time"])


def test_checkpoint_every_is_not_part_of_the_run_id(tmp_path):
    assert store.run_id(cfg(tmp_path, checkpoint_every=3)) == store.run_id(cfg(tmp_path, checkpoint_every=None))
    with pytest.raises(ValueError, match="checkpoint_every"):
        cfg(tmp_path, checkpoint_every=-1).validate()


@pytest.mark.parametrize("content", [b"not a checkpoint", None], ids=["garbage", "other-run"])
def test_unusable_checkpoint_is_set_aside_with_one_line(tmp_path, capsys, content):
    config = cfg(tmp_path, steps=4, optimizer="adamw", precondition_frequency=None)
    ckpt = checkpoint.checkpoint_path(store.record_path(config))
    ckpt.parent.mkdir(parents=True)
    if content is None:
        checkpoint.save(ckpt, {"run_id": "another_run", "step": 2})
    else:
        ckpt.write_bytes(content)
    r = train(config)
    assert r.summary["steps_done"] == 4 and r.provenance["resumed_from_step"] is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ckpt) in err[0] and "unusable checkpoint" in err[0]
    assert ckpt.with_name(ckpt.name + ".corrupt").is_file() and not ckpt.exists()


def test_sigterm_to_the_cli_then_the_same_command_resumes(tmp_path, one_thread_env):
    """A real kill: SIGTERM once the run has written a checkpoint, then the same command again."""
    common = ["train", "--optimizer", "soap", "-f", "2", "--preset", "tiny", "--steps", "40", "--batch-size", "4",
              "--seq-len", "32", "--eval-every", "10", "--eval-batches", "1", "--no-progress", "--experiment", "k"]
    env = one_thread_env

    def cli(root, *extra, **kw):
        return [sys.executable, "-m", "soap_lab", *common, "--runs-root", str(root), *extra]

    ref = subprocess.run(cli(tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    cut = tmp_path / "cut"
    proc = subprocess.Popen(cli(cut, "--checkpoint-every", "2"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list((cut / "k").glob("*.ckpt.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived (very fast machine)")
    assert proc.returncode == 130, err
    assert "interrupted after step" in err and "rerun the same command" in err and "Traceback" not in err
    assert not list((cut / "k").glob("*.json"))
    again = subprocess.run(cli(cut, "--checkpoint-every", "2"), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    (a,), (b,) = list((tmp_path / "ref" / "k").glob("*.json")), list((cut / "k").glob("*.json"))
    _same_record(store.read_record(a), store.read_record(b))
    assert store.read_record(b)["provenance"]["resumed_from_step"] > 0
    assert not list((cut / "k").glob("*.ckpt.pt*"))
