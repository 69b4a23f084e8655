"""soap_lab.train.distributed: the one-process identities outside torchrun, and the same `train` under torchrun (2 CPU
processes, gloo) gives the losses of one process at the same global batch: the optimizers see the all-reduced
gradient, so only reduction round-off differs."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from soap_lab.train import distributed
from soap_lab.records import store, sweep
from soap_lab.train.config import TrainConfig

pytest.importorskip("soap_lab.train.models")
pytest.importorskip("soap_lab.train.data")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_outside_torchrun_every_collective_is_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_distributed("cpu") == (0, 1, 0)
    assert distributed.init_distributed_for(None) == (0, 1, 0)
    assert distributed.broadcast_from_rank0({"skip": True}) == {"skip": True}
    assert distributed.any_rank(True, torch.device("cpu"), 1) is True
    assert distributed.any_rank(False, torch.device("cpu"), 1) is False
    assert distributed.resolve_device("cpu", 0) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert distributed.resolve_device("auto", 0) == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            distributed.resolve_device("cuda", 0)

COMMON = dict(preset="tiny", steps=6, batch_size=8, grad_accum=2, eval_every=3, eval_batches=2, lr=0.01,
              progress=False)


def configs(root, experiment):
    out = [TrainConfig(optimizer="adamw", **COMMON)]
    try:
        import soap_lab.optim.soap  # noqa: F401
    except ImportError:
        pass
    else:
        # SOAP amplifies float32 round-off (the eigenvectors of tiny or repeated eigenvalues of GGᵀ are set by
        # round-off), so two float32 runs that differ only in summation order drift apart within a few steps,
        # DDP or not (changing the thread count does the same). In float64, with every preconditioned factor
        # full rank from the first gradient (max_precond_dim=32 leaves the tiny model's longer sides
        # unrotated), the runs stay within round-off of each other.
        out.append(TrainConfig(optimizer="soap", precondition_frequency=2, dtype="float64",
                               hparams={"max_precond_dim": 32}, **COMMON))
    return [TrainConfig.from_dict({**store.config_dict(c), "out_dir": str(root), "experiment": experiment})
            for c in out]


SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {repo!r}]  # this checkout's soap_lab, whatever an installed one is
from test_distributed import configs, gloo_threads
from soap_lab.records import sweep
from soap_lab.train import distributed
assert distributed.__file__.startswith({repo!r}), distributed.__file__
sweep.run_sweep(configs({root!r}, "ddp"), log=None)
sweep.run_sweep(configs({root!r}, "ddp"), log=None)  # rerun: rank 0 finds the records, all ranks skip
assert distributed.destroy_distributed()  # not at exit: a gloo thread may abort the rank there (see the module)
assert not gloo_threads(), gloo_threads()  # nothing kept the group: its threads are gone before the exit
"""


def test_ddp_matches_single_process(tmp_path, one_thread_env):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=os.path.dirname(__file__), repo=str(store.REPO_ROOT),
                                                root=str(tmp_path))))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=store.REPO_ROOT, env=one_thread_env, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    single = configs(tmp_path, "single")
    sweep.run_sweep(single, log=None)

    ddp = {p.stem: store.read_record(p) for p in (tmp_path / "ddp").glob("*.json")}
    one = {p.stem: store.read_record(p) for p in (tmp_path / "single").glob("*.json")}
    assert sorted(ddp) == sorted(one) == sorted(store.run_id(c) for c in single)  # same configs, same ids
    for rid in ddp:
        a, b = ddp[rid], one[rid]
        assert a["provenance"]["world_size"] == 2 and a["provenance"]["distributed_backend"] == "gloo"
        assert b["provenance"]["world_size"] == 1
        assert a["summary"]["tokens_per_step"] == b["summary"]["tokens_per_step"] == 8 * 32 * 2
        assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], rel=1e-5), rid
        assert a["metrics"]["val_loss"] == pytest.approx(b["metrics"]["val_loss"], rel=1e-5), rid
        assert a["metrics"]["grad_norm"] == pytest.approx(b["metrics"]["grad_norm"], rel=1e-4), rid
        assert a["metrics"]["loss"][-1] < a["metrics"]["loss"][0]


def gloo_threads():
    """The names of this process's gloo threads (a group's worker threads and its transport loop)."""
    tasks = "/proc/self/task"
    names = [open(f"{tasks}/{t}/comm").read().strip() for t in os.listdir(tasks)] if os.path.isdir(tasks) else []
    return [n for n in names if "gloo" in n]


JOIN = """
import sys
sys.path.insert(0, {repo!r})
import torch
import torch.distributed as dist
from soap_lab.train import distributed
distributed._join(backend="gloo", init_method="file://{root}/store", rank=0, world_size=1)
from soap_lab.optim.zero import build_zero_optimizer  # imports torch.distributed.optim (after the join)
sys.path.insert(0, {tests!r})
from test_distributed import gloo_threads
net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 8))
opt = build_zero_optimizer("soap", list(net.parameters()), lr=0.01)
net(torch.randn(4, 8)).sum().backward()
opt.step()
distributed.broadcast_from_rank0(True)
dist.barrier()
assert gloo_threads()
del net, opt
assert distributed.destroy_distributed()
print("left:", gloo_threads())
"""


def test_destroy_distributed_ends_the_gloo_threads(tmp_path, one_thread_env):
    """After DDP and ZeRO, ``destroy_distributed`` really ends the group: its gloo threads are gone, so none can
    abort the process at the interpreter's exit (a fresh interpreter: which torch modules were imported before
    the group was joined is what decides it)."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("thread names are read from /proc")
    script = tmp_path / "join.py"
    script.write_text(JOIN.format(repo=str(store.REPO_ROOT), tests=os.path.dirname(__file__), root=str(tmp_path)))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=one_thread_env, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "left: []" in p.stdout, p.stdout


def test_the_cli_ends_its_process_group(tmp_path, monkeypatch, capsys):
    """A rank must not leave its gloo group to the interpreter's exit: a worker thread still releasing its last
    collective then takes the GIL during finalization and aborts the rank after its work is done (SIGABRT,
    "terminate called without an active exception"; it failed test_ddp_matches_single_process in 2 of 25 runs
    on a loaded 2-core machine). So ``python -m soap_lab`` ends the group itself before returning."""
    import torch.distributed as dist

    from soap_lab.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.destroy_distributed() is False  # no group: nothing to end
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        assert main(["sweep", "--dry-run", "--runs-root", str(tmp_path), "--optimizers", "adamw"]) == 0
        assert not dist.is_initialized()
    finally:
        distributed.destroy_distributed()
    assert "todo" in capsys.readouterr().out


def test_batch_must_split_across_ranks(monkeypatch):
    # no process group is needed to reject a batch that does not split evenly
    monkeypatch.setattr("soap_lab.train.loop.init_distributed_for", lambda config: (0, 3, 0))
    from soap_lab.train.loop import train

    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        train(TrainConfig(preset="tiny", batch_size=8, steps=1, progress=False, save=False))
