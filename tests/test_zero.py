"""ZeRO-1 (soap_lab.optim.zero): 2 gloo processes on CPU give the single-process trajectory, and checkpoints
move both ways between a ZeRO run and a single process.

The tight comparisons (1e-10 relative, float64) run on well-posed problems only: square layers, or non-square
ones whose long side max_precond_dim leaves unrotated, with gradients G_t = U (S ⊙ Z_t) Vᵀ (fixed orthogonal U, V,
Gaussian Z_t, geometric row/column scales 1.5 → 0.5), so every preconditioned factor is full rank with separated
eigenvalues from the first call. Each comparison also shows that it is well posed: the single-process reference
rerun with every input (initial parameters and gradients) moved by one ulp moves far less than the tolerance.

All distributed work runs once, in one pair of forked processes (module fixture ``runs``); the tests read
what it wrote.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from soap_lab.optim import build_optimizer
from soap_lab.optim import cost
from soap_lab.optim.zero import build_zero_optimizer, consolidated_state_dict, local_optimizer

# Two of most shapes, so that buckets form on both ranks; (8, 40) and (40, 8) rotate their short side only.
SHAPES = [(12, 12), (12, 12), (8, 8), (8, 8), (8, 8), (8, 40), (8, 40), (40, 8), (12,), (40,)]
COMMON = dict(precondition_frequency=2, max_precond_dim=16)
OPTIMIZERS = {
    "soap": dict(lr=0.02, weight_decay=0.01, **COMMON),
    "shampoo": dict(lr=0.02, weight_decay=0.01, **COMMON),  # eigh refresh from step f on, Adam grafting
    "eigen_adafactor": dict(lr=0.02, weight_decay=0.01, **COMMON),
    "soap_groups": dict(lr=0.02, weight_decay=0.01, **COMMON),  # SOAP with two parameter groups (see build)
}
STEPS, CKPT = 8, 5  # calls to step(); the checkpoint is taken after CKPT calls (mid-way between refreshes)
TOL = 1e-10


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ----------------------------------------------------------------------------------------------------------
# The problem and its single-process reference
# ----------------------------------------------------------------------------------------------------------
def _geometric(n: int) -> torch.Tensor:
    return torch.logspace(math.log10(1.5), math.log10(0.5), n, dtype=torch.float64)


def problem(ulp: bool = False):
    """(initial parameters, gradients(t)) in float64; ``ulp``: every value moved one ulp away from zero."""
    gen = torch.Generator().manual_seed(0)
    bases, init = [], []
    for s in SHAPES:
        init.append(torch.randn(s, generator=gen, dtype=torch.float64))
        if len(s) == 2:
            U = torch.linalg.qr(torch.randn(s[0], s[0], generator=gen, dtype=torch.float64)).Q
            V = torch.linalg.qr(torch.randn(s[1], s[1], generator=gen, dtype=torch.float64)).Q
            bases.append((U, torch.outer(_geometric(s[0]), _geometric(s[1])), V))
        else:
            bases.append((None, _geometric(s[0]), None))
    nudge = (lambda x: torch.nextafter(x, x.sign() * math.inf)) if ulp else (lambda x: x)

    def gradients(t: int):
        g = torch.Generator().manual_seed(1000 + t)
        out = []
        for s, (U, S, V) in zip(SHAPES, bases):
            z = torch.randn(s, generator=g, dtype=torch.float64) * S
            out.append(nudge(U @ z @ V.T if U is not None else z))
        return out

    return [nudge(x) for x in init], gradients


def build(name: str, params, zero: bool = False, **kw):
    """The optimizer ``name`` of OPTIMIZERS over ``params``, plain or under ZeRO."""
    make = build_zero_optimizer if zero else build_optimizer
    if name == "soap_groups":  # the second group: other lr, no weight decay
        groups = [{"params": params[:5]}, {"params": params[5:], "lr": 0.005, "weight_decay": 0.0}]
        return make("soap", groups, **OPTIMIZERS[name], **kw)
    return make(name, params, **OPTIMIZERS[name], **kw)


def run_steps(opt, params, gradients, start: int, stop: int) -> None:
    for t in range(start, stop):
        for p, g in zip(params, gradients(t)):
            p.grad = g.clone()
        opt.step()


def single(name: str, stop: int = STEPS, ulp: bool = False, resume=None):
    """Final parameters of one process; ``resume=(params, state_dict)`` continues a run saved after CKPT calls."""
    init, gradients = problem(ulp)
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = build(name, params)
    start = 0
    if resume is not None:
        with torch.no_grad():
            for p, x in zip(params, resume[0]):
                p.copy_(x)
        opt.load_state_dict(resume[1])
        start = CKPT
    run_steps(opt, params, gradients, start, stop)
    return [p.detach().clone() for p in params], opt


def rel(a, b) -> float:
    """Largest relative difference over the parameters (Frobenius norms)."""
    return max(float((x - y).norm() / y.norm()) for x, y in zip(a, b))


# ----------------------------------------------------------------------------------------------------------
# The distributed runs (2 processes, gloo)
# ----------------------------------------------------------------------------------------------------------
def _worker(rank: int, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=2)
    out = {}
    for name in OPTIMIZERS:
        init, gradients = problem()
        # A ZeRO run from the start, consolidated after CKPT calls.
        params = [torch.nn.Parameter(x.clone()) for x in init]
        opt = build(name, params, zero=True)
        run_steps(opt, params, gradients, 0, CKPT)
        ckpt = consolidated_state_dict(opt)
        ckpt_params = [p.detach().clone() for p in params]
        run_steps(opt, params, gradients, CKPT, STEPS)
        # A ZeRO run resumed from the single process's checkpoint (written by the parent).
        saved = torch.load(f"{root}/single_{name}.pt")
        params2 = [torch.nn.Parameter(x.clone()) for x in saved["params"]]
        opt2 = build(name, params2, zero=True)
        opt2.load_state_dict(saved["state"])
        run_steps(opt2, params2, gradients, CKPT, STEPS)
        numel_opt = build(name, [torch.nn.Parameter(x.clone()) for x in init], zero=True, balance="numel")
        out[name] = dict(
            final=[p.detach().clone() for p in params], ckpt=ckpt, ckpt_params=ckpt_params,
            resumed=[p.detach().clone() for p in params2], partition=opt.partition,
            numel_partition=numel_opt.partition, local_params=len(local_optimizer(opt).state),
            saved_untouched=all(v is not None for v in saved["state"]["state"].values()),
        )
    out["nonfinite"] = _nonfinite(rank)
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))  # what torchrun sets
    from soap_lab.train.loop import train

    res = train(train_config(root, "zero", zero=True))
    out["train"] = dict(summary=res.summary, provenance=res.provenance, metrics=res.metrics, run_id=res.run_id)
    torch.save(out, f"{root}/rank{rank}.pt")
    dist.destroy_process_group()


def train_config(root, experiment: str, **kw):
    """A tiny float64 SOAP run (as tests/test_ddp.py: full-rank factors, so round-off stays round-off)."""
    from soap_lab.train.loop import TrainConfig

    return TrainConfig(optimizer="soap", precondition_frequency=2, dtype="float64", hparams={"max_precond_dim": 32},
                       preset="tiny", steps=4, batch_size=8, eval_every=2, eval_batches=1, lr=0.01, progress=False,
                       out_dir=str(root), experiment=experiment, **kw)


def _nonfinite(rank: int) -> dict:
    """A NaN in the gradient of a parameter that rank 1 steps: both ranks raise (or both skip) together."""
    res = {}
    for policy in ("raise", "skip"):
        params = [torch.nn.Parameter(torch.ones(s, dtype=torch.float64)) for s in SHAPES]
        opt = build_zero_optimizer("soap", params, on_nonfinite=policy, **OPTIMIZERS["soap"])
        for p in params:
            p.grad = torch.ones_like(p)
        params[opt.partition[1][0]].grad[0] = math.nan
        try:
            opt.step()
            res[policy] = f"skipped {local_optimizer(opt).skipped_steps}"
        except FloatingPointError as e:
            res[policy] = str(e)
        res[policy + "_unchanged"] = all(bool((p == 1).all()) for p in params)
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread_module):
    root = tmp_path_factory.mktemp("zero")
    ref, moved = {}, {}
    for name in OPTIMIZERS:
        at_ckpt, opt = single(name, stop=CKPT)
        torch.save({"params": at_ckpt, "state": opt.state_dict()}, root / f"single_{name}.pt")
        ref[name] = single(name)[0]
        moved[name] = rel(single(name, ulp=True)[0], ref[name])  # well posed: one ulp in, round-off out
    # fork: the children start in milliseconds instead of importing torch again (≈ 20 s on a loaded 2-core box)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(str(root),), nprocs=2, join=True, start_method=method)
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return ref, moved, ranks, root


# ----------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_zero_equals_single_process(runs, name):
    ref, moved, ranks, _ = runs
    assert moved[name] < TOL / 100, moved  # well posed (an ill-posed layout moves by ~1e-2 here)
    zero = ranks[0][name]["final"]
    assert rel(zero, ref[name]) < TOL
    assert all(torch.equal(a, b) for a, b in zip(zero, ranks[1][name]["final"]))  # the broadcast: same bits
    assert rel(zero, problem()[0]) > 0.05  # it moved


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_rank_keeps_state_for_its_share_only(runs, name):
    _, _, ranks, _ = runs
    parts = ranks[0][name]["partition"]
    assert sorted(i for p in parts for i in p) == list(range(len(SHAPES)))
    assert all(parts) and ranks[1][name]["partition"] == parts
    assert [ranks[r][name]["local_params"] for r in range(2)] == [len(p) for p in parts]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_single_process_resumes_from_consolidated_checkpoint(runs, name):
    ref, moved, ranks, _ = runs
    assert moved[name] < TOL / 100, moved
    assert ranks[1][name]["ckpt"] is None  # consolidated on rank 0 only
    ckpt = ranks[0][name]["ckpt"]
    assert sorted(ckpt["state"]) == list(range(len(SHAPES)))
    resumed, _ = single(name, resume=(ranks[0][name]["ckpt_params"], ckpt))
    assert rel(resumed, ref[name]) < TOL


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_zero_resumes_from_single_process_checkpoint(runs, name):
    ref, moved, ranks, _ = runs
    assert moved[name] < TOL / 100, moved
    assert rel(ranks[0][name]["resumed"], ref[name]) < TOL
    assert ranks[0][name]["saved_untouched"]  # load_state_dict left the caller's dict alone


def test_torch_default_partition_is_the_numel_greedy_one(runs):
    _, _, ranks, _ = runs
    expected = cost.numel_partition([math.prod(s) for s in SHAPES], 2)
    assert ranks[0]["soap"]["numel_partition"] == expected


def test_nonfinite_gradient_stops_every_rank_alike(runs):
    _, _, ranks, _ = runs
    for r in range(2):
        res = ranks[r]["nonfinite"]
        assert "non-finite gradient" in res["raise"] and "rank 1's share" in res["raise"], res
        assert res["skip"] == "skipped 1", res
        assert res["raise_unchanged"] and res["skip_unchanged"]


def test_train_with_zero_gives_the_single_process_losses(runs):
    pytest.importorskip("soap_lab.train.models")
    from soap_lab.records import store
    from soap_lab.train.loop import train

    _, _, ranks, root = runs
    one = train(train_config(root, "single"))
    z0, z1 = ranks[0]["train"], ranks[1]["train"]
    assert z0["run_id"] == one.run_id  # zero is not part of the run id
    assert z0["provenance"]["world_size"] == 2 and z0["provenance"]["zero_estimated_imbalance"] >= 1.0
    assert store.read_record(root / "zero" / f"{one.run_id}.json")["config"]["zero"] is True
    # As tests/test_ddp.py: the gradients' all-reduce changes the summation order, hence 1e-5.
    assert z0["metrics"]["loss"] == pytest.approx(one.metrics["loss"], rel=1e-5)
    assert z0["metrics"]["val_loss"] == pytest.approx(one.metrics["val_loss"], rel=1e-5)
    full = one.summary["optimizer_state_bytes"]
    shares = [z["summary"]["optimizer_state_bytes"] for z in (z0, z1)]
    assert all(0 < s < full for s in shares) and sum(shares) == full, (shares, full)


def test_train_refuses_zero_without_a_process_group(tmp_path):
    pytest.importorskip("soap_lab.train.models")
    from soap_lab.train.loop import train

    with pytest.raises(ValueError, match="zero=True needs a process group"):
        train(train_config(tmp_path, "x", zero=True))


def test_zero_needs_a_process_group():
    params = [torch.nn.Parameter(torch.zeros(4, 4))]
    with pytest.raises(ValueError, match="needs an initialized torch.distributed process group"):
        build_zero_optimizer("soap", params)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_zero_optimizer("nope", params)


def test_cli_flag_and_its_one_line_error(monkeypatch, capsys):
    from soap_lab.cli import _config, build_parser, main

    args = build_parser().parse_args(["train", "--zero"])
    assert _config(args, {}).zero is True
    assert _config(build_parser().parse_args(["train"]), {}).zero is None
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["train", "--zero", "--no-save", "--steps", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: --zero needs a process group: run under torchrun with --nproc_per_node > 1" in err[0]
