"""SOAP under ZeRO-1 vs plain data parallelism: optimizer step time, state and broadcast bytes per rank.

N processes (forked, gloo on CPU, one thread each by default) hold the same parameters and, at every step,
the same open-loop gradients (as after DDP's all-reduce; ``step_time.open_loop_gradients``). Three ways to
run the optimizer, each on its own copy of the parameters, interleaved step by step (the order rotates):

    ddp         plain DDP: every rank runs the whole SOAP step (redundant), nothing is communicated
    zero        soap_lab.optim.zero.ZeroOptimizer: each rank steps its cost-balanced share, then every share
                is broadcast (torch's ZeroRedundancyOptimizer)
    zero_numel  the same with torch's own partition (by parameter count)

Every step starts after a barrier. Per rank and step: the whole ``step()`` (for ZeRO: its share, then the
broadcasts, which wait for the slowest rank) and the local part alone (a step hook on the rank's optimizer).
Timing rules as ``step_time.py``: f + 1 untimed calls, then windows of f steps (one refresh each); ms are
medians over windows of the window means.

    python benchmarks/zero.py                        # gpt10m, f=10, 2 processes x 1 thread, 1 window
    python benchmarks/zero.py --steps 20 --out data/bench
    python benchmarks/zero.py --params tiny --f 2 --steps 2          # the smoke test's size
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as step_time.py

import torch  # noqa: E402

from step_time import PARAM_SETS, gpt_shapes, open_loop_gradients, provenance, report  # noqa: E402

MODES = ("ddp", "zero", "zero_numel")
HP = dict(lr=3e-3, betas=(0.95, 0.95), eps=1e-8, weight_decay=0.01, max_precond_dim=10000)


def _build(mode: str, params: List[torch.nn.Parameter], f: int):
    from soap_lab.optim import build_optimizer
    from soap_lab.optim.zero import build_zero_optimizer

    if mode == "ddp":
        return build_optimizer("soap", params, precondition_frequency=f, **HP)
    return build_zero_optimizer("soap", params, balance="cost" if mode == "zero" else "numel",
                                precondition_frequency=f, **HP)


def worker(rank: int, args, tmp: str) -> None:
    """One rank: run every mode, gather the timings on rank 0, which writes ``<tmp>/result.json``."""
    import torch.distributed as dist

    from soap_lab.optim.zero import local_optimizer
    from soap_lab.train.loop import optimizer_state_bytes

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=args.world)
    world = dist.get_world_size()
    shapes = [s for _, s in gpt_shapes(**PARAM_SETS[args.params])]
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    opts, params, local_t = {}, {}, {}
    for mode in MODES:
        params[mode] = [torch.nn.Parameter(x.clone()) for x in init]
        opts[mode] = _build(mode, params[mode], args.f)
        local = local_optimizer(opts[mode])
        local.register_step_pre_hook(lambda *_, m=mode: local_t.__setitem__(m, time.perf_counter()))
        local.register_step_post_hook(lambda *_, m=mode: local_t.__setitem__(m, time.perf_counter() - local_t[m]))
    gradients = open_loop_gradients(shapes, torch.device("cpu"))
    warmup = args.f + 1
    times: Dict[str, Dict[str, List[float]]] = {m: {"step": [], "local": []} for m in MODES}
    t_start = time.perf_counter()
    for t in range(warmup + args.steps):
        grads = gradients(t)
        for mode in MODES:
            for p, g in zip(params[mode], grads):
                p.grad = g.clone()
        k = t % len(MODES)
        for mode in MODES[k:] + MODES[:k]:
            dist.barrier()
            t0 = time.perf_counter()
            opts[mode].step()
            dt = time.perf_counter() - t0
            if t >= warmup:
                times[mode]["step"].append(dt)
                times[mode]["local"].append(local_t[mode])
        if args.verbose and rank == 0:
            print(f"step {t + 1}/{warmup + args.steps} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
    mine = {m: {"times": times[m], "state_bytes": optimizer_state_bytes(opts[m]),
                "param_bytes": sum(p.numel() * p.element_size() for p in local_optimizer(opts[m]).param_groups[0]["params"]),
                "estimated_imbalance": getattr(opts[m], "estimated_imbalance", lambda: None)()} for m in MODES}
    same = all(torch.equal(a, b) for a, b in zip(params["zero"], params["zero_numel"]))
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if rank == 0:
        res = summarize(args, gathered, shapes, time.perf_counter() - t_start)
        res["zero_partitions_same_params"] = same
        Path(tmp, "result.json").write_text(json.dumps(res))
    dist.destroy_process_group()


def summarize(args, per_rank: List[Dict], shapes, wall_s: float) -> Dict:
    """Per mode and rank: window medians of the step and its local part; state and broadcast bytes; ratios."""
    f, world = args.f, len(per_rank)
    windows = max(1, args.steps // f)

    def med(xs):  # median over windows of the window means
        return 1e3 * statistics.median(statistics.fmean(xs[i * f:(i + 1) * f] if args.steps >= f else xs)
                                       for i in range(windows))

    rows = []
    for mode in MODES:
        local = [med(r[mode]["times"]["local"]) for r in per_rank]
        step = [med(r[mode]["times"]["step"]) for r in per_rank]
        state = [r[mode]["state_bytes"] for r in per_rank]
        sent = [0 if mode == "ddp" else r[mode]["param_bytes"] for r in per_rank]
        rows.append({
            "mode": mode, "local_ms": local, "step_ms": step, "step_ms_max": max(step),
            "local_imbalance": max(local) / statistics.fmean(local),
            "estimated_imbalance": per_rank[0][mode]["estimated_imbalance"],
            "state_bytes": state, "broadcast_bytes_sent": sent, "broadcast_bytes_per_step": sum(sent),
        })
    ddp = rows[0]
    for r in rows:
        r["x_ddp_step"] = r["step_ms_max"] / ddp["step_ms_max"]
        r["x_ddp_state_max"] = max(r["state_bytes"]) / max(ddp["state_bytes"])
    n_params = sum(torch.Size(s).numel() for s in shapes)
    return {"params": args.params, "f": f, "device": "cpu", "world_size": world, "threads_per_rank": args.threads or 1,
            "n_params": n_params, "param_bytes": 4 * n_params, "warmup_calls": f + 1, "timed_steps": args.steps,
            "windows": windows, "rows": rows, "wall_s": wall_s, "provenance": provenance()}


def table(res: Dict) -> str:
    w = res["world_size"]
    mb = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
    lines = [
        f"SOAP under ZeRO-1 vs plain DDP, {res['params']} ({res['n_params'] / 1e6:.2f}M params, "
        f"{mb(res['param_bytes'])} MiB), {w} processes x {res['threads_per_rank']} thread(s), gloo on CPU, "
        f"f={res['f']}, {res['timed_steps']} timed steps after {res['warmup_calls']} warmup calls, "
        f"median of {res['windows']} window(s) of f steps",
        "",
        "| mode | step ms (slowest rank) | x ddp | local ms per rank | local max/mean | est. imbalance | "
        "state MiB per rank | x ddp (max) | broadcast MiB/step (per rank sent) |",
        "|---|---:|---:|---|---:|---:|---|---:|---|",
    ]
    for r in res["rows"]:
        est = "-" if r["estimated_imbalance"] is None else f"{r['estimated_imbalance']:.3f}"
        lines.append(
            f"| {r['mode']} | {r['step_ms_max']:.1f} | {r['x_ddp_step']:.2f} | "
            f"{' / '.join(f'{x:.1f}' for x in r['local_ms'])} | {r['local_imbalance']:.3f} | {est} | "
            f"{' / '.join(mb(b) for b in r['state_bytes'])} | {r['x_ddp_state_max']:.2f} | "
            f"{mb(r['broadcast_bytes_per_step'])} ({' / '.join(mb(b) for b in r['broadcast_bytes_sent'])}) |")
    lines += [
        "",
        "step ms: the whole optimizer.step() after a barrier (ZeRO: local share + broadcasts, which wait for the "
        "slowest rank), slowest rank; local ms: the rank's own optimizer step alone (step hooks); est. imbalance: "
        "the cost model's estimate of the step time over a perfect split (soap_lab.optim.cost.imbalance); "
        "state: tensors in the rank's optimizer state (work buffers excluded); broadcast: parameter bytes each "
        "rank sends to the others per step (every parameter once, from its owner). Gradients: open loop, the "
        "same on every rank (as after DDP's all-reduce, which is not timed).",
        f"ZeRO with either partition gives the same parameters (bitwise): {res.get('zero_partitions_same_params')}.",
        "Provenance: " + ", ".join(f"{k} {v}" for k, v in res["provenance"].items()) + f"; wall {res['wall_s']:.0f} s.",
    ]
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="gpt10m", choices=sorted(PARAM_SETS))
    p.add_argument("--f", type=int, default=10, help="precondition frequency")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: one window of f)")
    p.add_argument("--world", type=int, default=2, help="processes (ranks)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--out", default=None, help="directory: write zero_<params>_f<f>.json and .md there")
    p.add_argument("--tag", default="", help="suffix for the output files' names")
    p.add_argument("--verbose", action="store_true", help="progress on stderr")
    args = p.parse_args(argv)
    if args.world < 2:
        p.error("--world must be >= 2 (ZeRO with one process has nothing to divide)")
    if args.steps is None:
        args.steps = args.f
    return args


def main(argv=None) -> int:
    args = parse(argv)
    import torch.multiprocessing as mp

    import soap_lab.optim.zero  # noqa: F401  (imported once, here, rather than by every rank)
    import soap_lab.train.loop  # noqa: F401

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # before forking: the ranks inherit it
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # fork: the ranks start at once, with this process's imports (a fresh interpreter per rank spends
            # seconds importing torch); the process group meets through a file in tmp.
            mp.start_processes(worker, args=(args, tmp), nprocs=args.world, join=True, start_method="fork")
            res = json.loads(Path(tmp, "result.json").read_text())
    finally:
        torch.set_num_threads(threads)
    return report(res, table, args, "zero")


if __name__ == "__main__":
    sys.exit(main())
