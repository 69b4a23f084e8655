"""Buckets for Shampoo and EigenAdafactor (issue 5): step time with ``bucket=True`` vs ``bucket=False``.

Four optimizers in one process — Shampoo and EigenAdafactor, each bucketed and per parameter — get their own
copy of the same parameters (the GPT-2-style shapes of ``step_time.py``) and, at every step, the same open-loop
gradients (random, seeded by the step, independent of the parameters). Steps are interleaved and the order
rotates from step to step, so the machine's load drifts hit all four alike.

    python benchmarks/bucketing.py                         # gpt10m, f=10, 2 windows (a few minutes on 2 cores)
    python benchmarks/bucketing.py --params tiny --f 2 --steps 4     # smoke test (tests/test_buckets_shampoo.py)
    python benchmarks/bucketing.py --out data/bench        # also write JSON + markdown

Timing rules (as ``step_time.py``): the first ``f + 1`` calls are not timed (initialization and the first
refresh of both optimizers); ``--steps`` timed steps follow in windows of f consecutive steps, each holding
exactly one refresh of every optimizer, so a window's mean is the amortized cost per step. ms/step is the
median over windows; the speed-up is the median over windows of the per-window ratio unbucketed / bucketed.
Settings: lr 3e-3, betas (0.95, 0.95), weight decay 0.01, max_precond_dim 10000, f; otherwise each class's
defaults (Shampoo: exponent 1/4, Adam grafting, eps 1e-12; EigenAdafactor: eigh refresh, running statistics,
SOAP's factor-update order). Float32. The final parameters of the two paths are compared (same trajectory up
to float32 round-off).

Numbers depend on the machine and its load; ratios within one run are the output.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see step_time.py; before torch loads libgomp

import torch  # noqa: E402

from step_time import (PARAM_SETS, add_common_args, checked_args, gpt_shapes, open_loop_gradients,  # noqa: E402
                       provenance, report)

OPTIMIZERS = ("shampoo", "eigen_adafactor")
HP = dict(lr=3e-3, betas=(0.95, 0.95), weight_decay=0.01)


def build(name: str, params: List[torch.nn.Parameter], f: int, bucket: bool, max_precond_dim: int = 10000):
    from soap_lab import EigenAdafactor, Shampoo

    cls = {"shampoo": Shampoo, "eigen_adafactor": EigenAdafactor}[name]
    return cls(params, precondition_frequency=f, max_precond_dim=max_precond_dim, bucket=bucket, **HP)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    d = max(float(a.norm()), float(b.norm()))
    return 0.0 if d == 0 else float((a - b).norm()) / d


def run(args) -> Dict:
    torch.manual_seed(0)
    spec = PARAM_SETS[args.params]
    shapes = [s for _, s in gpt_shapes(**spec)]
    device = torch.device(args.device)
    f = args.f
    init = [(torch.randn(s) * 0.02).to(device) for s in shapes]
    entries = [(name, bucket) for name in args.optimizers for bucket in (False, True)]
    params, opts = {}, {}
    for e in entries:
        params[e] = [torch.nn.Parameter(x.clone()) for x in init]
        opts[e] = build(e[0], params[e], f, e[1], args.max_precond_dim)

    gradients = open_loop_gradients(shapes, device)  # as in step_time.py

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    warmup = f + 1
    total = warmup + args.steps
    times: Dict[tuple, List[float]] = {e: [] for e in entries}
    t_start = time.perf_counter()
    for t in range(total):
        grads = gradients(t)
        for e in entries:
            for p, g in zip(params[e], grads):
                p.grad = g.clone()
        k = t % len(entries)
        for e in entries[k:] + entries[:k]:
            sync()
            t0 = time.perf_counter()
            opts[e].step()
            sync()
            if t >= warmup:
                times[e].append(time.perf_counter() - t0)
        if args.verbose:
            print(f"step {t + 1}/{total} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)

    windows = max(1, args.steps // f)
    win = lambda xs, i: xs[i * f:(i + 1) * f] if args.steps >= f else xs  # noqa: E731
    means = {e: [statistics.fmean(win(times[e], i)) for i in range(windows)] for e in entries}
    rows, speedups = [], []
    for e in entries:
        ts = times[e]
        diff = max(_rel(a, b) for a, b in zip(params[e], params[(e[0], False)]))
        rows.append({
            "optimizer": e[0], "bucket": e[1],
            "ms_per_step": 1e3 * statistics.median(means[e]),
            "ms_median_single_step": 1e3 * statistics.median(ts),
            "ms_refresh_step": 1e3 * statistics.median(max(win(ts, i)) for i in range(windows)),
            "windows_ms": [round(1e3 * m, 1) for m in means[e]],
            "n_buckets": sum(len(b.params) > 1 for b in opts[e]._stacks.values()),
            "bucket_sizes": sorted((len(b.params) for b in opts[e]._stacks.values()), reverse=True),
            "max_rel_diff_to_unbucketed": diff,
        })
    for name in args.optimizers:
        plain, fast = means[(name, False)], means[(name, True)]
        speedups.append({
            "optimizer": name,
            "speedup": statistics.median(a / b for a, b in zip(plain, fast)),
            "speedup_single_step": statistics.median(times[(name, False)]) / statistics.median(times[(name, True)]),
        })
    return {
        "params": args.params, "device": str(device), "n_params": sum(torch.Size(s).numel() for s in shapes),
        "f": f, "warmup_calls": warmup, "timed_steps": args.steps, "windows": windows, "rows": rows,
        "speedups": speedups, "wall_s": time.perf_counter() - t_start, "provenance": provenance(),
    }


def table(res: Dict) -> str:
    lines = [
        f"Shampoo / EigenAdafactor step time, bucket=False vs bucket=True: {res['params']} "
        f"({res['n_params'] / 1e6:.2f}M params) on {res['device']}, f={res['f']}, {res['timed_steps']} timed steps "
        f"after {res['warmup_calls']} warmup calls, median of {res['windows']} windows of f steps",
        "",
        "| optimizer | bucket | ms/step | speed-up | step w/o refresh | refresh step | buckets | max rel. diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    sp = {s["optimizer"]: s for s in res["speedups"]}
    for r in res["rows"]:
        ratio = f"{sp[r['optimizer']]['speedup']:.2f}" if r["bucket"] else "1.00"
        lines.append(f"| {r['optimizer']} | {r['bucket']} | {r['ms_per_step']:.1f} | {ratio} | "
                     f"{r['ms_median_single_step']:.1f} | {r['ms_refresh_step']:.0f} | {r['n_buckets']} | "
                     f"{r['max_rel_diff_to_unbucketed']:.1e} |")
    lines += [
        "",
        "ms/step: median over windows of f consecutive steps (each holds one refresh) of the mean step; speed-up: "
        "median over windows of the per-window ratio unbucketed / bucketed; step w/o refresh: median single "
        "step; refresh step: median over windows of the slowest step; max rel. diff: final parameters against the "
        "unbucketed run of the same optimizer (float32 round-off).",
        "Single-step speed-up (median step w/o refresh, unbucketed / bucketed): "
        + "; ".join(f"{s['optimizer']} {s['speedup_single_step']:.2f}" for s in res["speedups"]) + ".",
        "Per-window ms/step: " + "; ".join(f"{r['optimizer']} bucket={r['bucket']} {r['windows_ms']}"
                                            for r in res["rows"]) + ".",
        "Provenance: " + ", ".join(f"{k} {v}" for k, v in res["provenance"].items()) + f"; wall {res['wall_s']:.0f} s.",
    ]
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, "bucketing_<params>_f<f>.json and .md there")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 2 windows of f)")
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS, metavar="NAME")
    p.add_argument("--max-precond-dim", type=int, default=10000, help="sides above it stay unrotated (default 10000)")
    return checked_args(p, argv, lambda a: 2 * a.f)


def main(argv=None) -> int:
    args = parse(argv)
    return report(run(args), table, args, "bucketing")


if __name__ == "__main__":
    sys.exit(main())
