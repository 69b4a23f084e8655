"""SOAP's step compiled with torch.compile against the same step eager, side by side in one process (issue 21).

Two SOAP optimizers get copies of the same parameters and, at every step, the same open-loop gradients
(``step_time.open_loop_gradients``); one steps eagerly, the other through ``torch.compile(opt.step)``
(docs/compile.md; both with ``on_nonfinite="ignore"``, which the compiled step needs to have no graph break, so
the comparison is like for like). Warmup: the first ``2f + 2`` calls (the first call, the step count becoming a
symbol, the first refresh steps: where the compiled step compiles; their wall time is reported as compile time).
Then ``--steps`` timed steps, interleaved (the order alternates), in windows of f (each holds one refresh).
Reported: ms/step (median over windows of the window mean), the median ordinary step and the median refresh step of
each, their ratios compiled / eager, the graph breaks and compiled frames (dynamo's counters), and how far the two
ends apart (float32 round-off: inductor fuses and reorders).

    python benchmarks/compile.py --params tiny2 --f 10                # small shapes
    python benchmarks/compile.py --params gpt10m --f 10 --out data/bench   # make bench-compile (an idle machine)
    python benchmarks/compile.py --quick --backend eager               # the test's smoke run: every part, seconds
"""
from __future__ import annotations

import argparse
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
from torch._dynamo.utils import counters  # noqa: E402

HP = dict(lr=3e-3, betas=(0.95, 0.95), weight_decay=0.01, on_nonfinite="ignore")


def run(args) -> Dict:
    from soap_lab import SOAP

    torch.manual_seed(0)
    device = torch.device(args.device)
    shapes = [s for _, s in step_time.gpt_shapes(**step_time.PARAM_SETS[args.params])]
    init = [(torch.randn(s) * 0.02).to(device) for s in shapes]
    f = args.f
    torch._dynamo.reset()
    counters.clear()
    params = {k: [torch.nn.Parameter(x.clone()) for x in init] for k in ("eager", "compiled")}
    opts = {k: SOAP(ps, precondition_frequency=f, **HP) for k, ps in params.items()}
    steps = {"eager": opts["eager"].step, "compiled": torch.compile(opts["compiled"].step, backend=args.backend)}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    gradients = step_time.open_loop_gradients(shapes, device)
    warmup = 2 * f + 2
    times: Dict[str, List[float]] = {k: [] for k in steps}
    refresh: List[bool] = []
    compile_s, t_start = 0.0, time.perf_counter()
    for t in range(warmup + args.steps):
        grads = gradients(t)
        order = list(steps) if t % 2 == 0 else list(reversed(list(steps)))
        for key in order:
            for p, g in zip(params[key], grads):
                p.grad = g.clone()
            sync()
            t0 = time.perf_counter()
            steps[key]()
            sync()
            dt = time.perf_counter() - t0
            if t >= warmup:
                times[key].append(dt)
            elif key == "compiled":
                compile_s += dt
        if t >= warmup:
            refresh.append(t % f == 0)  # call t is step t; SOAP refreshes at steps f, 2f, …
        if args.verbose:
            print(f"step {t + 1}/{warmup + args.steps} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr,
                  flush=True)
    windows = max(1, args.steps // f)
    means = {k: [statistics.fmean(v[i * f:(i + 1) * f]) for i in range(windows)] for k, v in times.items()}

    def median_of(key, kind):
        sel = [x for x, r in zip(times[key], refresh) if r == kind]
        return 1e3 * statistics.median(sel) if sel else float("nan")

    rows = {k: {"ms_per_step": 1e3 * statistics.median(means[k]), "ms_ordinary": median_of(k, False),
                "ms_refresh": median_of(k, True)} for k in steps}
    diff = max(float((a - b).norm() / b.norm().clamp_min(1e-30))
               for a, b in zip([p.detach() for p in params["compiled"]], [p.detach() for p in params["eager"]]))
    return {
        "params": args.params, "f": f, "steps": args.steps, "windows": windows, "backend": args.backend,
        "device": args.device, "rows": rows,
        "ratio": statistics.median(a / b for a, b in zip(means["compiled"], means["eager"])),
        "ratio_ordinary": rows["compiled"]["ms_ordinary"] / rows["eager"]["ms_ordinary"],
        "ratio_refresh": rows["compiled"]["ms_refresh"] / rows["eager"]["ms_refresh"],
        "compile_s": compile_s, "graph_breaks": sum(counters["graph_break"].values()),
        "frames_compiled": counters["frames"]["total"], "max_rel_param_diff": diff,
        "provenance": {**step_time.provenance(), "wall_s": round(time.perf_counter() - t_start)},
    }


def table(res: Dict) -> str:
    lines = [f"SOAP step, torch.compile (backend {res['backend']}) vs eager, side by side in one process: "
             f"{res['params']}, f={res['f']}, {res['steps']} timed steps ({res['windows']} windows of f), "
             f"{res['device']}", "",
             "| step | ms/step | ordinary step (median) | refresh step (median) |", "|---|---:|---:|---:|"]
    for k, r in res["rows"].items():
        lines.append(f"| {k} | {r['ms_per_step']:.2f} | {r['ms_ordinary']:.2f} | {r['ms_refresh']:.2f} |")
    lines.append(f"| compiled / eager | {res['ratio']:.3f} | {res['ratio_ordinary']:.3f} | {res['ratio_refresh']:.3f} |")
    prov = res["provenance"]
    lines += ["", f"Compile (the first 2f+2 compiled calls): {res['compile_s']:.1f} s; graph breaks "
              f"{res['graph_breaks']} (the refreshes, run on the host), frames compiled {res['frames_compiled']}; "
              f"final parameters apart by {res['max_rel_param_diff']:.1e} (relative).",
              "ms/step: median over windows of the window mean (each window holds one refresh).",
              "Provenance: " + ", ".join(f"{k} {v}" for k, v in prov.items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/compile.py", description=__doc__.split("\n")[0])
    step_time.add_common_args(p, "compile_<params>_f<f>.json and .md there (e.g. data/bench)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 5 windows of f)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, aot_eager, eager)")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny shapes, f=2, 4 timed steps")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--quick" in argv:
        argv = ["--params", "tiny", "--f", "2", "--steps", "4"] + argv
    args = step_time.checked_args(p, argv, lambda a: 5 * a.f)
    return step_time.report(run(args), table, args, "compile")


if __name__ == "__main__":
    raise SystemExit(main())
