"""SOAP step time, side by side in one process: soap_lab vs public implementations, AdamW and the FLOP floor.

Every optimizer gets its own copy of the same parameters and, at every step, the same open-loop gradients
(random, fixed per step by a seed, independent of the parameters). Steps are interleaved: at step t each
optimizer takes its step t in turn (the order rotates from step to step), so slow drifts of the machine's
load hit every optimizer alike. A large matmul is timed in the same loop, which gives the throughput the
FLOP floor is computed from.

    python benchmarks/step_time.py                              # gpt10m, f=10, default optimizers
    python benchmarks/step_time.py --params gpt124m --steps 12 --optimizers soap_lab pytorch_optimizer adamw
    python benchmarks/step_time.py --out data/bench              # also write JSON + markdown with provenance
    python benchmarks/step_time.py --device cuda --params gpt124m --steps 30 \
        --optimizers soap_lab soap_lab_householder pytorch_optimizer heavyball adamw adamw_fused --out data/bench

Timing rules
  - Warmup: the first ``f + 1`` calls (SOAP's initializing call, then f steps, the last of which refreshes
    the bases) are not timed.
  - ``--steps`` timed steps follow, in windows of f consecutive steps. Each window contains exactly one basis
    refresh for every optimizer whatever its phase, so the mean over a window is the amortized cost per step;
    the reported ms/step is the median over windows (``min`` and the median single step are also reported).
  - The floor: (per-step matmul FLOPs + refresh FLOPs / f) / measured matmul throughput + AdamW's measured
    step (a lower bound for the elementwise part, which SOAP also has). Per-step FLOPs per preconditioned
    dimension of size s of a tensor with N entries: 6·N·s (project 2Ns, project back 2Ns, factor update 2Ns).
    Refresh per factor of size s: P·Q (2s³) + QR (8/3·s³, Householder's count) + rotating the momentum
    into the new basis (4·N·s). All at matmul speed: the floor is optimistic.

Numbers depend on the machine and its load (2 shared cores here); ratios within one run are the output.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# On a shared machine, OpenMP threads that spin while waiting for a descheduled peer make LAPACK calls
# (eigh, QR) 10-100x slower at random; passive waiting keeps every optimizer's timings meaningful. It must be
# set before torch loads libgomp; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

Shape = Tuple[int, ...]


# ----------------------------------------------------------------------------------------------------------
# Parameter sets
# ----------------------------------------------------------------------------------------------------------
def gpt_shapes(n_layer: int, d: int, vocab: int, n_pos: int, bias: bool = True) -> List[Tuple[str, Shape]]:
    """Parameter shapes of a GPT-2-style model (torch ``nn.Linear`` weights are (out, in); tied LM head)."""
    shapes: List[Tuple[str, Shape]] = [("wte", (vocab, d)), ("wpe", (n_pos, d))]
    for i in range(n_layer):
        blk = [("ln_1.weight", (d,)), ("ln_1.bias", (d,)), ("attn.qkv.weight", (3 * d, d)),
               ("attn.proj.weight", (d, d)), ("ln_2.weight", (d,)), ("ln_2.bias", (d,)),
               ("mlp.fc.weight", (4 * d, d)), ("mlp.proj.weight", (d, 4 * d))]
        if bias:
            blk += [("attn.qkv.bias", (3 * d,)), ("attn.proj.bias", (d,)), ("mlp.fc.bias", (4 * d,)),
                    ("mlp.proj.bias", (d,))]
        shapes += [(f"h.{i}.{n}", s) for n, s in blk]
    shapes += [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]
    return shapes


PARAM_SETS: Dict[str, Dict] = {
    # nanoGPT's shakespeare-char model: 6 layers, d=384, context 256, character vocabulary 65, biases:
    # 10.77M parameters, 10.62M of them in the 24 matrices 1152x384, 384x384, 1536x384, 384x1536.
    "gpt10m": dict(n_layer=6, d=384, vocab=65, n_pos=256),
    # GPT-2 small: 12 layers, d=768, vocab 50257 (> max_precond_dim: the embedding is one-sided), 1024 positions.
    "gpt124m": dict(n_layer=12, d=768, vocab=50257, n_pos=1024),
    # A smoke-test size (tests/test_benchmarks.py): every code path in seconds.
    "tiny": dict(n_layer=1, d=32, vocab=65, n_pos=16),
    # Smoke test of bucketing (tests/test_buckets_shampoo.py): two layers, so every matrix shape has a bucket of
    # two; with --max-precond-dim 32 only 32-sized sides rotate and every factor is full rank (well posed).
    "tiny2": dict(n_layer=2, d=32, vocab=65, n_pos=64),
}


# ----------------------------------------------------------------------------------------------------------
# FLOP floor
# ----------------------------------------------------------------------------------------------------------
def floor_flops(shapes: List[Shape], max_precond_dim: int) -> Tuple[float, float]:
    """(matmul FLOPs of one SOAP step, matmul FLOPs of one refresh) for these shapes (reference layout rules:
    1-D parameters not rotated, dimensions above ``max_precond_dim`` left in the identity basis)."""
    step = refresh = 0.0
    for s in shapes:
        if len(s) < 2:
            continue
        n = 1
        for x in s:
            n *= x
        for dim in s:
            if dim <= max_precond_dim:
                step += 6.0 * n * dim
                refresh += 2.0 * dim**3 + (8.0 / 3.0) * dim**3 + 4.0 * n * dim
    return step, refresh


class MatmulProbe:
    """Times one n×n×n float32 matmul per call: the achievable throughput, measured in the timing loop
    (n = 1536 on CPU, 8192 on a GPU, where smaller products do not fill the device)."""

    def __init__(self, device: torch.device = torch.device("cpu")):
        n = 1536 if device.type == "cpu" else 8192
        g = torch.Generator().manual_seed(0)
        self.n = n
        self.a = torch.randn(n, n, generator=g).to(device)
        self.b = torch.randn(n, n, generator=g).to(device)
        self.out = torch.empty(n, n, device=device)
        self.flops = 2.0 * n**3

    def step(self) -> None:
        torch.matmul(self.a, self.b, out=self.out)


# ----------------------------------------------------------------------------------------------------------
# Optimizers
# ----------------------------------------------------------------------------------------------------------
HP = dict(lr=3e-3, betas=(0.95, 0.95), eps=1e-8, weight_decay=0.01)


def _heavyball(params, f: int, compile_on: bool):
    import heavyball

    opt = heavyball.SOAP(
        params, lr=HP["lr"], betas=HP["betas"], shampoo_beta=HP["betas"][1], eps=HP["eps"],
        weight_decay=HP["weight_decay"], precondition_frequency=f, max_precond_dim=10000, merge_dims=False,
        precondition_1d=False, use_precond_schedule=False, compile_step=False,
    )
    return opt


def build(name: str, params: List[torch.nn.Parameter], f: int):
    """name -> optimizer over ``params`` with the paper's settings (f, max_precond_dim 10000, no merge_dims)."""
    if name == "soap_lab":
        from soap_lab import SOAP
        return SOAP(params, precondition_frequency=f, max_precond_dim=10000, **HP)
    if name in ("soap_lab_householder", "soap_lab_cholesky"):  # the orthonormalization forced either way
        from soap_lab import SOAP
        return SOAP(params, precondition_frequency=f, max_precond_dim=10000, qr_method=name.split("_")[-1], **HP)
    if name == "soap_lab_unbucketed":  # the readable per-parameter path, Householder QR: the lab before issue 5
        from soap_lab import SOAP
        return SOAP(params, precondition_frequency=f, max_precond_dim=10000, bucket=False, qr_method="householder", **HP)
    if name == "pytorch_optimizer":  # an independent port of the reference soap.py
        import pytorch_optimizer
        return pytorch_optimizer.SOAP(params, precondition_frequency=f, max_precondition_dim=10000, merge_dims=False,
                                      precondition_1d=False, **HP)
    if name == "heavyball":
        return _heavyball(params, f, compile_on=False)
    if name == "heavyball_compile":
        return _heavyball(params, f, compile_on=True)
    if name == "adamw":
        return torch.optim.AdamW(params, **HP)
    if name == "adamw_fused":  # torch's fused kernel: the fastest AdamW step there is, the overhead baseline
        return torch.optim.AdamW(params, fused=True, **HP)
    raise ValueError(name)


OPTIMIZERS = ("soap_lab", "soap_lab_householder", "soap_lab_cholesky", "soap_lab_unbucketed", "pytorch_optimizer",
              "heavyball", "heavyball_compile", "adamw", "adamw_fused")
DEFAULT_OPTIMIZERS = ("soap_lab", "pytorch_optimizer", "heavyball", "adamw")


class CompileSwitch:
    """heavyball compiles its kernels unless ``heavyball.utils.compile_mode`` is None (read at call time);
    the switch is set before each heavyball step, so compiled and eager instances can run side by side."""

    def __init__(self):
        try:
            import heavyball.utils as hu
        except ImportError:  # pragma: no cover
            self.hu = None
            return
        self.hu = hu
        self.default = hu.compile_mode

    def set(self, on: bool) -> None:
        if self.hu is not None:
            self.hu.compile_mode = self.default if on else None


def open_loop_gradients(shapes: List[Shape], device: torch.device) -> Callable[[int], List[torch.Tensor]]:
    """``gradients(t)``: the open-loop gradients of step t, the same for every optimizer and independent of the
    parameters — a fixed per-matrix row/column scale (one decade, randomly placed: the factors are not
    isotropic) times N(0, 1) noise from a generator seeded by t. Call it outside the timed region."""
    gen = torch.Generator().manual_seed(1234)
    scales = []
    for s in shapes:
        if len(s) == 2:
            r = torch.logspace(0, -1, s[0])[torch.randperm(s[0], generator=gen)]
            c = torch.logspace(0, -1, s[1])[torch.randperm(s[1], generator=gen)]
            scales.append(torch.outer(r, c))
        else:
            scales.append(None)

    def gradients(t: int) -> List[torch.Tensor]:
        g = torch.Generator().manual_seed(10_000 + t)
        out = []
        for s, sc in zip(shapes, scales):
            x = torch.randn(s, generator=g)
            out.append((x.mul_(sc) if sc is not None else x).to(device))
        return out

    return gradients


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------
def provenance() -> Dict[str, str]:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    cpu = platform.processor()
    accelerator = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dirty = git("status", "--porcelain", "--", "soap_lab", "benchmarks")
    versions = {}
    for mod in ("pytorch_optimizer", "heavyball"):
        try:
            from importlib.metadata import version
            versions[mod] = version(mod.replace("_", "-"))
        except Exception:
            versions[mod] = "not installed"
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": "yes (soap_lab/ or benchmarks/ modified)" if dirty else "no",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "cpu": f"{cpu} ({os.cpu_count()} logical cores)",
        "gpu": accelerator,
        "python": platform.python_version(),
        **versions,
    }


def run(args) -> Dict:
    torch.manual_seed(0)
    spec = PARAM_SETS[args.params]
    named = gpt_shapes(**spec)
    shapes = [s for _, s in named]
    n_params = sum(torch.Size(s).numel() for s in shapes)
    device = torch.device(args.device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    init = [(torch.randn(s) * 0.02).to(device) for s in shapes]
    f = args.f
    names = list(args.optimizers)
    switch = CompileSwitch()

    opts, params = {}, {}
    for name in names:
        ps = [torch.nn.Parameter(x.clone()) for x in init]
        for p in ps:
            p.grad = torch.zeros_like(p)
        params[name] = ps
        opts[name] = build(name, ps, f)
    probe = MatmulProbe(device)

    gradients = open_loop_gradients(shapes, device)
    warmup = f + 1
    total = warmup + args.steps
    times: Dict[str, List[float]] = {n: [] for n in names}
    probe_times: List[float] = []
    entries = names + ["_matmul"]
    t_start = time.perf_counter()
    for t in range(total):
        grads = gradients(t)
        for name in names:
            for p, g in zip(params[name], grads):  # some optimizers set .grad to None after stepping
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
        k = t % len(entries)
        for name in entries[k:] + entries[:k]:
            if name == "_matmul":
                sync()
                t0 = time.perf_counter()
                probe.step()
                sync()
                dt = time.perf_counter() - t0
                if t >= warmup:
                    probe_times.append(dt)
                continue
            if name.startswith("heavyball"):
                switch.set(name == "heavyball_compile")
            sync()
            t0 = time.perf_counter()
            opts[name].step()
            sync()
            dt = time.perf_counter() - t0
            if t >= warmup:
                times[name].append(dt)
        if args.verbose:
            print(f"step {t + 1}/{total} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)

    windows = max(1, args.steps // f)
    win = lambda xs, i: xs[i * f:(i + 1) * f] if args.steps >= f else xs  # noqa: E731
    # The floor per window, with that window's matmul throughput and AdamW step: load drifts a lot here.
    step_flops, refresh_flops = floor_flops(shapes, 10000)
    gflops_w = [probe.flops / statistics.median(win(probe_times, i)) / 1e9 for i in range(windows)]
    adamw_w = [statistics.fmean(win(times["adamw"], i)) if "adamw" in times else 0.0 for i in range(windows)]
    floor_w = [(step_flops + refresh_flops / f) / (g * 1e9) + a for g, a in zip(gflops_w, adamw_w)]
    means = {n: [statistics.fmean(win(times[n], i)) for i in range(windows)] for n in names}

    def ratio(n, ref):  # median over windows of the per-window ratio (both measured in the same minutes)
        return statistics.median(a / b for a, b in zip(means[n], ref))

    rows = []
    for name in names:
        ts = times[name]
        rows.append({
            "optimizer": name,
            "ms_per_step": 1e3 * statistics.median(means[name]),
            "ms_per_step_min_window": 1e3 * min(means[name]),
            "ms_median_single_step": 1e3 * statistics.median(ts),
            "ms_refresh_step": 1e3 * statistics.median(max(win(ts, i)) for i in range(windows)),
            "windows_ms": [round(1e3 * m, 1) for m in means[name]],
            "x_adamw": ratio(name, means["adamw"]) if "adamw" in means else None,
            "x_soap_lab": ratio(name, means["soap_lab"]) if "soap_lab" in means else None,
            "x_floor": ratio(name, floor_w),
        })
    gflops = statistics.median(gflops_w)
    adamw = 1e3 * statistics.median(adamw_w) if "adamw" in times else None
    floor = {
        "matmul_gflops": gflops,
        "matmul_gflops_windows": [round(g, 1) for g in gflops_w],
        "step_gflop": step_flops / 1e9,
        "refresh_gflop": refresh_flops / 1e9,
        "matmul_ms": 1e3 * step_flops / (gflops * 1e9),
        "refresh_ms_amortized": 1e3 * refresh_flops / f / (gflops * 1e9),
        "elementwise_ms": adamw,
        "ms_per_step": 1e3 * statistics.median(floor_w),
        "windows_ms": [round(1e3 * x, 1) for x in floor_w],
    }
    extra = {}
    try:
        from soap_lab.optim import linalg
        extra["soap_lab_orthonormalization"] = dict(linalg.ORTHO_STATS)
    except Exception:
        pass
    return {
        "params": args.params, "device": str(device), "matmul_probe_n": probe.n, "n_params": n_params, "shapes": spec, "f": f, "warmup_calls": warmup,
        "timed_steps": args.steps, "windows": windows, "rows": rows, "floor": floor,
        "wall_s": time.perf_counter() - t_start, "provenance": provenance(), **extra,
    }


def table(res: Dict) -> str:
    fl = res["floor"]
    lines = [
        f"SOAP step time, {res['params']} ({res['n_params'] / 1e6:.2f}M params) on {res.get('device', 'cpu')}, f={res['f']}, "
        f"{res['timed_steps']} timed steps after {res['warmup_calls']} warmup calls, "
        f"median of {res['windows']} windows of f steps",
        "",
        "| optimizer | ms/step | x AdamW | x soap_lab | x floor | best window | step w/o refresh | refresh step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    for r in res["rows"]:
        lines.append(f"| {r['optimizer']} | {r['ms_per_step']:.1f} | {fmt(r['x_adamw'])} | {fmt(r['x_soap_lab'])} | "
                     f"{fmt(r['x_floor'])} | {r['ms_per_step_min_window']:.1f} | {r['ms_median_single_step']:.1f} | "
                     f"{r['ms_refresh_step']:.0f} |")
    lines.append(f"| FLOP floor | {fl['ms_per_step']:.1f} | | | 1.00 | | | |")
    lines += [
        "",
        "ms/step: median over windows of f consecutive steps (each holds one refresh) of the mean step; the "
        "ratios are medians over windows of per-window ratios (each pair measured in the same minutes); "
        "step w/o refresh: median single step; refresh step: median over windows of the slowest step.",
        "Per-window ms/step: " + "; ".join(f"{r['optimizer']} {r['windows_ms']}" for r in res["rows"])
        + f"; floor {fl['windows_ms']}.",
        f"Floor = {fl['step_gflop']:.1f} GFLOP/step of matmuls ({fl['matmul_ms']:.1f} ms) + {fl['refresh_gflop']:.1f} GFLOP "
        f"per refresh / f ({fl['refresh_ms_amortized']:.1f} ms) at the measured {fl['matmul_gflops']:.0f} GFLOP/s "
        f"({res.get('matmul_probe_n', 1536)}^3 fp32 matmul timed in the same loop; per window {fl['matmul_gflops_windows']}) + AdamW's step "
        f"for the elementwise part "
        f"({fl['elementwise_ms'] or 0:.1f} ms).",
    ]
    if "soap_lab_orthonormalization" in res:
        lines.append(f"soap_lab orthonormalizations (whole run, all instances): {res['soap_lab_orthonormalization']}")
    pv = res["provenance"]
    lines.append("Provenance: " + ", ".join(f"{k} {v}" for k, v in pv.items()) + f"; wall {res['wall_s']:.0f} s.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, "<params>_f<f>.json and .md there (e.g. data/bench)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 windows of f for gpt10m, 1 for gpt124m)")
    p.add_argument("--optimizers", nargs="+", default=list(DEFAULT_OPTIMIZERS), choices=OPTIMIZERS, metavar="NAME",
                   help=f"any of {', '.join(OPTIMIZERS)} (default: {' '.join(DEFAULT_OPTIMIZERS)}); "
                        "heavyball_compile compiles with torch.compile (minutes on 2 cores)")
    args = checked_args(p, argv, lambda a: (3 if a.params == "gpt10m" else 1) * a.f)
    return report(run(args), table, args, "step_time")


def report(res: Dict, table_of: Callable[[Dict], str], args: argparse.Namespace, name: str) -> int:
    """Print the result's table and, with ``--out``, write it and the full result (:func:`write_outputs`)."""
    text = table_of(res)
    print(text)
    if args.out:
        write_outputs(res, text, args.out, name, args.tag)
    return 0


def add_common_args(p: argparse.ArgumentParser, out_files: str) -> None:
    """The options every benchmark here shares (parameter set, f, threads, device, output, progress)."""
    p.add_argument("--params", default="gpt10m", choices=sorted(PARAM_SETS))
    p.add_argument("--f", type=int, default=10, help="precondition frequency")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]: parameters, states and gradients live there")
    p.add_argument("--out", default=None, help=f"directory: write {out_files}")
    p.add_argument("--tag", default="", help="suffix for the output files' names (keeps a special run apart)")
    p.add_argument("--verbose", action="store_true", help="progress on stderr")


def checked_args(p: argparse.ArgumentParser, argv, default_steps: Callable[[argparse.Namespace], int]):
    """Parse; refuse --device cuda without CUDA; fill in --steps; apply --threads."""
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if args.steps is None:
        args.steps = default_steps(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def write_outputs(res: Dict, text: str, out_dir: str, name: str, tag: str = "") -> None:
    """``<out_dir>/<name>_<params>_f<f>[_cuda][_<tag>].{json,md}``: the full result with provenance, and its table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_{res['params']}_f{res['f']}" + ("" if res["device"] == "cpu" else "_" + res["device"].split(":")[0])
    stem += f"_{tag}" if tag else ""
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (out / f"{stem}.md").write_text(text + "\n")
    print(f"wrote {out / stem}.json and .md", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
