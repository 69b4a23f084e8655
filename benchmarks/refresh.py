"""Refresh policies side by side (issue 22): staggered vs fixed step-time spikes, the adaptive check vs the refresh
it replaces, partial refreshes of a stack, and SOAP at f = 1 fixed vs adaptive in the real training loop.

    python benchmarks/refresh.py --out data/bench                         # gpt10m, f=10: policies + stack parts
    python benchmarks/refresh.py --params gpt124m --steps 20 --out data/bench
    python benchmarks/refresh.py --params gpt10m --train --out data/bench # + the training loop (cpu preset, f=1)
    python benchmarks/refresh.py --quick --out DIR                        # smoke test (tests/test_benchmarks.py)

Parts (one process, the conventions of ``step_time.py``: open-loop gradients, steps interleaved with a rotating
order, the first f + 1 calls untimed, windows of f steps):

1. **policies** — SOAP over the parameter set's shapes, one instance per policy on copies of the same parameters:
   ``fixed``; ``staggered`` (offsets from the cost model); ``adaptive_tau0`` (τ = 0: every check refreshes —
   fixed plus the check, so its refresh steps minus fixed's are the check's overhead when a refresh follows);
   ``adaptive_never`` (τ = 2: checks only, no refresh after the first basis — its check steps minus its ordinary
   steps are the check's cost alone). Per policy: median, p99 (nearest rank), max single step and the amortized
   mean (whole windows); the extra time of check/refresh steps over the median ordinary step; the estimated
   refresh FLOPs per step by offset (cost model: the staggered max over mean, vs fixed's f).
2. **stack** — the largest stack (same-layout matrices) alone: the whole-stack refresh vs refreshing k of its B
   members (``_refresh_members``; k = 1, B/2, B − 1): time / (k/B · whole) says whether refreshing just the
   members that need it gives the saving back; and the check alone (P·Q + staleness, subtraction and direct).
3. **train** (``--train``) — ``soap_lab.train`` (the loop of ``throughput.py``): SOAP at f = 1 fixed vs adaptive
   at each ``--tolerances`` τ: ms per step, optimizer ms per step, and refreshes per factor (from the run's own
   record, ``summary["refresh"]``: ``soap_lab/train/refresh_log.py``).

Outputs with ``--out``: ``refresh_<params>_f<f>[_tag].{json,md}`` (provenance as ``step_time.py``).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import step_time  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)
import torch  # noqa: E402

HP = dict(lr=3e-3, betas=(0.95, 0.95), eps=1e-8, weight_decay=0.01, max_precond_dim=10000)
POLICIES = {
    "fixed": {},
    "staggered": dict(refresh_policy="staggered"),
    "adaptive_tau0": dict(refresh_policy="adaptive", refresh_tolerance=0.0),
    "adaptive_never": dict(refresh_policy="adaptive", refresh_tolerance=2.0),
}


def _p99(xs: List[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


def policies_part(args, shapes: List[tuple], device: torch.device) -> Dict:
    from soap_lab import SOAP
    from soap_lab.optim import cost

    torch.manual_seed(0)
    f = args.f
    init = [(torch.randn(s) * 0.02).to(device) for s in shapes]
    names = list(args.policies)
    opts, params = {}, {}
    for name in names:
        ps = [torch.nn.Parameter(x.clone()) for x in init]
        params[name] = ps
        opts[name] = SOAP(ps, precondition_frequency=f, **HP, **POLICIES[name])
    gradients = step_time.open_loop_gradients(shapes, device)
    warmup, times = f + 1, {n: [] for n in names}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for t in range(warmup + args.steps):
        grads = gradients(t)
        k = t % len(names)
        for name in names[k:] + names[:k]:
            for p, g in zip(params[name], grads):
                p.grad = g
            sync()
            t0 = time.perf_counter()
            opts[name].step()
            sync()
            if t >= warmup:
                times[name].append(time.perf_counter() - t0)
        if args.verbose:
            print(f"step {t + 1}/{warmup + args.steps}", file=sys.stderr, flush=True)
    # Calls t = warmup … are steps t (the first call builds the bases): step s refreshes/checks when s % f == 0.
    steps = list(range(warmup, warmup + args.steps))
    due = [s % f == 0 for s in steps]
    windows = max(1, args.steps // f)
    whole = windows * f if args.steps >= f else args.steps
    ordinary = statistics.median(x for x, d in zip(times["fixed"], due) if not d) if "fixed" in times and not all(due) \
        else None
    rows = []
    for name in names:
        ts = times[name]
        spikes = [x for x, d in zip(ts, due) if d]
        calm = [x for x, d in zip(ts, due) if not d]
        base = statistics.median(calm) if calm else None
        stats = opts[name].refresh_stats()
        rows.append({
            "policy": name,
            "ms_median": 1e3 * statistics.median(ts), "ms_p99": 1e3 * _p99(ts), "ms_max": 1e3 * max(ts),
            "ms_mean": 1e3 * statistics.fmean(ts[:whole]),
            "ms_windows": [round(1e3 * statistics.fmean(ts[i * f:(i + 1) * f]), 1) for i in range(windows)],
            "ms_due_step_extra": 1e3 * (statistics.median(spikes) - base) if spikes and base is not None else None,
            "refreshes": stats["refreshes"], "checks": stats["checks"],
            "refresh_gflop": stats["refresh_flops"] / 1e9, "check_gflop": stats["check_flops"] / 1e9,
        })
    # The cost model's refresh load per step by offset (staggered) against fixed's (everything at one step).
    opt = opts.get("staggered") or SOAP([torch.nn.Parameter(x.clone()) for x in init], precondition_frequency=f,
                                        refresh_policy="staggered", **HP)
    ps = params.get("staggered") or opt.param_groups[0]["params"]
    per_param = [cost.step_cost(SOAP, tuple(p.shape), dict(precondition_frequency=f)).refresh for p in ps]
    offsets = [opt._offset_of(p) for p in ps]
    loads = [sum(c for c, o in zip(per_param, offsets) if o == k) for k in range(f)]
    return {
        "rows": rows, "ordinary_ms_fixed": None if ordinary is None else 1e3 * ordinary, "timed_steps": args.steps,
        "windows": windows, "model_refresh_load": {"per_offset_gflop": [round(x / 1e9, 2) for x in loads],
                                                   "max_over_mean": max(loads) / (sum(loads) / f) if sum(loads) else 1.0,
                                                   "fixed_max_over_mean": float(f)},
    }


def stack_part(args, shapes: List[tuple], device: torch.device) -> Dict:
    """The largest stack alone: whole refresh vs k of B members, and the check (see the module docstring)."""
    from soap_lab import SOAP
    from soap_lab.optim import refresh as policies

    groups: Dict[tuple, int] = {}
    for s in shapes:
        if len(s) == 2:
            groups[s] = groups.get(s, 0) + 1
    shape = max(groups, key=lambda s: ((s[0] ** 3 + s[1] ** 3) * groups[s], s))
    B = max(2, groups[shape])  # a stack of at least two (a parameter set with no repeated layout: two copies)
    torch.manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(shape) * 0.02).to(device)) for _ in range(B)]
    opt = SOAP(params, precondition_frequency=10**9, **HP)  # refreshes only when called below
    gradients = step_time.open_loop_gradients([shape] * B, device)
    for t in range(3):
        for p, g in zip(params, gradients(t)):
            p.grad = g
        opt.step()
    (s,) = [st for st in opt._stacks.values() if len(st) == B]
    states = [opt.state[p] for p in params]
    cfg, rule = opt._config(0, opt.param_groups[0])
    _, b1, b2, b3, b4 = opt._workspace.buffers(s.M, 5)
    bufs = (b1, b2, b3, b4)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def timed(fn, repeats):
        fn()  # untimed: the workspaces' views for this shape exist from here on
        out = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(out)

    r = args.repeats
    whole = timed(lambda: opt._refresh(s, states, cfg, rule, 1, b1, b2), r)
    partial = []
    for k in sorted({1, max(1, B // 2), max(1, B - 1)}):
        sel = [list(range(k)) for _ in s.Q]
        ms = timed(lambda: opt._refresh_members(s, states, cfg, rule, 1, sel, None, bufs), r)
        partial.append({"members": k, "ms": ms, "x_proportional": ms / (whole * k / B)})

    def check(direct):
        held = opt._check_workspace.aligned(list(s.GG))
        for P, q, PQ in zip(s.GG, s.Q, held):
            torch.matmul(P, q, out=PQ)
            policies.staleness(P, q, PQ, direct=direct, work=opt._refresh_workspace.buffers(P, 2)[1])
        torch.stack([torch.zeros(1, device=device)]).tolist()

    return {"shape": list(shape), "members": B, "ms_whole_refresh": whole, "partial": partial,
            "ms_check_subtraction": timed(lambda: check(False), r), "ms_check_direct": timed(lambda: check(True), r),
            "repeats": r}


def train_part(args) -> Dict:
    import throughput
    from soap_lab.train.config import TrainConfig

    rows = []
    variants = [("fixed", {})] + [(f"adaptive_tau{tau:g}", dict(refresh_policy="adaptive", refresh_tolerance=tau))
                                  for tau in args.tolerances]
    for name, hp in variants:
        config = TrainConfig(
            experiment="bench", optimizer="soap", preset=args.preset, batch_size=args.batch_size,
            steps=args.train_steps, warmup_fraction=0.0, eval_every=0, eval_batches=1, precondition_frequency=1,
            hparams=hp, device=args.train_device, progress=False, save=False,
        )
        row = throughput.measure(config, args.skip)
        stats = row.pop("refresh")  # the run's own record of its refreshes
        row.update(variant=name, refreshes=stats["refreshes"], checks=stats["checks"], skipped=stats["skipped"],
                   factors=stats["factors"], refreshes_per_factor=stats["refreshes_per_factor"],
                   refresh_gflop=stats["refresh_flops"] / 1e9, skipped_gflop=stats["skipped_flops"] / 1e9)
        rows.append(row)
        if args.verbose:
            print(f"  {name}: {row['ms_per_step']:.1f} ms/step", file=sys.stderr, flush=True)
    return {"preset": args.preset, "batch_size": args.batch_size, "steps": args.train_steps, "skip": args.skip,
            "f": 1, "rows": rows}


def run(args) -> Dict:
    t_start = time.perf_counter()
    shapes = [s for _, s in step_time.gpt_shapes(**step_time.PARAM_SETS[args.params])]
    device = torch.device(args.device)
    res = {"params": args.params, "device": str(device), "f": args.f,
           "n_params": sum(torch.Size(s).numel() for s in shapes)}
    res["policies"] = policies_part(args, shapes, device)
    res["stack"] = stack_part(args, shapes, device)
    if args.train:
        res["train"] = train_part(args)
    res["wall_s"] = time.perf_counter() - t_start
    res["provenance"] = step_time.provenance()
    return res


def table(res: Dict) -> str:
    pol, st = res["policies"], res["stack"]
    lines = [
        f"Refresh policies, SOAP on {res['params']} ({res['n_params'] / 1e6:.2f}M params) on {res['device']}, "
        f"f={res['f']}, {pol['timed_steps']} timed steps ({pol['windows']} windows of f) after f + 1 warmup calls",
        "",
        "| policy | median ms | p99 ms | max ms | mean ms (amortized) | check/refresh step extra ms | refreshes | "
        "checks | refresh GFLOP | check GFLOP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda x, p=1: "-" if x is None else f"{x:.{p}f}"  # noqa: E731
    for r in pol["rows"]:
        lines.append(f"| {r['policy']} | {r['ms_median']:.1f} | {r['ms_p99']:.1f} | {r['ms_max']:.1f} | "
                     f"{r['ms_mean']:.1f} | {fmt(r['ms_due_step_extra'])} | {r['refreshes']} | {r['checks']} | "
                     f"{r['refresh_gflop']:.1f} | {r['check_gflop']:.1f} |")
    load = pol["model_refresh_load"]
    lines += [
        "",
        f"Cost model, refresh GFLOP per step by offset (staggered): {load['per_offset_gflop']}; max / mean "
        f"{load['max_over_mean']:.2f} (fixed: {load['fixed_max_over_mean']:.0f}, everything at one step).",
        "check/refresh step extra: median over the steps with s % f == 0 minus the median of the other steps, per "
        "policy (staggered: its own spread-out refreshes are in the 'other' steps too). The check's cost alone is "
        "adaptive_never's; its overhead on a refresh is adaptive_tau0's minus fixed's.",
        "",
        f"Largest stack {tuple(st['shape'])} × {st['members']} (median of {st['repeats']}): whole refresh "
        f"{st['ms_whole_refresh']:.1f} ms; check {st['ms_check_subtraction']:.1f} ms (subtraction), "
        f"{st['ms_check_direct']:.1f} ms (direct).",
        "",
        "| members refreshed | ms | × (k/B · whole) |",
        "|---:|---:|---:|",
    ]
    for r in st["partial"]:
        lines.append(f"| {r['members']} of {st['members']} | {r['ms']:.1f} | {r['x_proportional']:.2f} |")
    if "train" in res:
        tr = res["train"]
        lines += [
            "",
            f"Training loop (soap_lab.train), preset {tr['preset']}, batch {tr['batch_size']}, {tr['steps']} steps "
            f"(first {tr['skip']} not timed), SOAP f = 1:",
            "",
            "| variant | ms/step | optimizer ms/step | refreshes per factor | skipped checks | refresh GFLOP | "
            "skipped GFLOP | final train loss |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in tr["rows"]:
            lines.append(f"| {r['variant']} | {r['ms_per_step']:.1f} | {r['opt_ms_per_step']:.1f} | "
                         f"{r['refreshes_per_factor']:.1f} | {r['skipped']} / {r['checks']} | {r['refresh_gflop']:.1f} | "
                         f"{r['skipped_gflop']:.1f} | {r['final_train_loss']:.4f} |")
    pv = res["provenance"]
    lines.append("")
    lines.append("Provenance: " + ", ".join(f"{k} {v}" for k, v in pv.items()) + f"; wall {res['wall_s']:.0f} s.")
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    step_time.add_common_args(p, "refresh_<params>_f<f>.json and .md there (e.g. data/bench)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 windows of f for gpt10m, 2 for gpt124m)")
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES), metavar="NAME",
                   help=f"any of {', '.join(POLICIES)}")
    p.add_argument("--repeats", type=int, default=5, help="repeats of each stack-part timing (median)")
    p.add_argument("--train", action="store_true", help="also time the training loop at f = 1, fixed vs adaptive")
    p.add_argument("--tolerances", type=float, nargs="+", default=[0.05, 0.1], help="τ of the adaptive training runs")
    p.add_argument("--preset", default="cpu", help="model preset of the training runs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=5, help="leading training steps left out of the timings")
    p.add_argument("--train-device", default="auto")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test sizes: tiny2 shapes, f=2, 4 steps, training preset tiny for 4 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.params, args.f, args.steps, args.repeats = "tiny2", 2, 4, 1
        args.train, args.preset, args.batch_size, args.train_steps, args.skip = True, "tiny", 4, 4, 1
        args.tolerances = [0.05]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if args.steps is None:
        args.steps = (3 if args.params != "gpt124m" else 2) * args.f
    if args.skip >= args.train_steps:
        p.error(f"--skip ({args.skip}) must be smaller than --train-steps ({args.train_steps})")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    return step_time.report(run(args), table, args, "refresh")


if __name__ == "__main__":
    sys.exit(main())
