"""The optimizer core against an earlier commit's, side by side in one process (issue 12's speed check).

The baseline commit's ``soap_lab`` package is extracted with ``git archive`` into a temporary directory and
imported as ``soap_lab_baseline``, so both cores run in the same process on the same machine minutes. For each
optimizer, the current and the baseline instance get copies of the same parameters and, at every step, the same
open-loop gradients (``step_time.open_loop_gradients``); steps are interleaved and the order rotates every step.
After ``f + 1`` warmup calls, timed steps come in windows of f (each holds one refresh); the ratio current /
baseline is the median over windows of the per-window ratio of mean step times. The final parameters of the
two are compared too (same algorithm: float32 round-off apart).

    python benchmarks/versus.py --baseline 2ff7716                        # gpt10m, f=10, soap shampoo eigen_adafactor
    python benchmarks/versus.py --baseline 2ff7716 --threads 1 --out data/bench
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import step_time  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)
import torch  # noqa: E402

OPTIMIZERS = {
    "soap": ("SOAP", dict(lr=3e-3, betas=(0.95, 0.95), weight_decay=0.01)),
    "shampoo": ("Shampoo", dict(lr=3e-3, betas=(0.95, 0.95), exponent=0.4)),
    "eigen_adafactor": ("EigenAdafactor", dict(lr=3e-3, betas=(0.95, 0.95))),
}


def import_baseline(commit: str, into: Path):
    """``soap_lab`` of ``commit`` as the package ``soap_lab_baseline`` (its imports are relative)."""
    blob = subprocess.run(["git", "archive", "--format=tar", commit, "soap_lab"], cwd=ROOT, check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    (into / "soap_lab").rename(into / "soap_lab_baseline")
    sys.path.insert(0, str(into))
    import soap_lab_baseline
    return soap_lab_baseline


def run(args) -> Dict:
    import soap_lab

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [s for _, s in step_time.gpt_shapes(**step_time.PARAM_SETS[args.params])]
    init = [torch.randn(s) * 0.02 for s in shapes]
    f = args.f
    with tempfile.TemporaryDirectory() as tmp:
        baseline = import_baseline(args.baseline, Path(tmp))
        entries, opts, params = [], {}, {}
        for name in args.optimizers:
            cls_name, hp = OPTIMIZERS[name]
            for side, pkg in (("current", soap_lab), ("baseline", baseline)):
                key = (name, side)
                params[key] = [torch.nn.Parameter(x.clone()) for x in init]
                opts[key] = getattr(pkg, cls_name)(params[key], precondition_frequency=f, **hp)
                entries.append(key)
        gradients = step_time.open_loop_gradients(shapes, torch.device("cpu"))
        warmup, times = f + 1, {k: [] for k in entries}
        t_start = time.perf_counter()
        for t in range(warmup + args.steps):
            grads = gradients(t)
            k = t % len(entries)
            for key in entries[k:] + entries[:k]:
                for p, g in zip(params[key], grads):
                    p.grad = g.clone()
                t0 = time.perf_counter()
                opts[key].step()
                if t >= warmup:
                    times[key].append(time.perf_counter() - t0)
            if args.verbose:
                print(f"step {t + 1}/{warmup + args.steps} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr,
                      flush=True)
    windows = max(1, args.steps // f)
    means = {k: [statistics.fmean(v[i * f:(i + 1) * f]) for i in range(windows)] for k, v in times.items()}
    rows = []
    for name in args.optimizers:
        cur, base = means[(name, "current")], means[(name, "baseline")]
        diff = max(float((a.detach() - b.detach()).norm() / b.detach().norm().clamp_min(1e-30))
                   for a, b in zip(params[(name, "current")], params[(name, "baseline")]))
        rows.append({
            "optimizer": name,
            "ms_current": 1e3 * statistics.median(cur), "ms_baseline": 1e3 * statistics.median(base),
            "ratio": statistics.median(a / b for a, b in zip(cur, base)),
            "ratio_windows": [round(a / b, 3) for a, b in zip(cur, base)],
            "ratio_single_step": statistics.median(times[(name, "current")]) / statistics.median(times[(name, "baseline")]),
            "ratio_min_step": min(times[(name, "current")]) / min(times[(name, "baseline")]),
            "max_rel_param_diff": diff,
        })
    return {"params": args.params, "f": f, "steps": args.steps, "windows": windows, "baseline": args.baseline,
            "rows": rows, "provenance": {**step_time.provenance(), "wall_s": round(time.perf_counter() - t_start)}}


def table(res: Dict) -> str:
    lines = [f"Optimizer core vs commit {res['baseline']}, side by side in one process: {res['params']}, f={res['f']}, "
             f"{res['steps']} timed steps, median of {res['windows']} windows of f steps", "",
             "| optimizer | ms/step now | ms/step baseline | now / baseline | per window | single step | min step | "
             "max rel. param diff |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['optimizer']} | {r['ms_current']:.1f} | {r['ms_baseline']:.1f} | {r['ratio']:.3f} | "
                     f"{r['ratio_windows']} | {r['ratio_single_step']:.3f} | {r['ratio_min_step']:.3f} | "
                     f"{r['max_rel_param_diff']:.1e} |")
    prov = res["provenance"]
    lines += ["", "now / baseline: median over windows of the per-window ratio of mean step times (each window holds "
              "one refresh); single step: ratio of median single steps; min step: ratio of the fastest steps (an "
              "ordinary step on a quiet moment: the robust one on a loaded machine); param diff: final parameters, "
              "float32.",
              "Provenance: " + ", ".join(f"{k} {v}" for k, v in prov.items())]
    return "\n".join(lines) + "\n"


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/versus.py", description=__doc__.split("\n")[0])
    p.add_argument("--baseline", required=True, help="commit whose soap_lab is the baseline (e.g. 2ff7716)")
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    p.add_argument("--params", default="gpt10m", choices=sorted(step_time.PARAM_SETS))
    p.add_argument("--f", type=int, default=10, help="precondition frequency (default 10)")
    p.add_argument("--steps", type=int, default=30, help="timed steps (default 30: 3 windows of f)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", default=None, help="directory: write versus_<params>_f<f>.json and .md")
    p.add_argument("--verbose", action="store_true", help="progress on stderr")
    args = p.parse_args(argv)
    res = run(args)
    text = table(res)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"versus_{args.params}_f{args.f}"
        (out / f"{stem}.json").write_text(__import__("json").dumps(res, indent=1) + "\n")
        (out / f"{stem}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
