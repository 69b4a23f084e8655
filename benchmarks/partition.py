"""How unevenly torch's ZeRO partition (by parameter count) splits the optimizer's work, vs the cost-balanced one.

One process, one thread: each distinct parameter shape of a set gets its own optimizer over one parameter of that
shape, and all are stepped interleaved on open-loop gradients (as ``step_time.py``): f + 1 untimed calls, then f
timed steps (one refresh). A shape's measured cost is its median step (ordinary) plus the extra time of its
refresh step. For N ranks, each partition's imbalance — the time per step when every step waits for the slowest
rank, over a perfect split's (``soap_lab.optim.cost.imbalance``) — is then computed twice: from these measured
costs and from the cost model's estimates. Both partitions are the ones ZeRO would use: torch's
(``cost.numel_partition``, checked against torch in tests/test_zero.py) and ``cost.balanced_partition``.

    python benchmarks/partition.py                         # gpt10m, SOAP, f=10, worlds 2 4 8
    python benchmarks/partition.py --params gpt124m --out data/bench
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import PARAM_SETS, gpt_shapes, open_loop_gradients, provenance, report  # noqa: E402

import torch  # noqa: E402

from soap_lab.optim import build_optimizer  # noqa: E402
from soap_lab.optim import cost  # noqa: E402

OPTIMIZERS = ("soap", "shampoo", "eigen_adafactor")


def _registry_class(name: str) -> type:
    from soap_lab.optim import _registry

    return _registry()[name][0]


def measure(args) -> Dict:
    shapes = [s for _, s in gpt_shapes(**PARAM_SETS[args.params])]
    distinct = list(dict.fromkeys(shapes))
    f = args.f
    gen = torch.Generator().manual_seed(0)
    params = {s: torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in distinct}
    opts = {s: build_optimizer(args.optimizer, [params[s]], precondition_frequency=f) for s in distinct}
    gradients = open_loop_gradients(distinct, torch.device("cpu"))
    times: Dict[tuple, List[float]] = {s: [] for s in distinct}
    t_start = time.perf_counter()
    for t in range(2 * f + 1):
        grads = gradients(t)
        k = t % len(distinct)
        for i in list(range(k, len(distinct))) + list(range(k)):
            s = distinct[i]
            params[s].grad = grads[i]
            t0 = time.perf_counter()
            opts[s].step()
            if t > f:
                times[s].append(time.perf_counter() - t0)
        if args.verbose:
            print(f"step {t + 1}/{2 * f + 1} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
    cls = _registry_class(args.optimizer)
    measured = {}
    for s in distinct:
        ordinary = statistics.median(times[s])
        measured[s] = cost.StepCost(ordinary, max(times[s]) - ordinary, f)
    estimated = {s: cost.step_cost(cls, s, {"precondition_frequency": f}) for s in distinct}
    m_costs, e_costs = [measured[s] for s in shapes], [estimated[s] for s in shapes]
    rows = []
    for world in args.worlds:
        by_numel = cost.numel_partition([math.prod(s) for s in shapes], world)
        by_cost = cost.balanced_partition(e_costs, world, keys=shapes, numels=[math.prod(s) for s in shapes])
        rows.append({"world": world,
                     "numel_measured": cost.imbalance(m_costs, by_numel), "cost_measured": cost.imbalance(m_costs, by_cost),
                     "numel_estimated": cost.imbalance(e_costs, by_numel), "cost_estimated": cost.imbalance(e_costs, by_cost)})
    # The model's scale: matmul FLOPs per measured second, fitted on the total (only ratios enter a partition).
    rate = sum(e.amortized for e in e_costs) / sum(m.amortized for m in m_costs)
    per_shape = [{"shape": list(s), "count": shapes.count(s), "ms_step": 1e3 * measured[s].step,
                  "ms_refresh_extra": 1e3 * measured[s].refresh, "ms_estimated_amortized": 1e3 * estimated[s].amortized / rate,
                  "ms_measured_amortized": 1e3 * measured[s].amortized} for s in distinct]
    return {"params": args.params, "optimizer": args.optimizer, "f": f, "device": "cpu", "rows": rows,
            "per_shape": per_shape, "model_gflops": rate / 1e9, "wall_s": time.perf_counter() - t_start,
            "provenance": provenance()}


def table(res: Dict) -> str:
    lines = [
        f"ZeRO partitions of {res['params']} for {res['optimizer']}, f={res['f']}: estimated step time over a "
        f"perfect split (1.00 = balanced; every step waits for the slowest rank)",
        "",
        "| ranks | torch (by count), measured costs | cost-balanced, measured costs | torch, model | cost-balanced, model |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(f"| {r['world']} | {r['numel_measured']:.3f} | {r['cost_measured']:.3f} | "
                     f"{r['numel_estimated']:.3f} | {r['cost_estimated']:.3f} |")
    lines += ["", "Per shape (one parameter stepped alone, 1 thread): measured ms per ordinary step, extra ms of its "
              f"refresh step, amortized ms measured vs the model's (scaled at {res['model_gflops']:.0f} GFLOP/s, "
              "fitted on the total)", "",
              "| shape | count | ms step | ms refresh extra | amortized ms measured | model |",
              "|---|---:|---:|---:|---:|---:|"]
    for p in res["per_shape"]:
        lines.append(f"| {'x'.join(map(str, p['shape']))} | {p['count']} | {p['ms_step']:.1f} | {p['ms_refresh_extra']:.0f} | "
                     f"{p['ms_measured_amortized']:.1f} | {p['ms_estimated_amortized']:.1f} |")
    pv = res["provenance"]
    lines += ["", "Provenance: " + ", ".join(f"{k} {v}" for k, v in pv.items()) + f"; wall {res['wall_s']:.0f} s."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="gpt10m", choices=sorted(PARAM_SETS))
    p.add_argument("--optimizer", default="soap", choices=OPTIMIZERS)
    p.add_argument("--f", type=int, default=10, help="precondition frequency")
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 4, 8], help="numbers of ranks")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--out", default=None, help="directory: write partition_<params>_f<f>[_<tag>].json and .md there")
    p.add_argument("--tag", default="", help="suffix for the output files' names")
    p.add_argument("--verbose", action="store_true", help="progress on stderr")
    args = p.parse_args(argv)
    if any(w < 1 for w in args.worlds):
        p.error("--worlds: each must be >= 1")
    torch.set_num_threads(args.threads)
    if args.optimizer != "soap" and not args.tag:
        args.tag = args.optimizer
    return report(measure(args), table, args, "partition")


if __name__ == "__main__":
    sys.exit(main())
