"""SOAP's time overhead over AdamW vs the preconditioning frequency f (paper Fig. 7 left), as a timing study.

The training runs record the time of every ``optimizer.step()``, but on a shared machine those numbers move
with whatever else runs. This study measures the same quantity side by side instead: in one process, on the
parameter shapes of a scale's model preset, with open-loop gradients (fixed structured tensors, so the
cost does not depend on the training trajectory), it interleaves blocks of AdamW steps, SOAP steps at each f,
and forward+backward passes of the model at the scale's batch, repeats the round several times in a shuffled
order, and keeps every block's time. A SOAP block is a whole number of refresh periods (a multiple of f), so
each block holds exactly one refresh per f steps whatever its phase.

Overhead at f = (median SOAP step − median AdamW step) / (median forward+backward + median AdamW step): the
extra time per training step, as a fraction of an AdamW training step, which is what the paper plots. The
points are fitted with c + b/f: c is the per-step floor (projections and factor updates every step), b the
refresh (QR) cost amortized over f.

    python -c "from soap_lab import overhead; overhead.run('cpu')"   # -> data/overhead/overhead_cpu.json
"""
from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .records import store, datasets
from .records.provenance import provenance

__all__ = ["default_path", "model_shapes", "timing_study", "run", "fit_floor", "per_round", "round_fits"]


def default_path(scale_name: str) -> Path:
    """``<repo>/data/overhead/overhead_<scale>.json`` for a registered scale; an overridden scale
    (``<name>-<hash>``, ``ablations.get_scale``) goes to ``<repo>/out/overhead/`` (git-ignored)."""
    if "-" in scale_name:
        return store.REPO_ROOT / "out" / "overhead" / f"overhead_{scale_name}.json"
    return datasets.OVERHEAD_DIR / f"overhead_{scale_name}.json"


def _model(scale, device):
    from .train import data, models

    tok = data.get_tokenizer(scale.tokenizer, "austen")
    cfg = models.gpt_config(scale.preset, tok.vocab_size)
    return models.GPT(cfg).to(device), cfg


def model_shapes(scale) -> List[tuple]:
    """Shapes of the parameters of the scale's model preset (with its tokenizer's vocabulary)."""
    model, _ = _model(scale, "cpu")
    return [tuple(p.shape) for p in model.parameters()]


def _grads(shapes, k: int, seed: int, device):
    """``k`` open-loop gradients per shape, anisotropic (rotations matter), float32."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for s in shapes:
        row = []
        if len(s) == 2:
            A = torch.randn(s[0], s[0], generator=g) / s[0] ** 0.5
            B = torch.randn(s[1], s[1], generator=g) / s[1] ** 0.5
        for _ in range(k):
            x = torch.randn(*s, generator=g)
            if len(s) == 2:
                x = A @ x @ B + 0.1 * x
            row.append((1e-3 * x).to(device))
        out.append(row)
    return out


def fit_floor(fs: Sequence[float], overhead_pct: Sequence[float]) -> Optional[Dict[str, float]]:
    """Least-squares fit of overhead(f) = c + b/f; None with fewer than 2 distinct f."""
    import numpy as np

    f = np.asarray(fs, float)
    y = np.asarray(overhead_pct, float)
    if len(np.unique(f)) < 2:
        return None
    X = np.stack([np.ones_like(f), 1.0 / f], 1)
    (c, b), *_ = np.linalg.lstsq(X, y, rcond=None)
    return {"floor_pct": float(c), "per_refresh_pct": float(b)}


def per_round(study: Dict[str, Any]) -> Optional[Dict[str, Dict[int, List[float]]]]:
    """Per round of a stored timing study (entry r of every time list is round r): ``{"pct": {f: SOAP's extra time
    per training step in % of an AdamW training step}, "ratio": {f: SOAP step / AdamW step}}``; None when the
    study has no per-round times (or lists of unequal length)."""
    soap = study.get("soap_times") or {}
    adam, fb = study.get("adamw_times"), study.get("forward_backward_times")
    fs = sorted(int(f) for f in soap)
    if not fs or not adam or not fb or len(adam) != len(fb) or any(len(soap[str(f)]) != len(adam) for f in fs):
        return None
    pct = {f: [100 * (s - a) / (b + a) for s, a, b in zip(soap[str(f)], adam, fb)] for f in fs}
    ratio = {f: [s / a for s, a in zip(soap[str(f)], adam)] for f in fs}
    return {"pct": pct, "ratio": ratio}


def round_fits(pct: Dict[int, List[float]]) -> List[Dict[str, float]]:
    """:func:`fit_floor` made in each round of ``per_round(...)["pct"]`` (empty with fewer than 2 frequencies)."""
    fs = sorted(pct)
    if len(fs) < 2:
        return []
    return [fit_floor(fs, [pct[f][r] for f in fs]) for r in range(len(pct[fs[0]]))]


def timing_study(scale: Any = "cpu", frequencies: Optional[Sequence[int]] = None, repeats: int = 3, window: int = 200,
                 fb_reps: int = 4, threads: Optional[int] = 1, device: Optional[str] = None, refresh: str = "qr",
                 seed: int = 0, shampoo: bool = False,
                 log: Optional[Callable[[str], None]] = print) -> Dict[str, Any]:
    """Time AdamW and SOAP(f) optimizer steps, and forward+backward, interleaved (see the module docstring).

    ``scale``: a ``Scale`` or its name (its preset gives the shapes, its batch the forward+backward cost).
    ``frequencies``: default the scale's. ``window``: steps per block (SOAP: rounded up to a multiple of f).
    ``threads``: torch threads during the study (1 = as the CPU training runs; None = leave as is).
    ``shampoo``: also time the paper's Shampoo baseline (``ablations.SHAMPOO_BASELINE``) at every f, stored as
    ``shampoo_times`` (for wall-clock against Shampoo; the overhead summary stays SOAP's).

    Every time list holds one entry per repeat, in round order, so entry r of two arms (and of
    ``forward_backward_times``) come from the same round: ratios can be paired by round.
    """
    import torch

    from . import ablations
    from .optim import build_optimizer

    sc = ablations.get_scale(scale) if isinstance(scale, str) else scale
    fs = [int(f) for f in (frequencies if frequencies is not None else sc.frequencies)]
    if not fs:
        raise ValueError("frequencies is empty: give at least one precondition frequency, e.g. [1, 10, 100]")
    if any(f < 1 for f in fs):
        raise ValueError(f"precondition frequencies must be >= 1, got {fs}")
    if repeats < 1 or window < 1 or fb_reps < 1:
        raise ValueError("repeats, window and fb_reps must be >= 1")
    dev = torch.device(device or sc.device)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    try:
        model, cfg = _model(sc, dev)
        shapes = [tuple(p.shape) for p in model.parameters()]
        grads = _grads(shapes, 4, seed, dev)
        betas = (0.95, 0.95)

        arms: Dict[str, Dict[str, Any]] = {}

        def make_arm(name: str, opt_name: str, **kw):
            params = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
            arms[name] = {"params": params, "opt": build_optimizer(opt_name, params, lr=3e-3, betas=betas, **kw),
                          "k": 0, "times": [], "steps": 0}

        make_arm("adamw", "adamw")
        for f in fs:
            make_arm(f"soap_f{f}", "soap", precondition_frequency=f, refresh=refresh)
            if shampoo:
                make_arm(f"shampoo_f{f}", "shampoo", precondition_frequency=f, **ablations.SHAMPOO_BASELINE)

        def steps_of(arm: Dict[str, Any], n: int) -> None:
            opt, params = arm["opt"], arm["params"]
            for _ in range(n):
                k = arm["k"] % 4
                for p, g in zip(params, grads):
                    p.grad = g[k]
                opt.step()
                arm["k"] += 1

        # warm up: the first call (SOAP: eigh, no update) and one full refresh period
        for name, arm in arms.items():
            f = int(name.split("_f")[1]) if "_f" in name else 1
            steps_of(arm, f + 1)
        x = torch.randint(0, cfg.vocab_size, (sc.batch_size, cfg.seq_len), device=dev)

        def fb_block() -> float:
            sync()
            t0 = time.perf_counter()
            for _ in range(fb_reps):
                model.zero_grad(set_to_none=True)
                _, loss = model(x, x)
                loss.backward()
            sync()
            return (time.perf_counter() - t0) / fb_reps

        fb_block()
        fb_times: List[float] = []
        load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        rng = random.Random(seed)
        order = list(arms) + ["forward_backward"]
        t_start = time.perf_counter()
        for r in range(repeats):
            rng.shuffle(order)
            for name in order:
                if name == "forward_backward":
                    fb_times.append(fb_block())
                    continue
                arm = arms[name]
                f = int(name.split("_f")[1]) if "_f" in name else 1
                n = int(math.ceil(window / f) * f)
                sync()
                t0 = time.perf_counter()
                steps_of(arm, n)
                sync()
                arm["times"].append((time.perf_counter() - t0) / n)
                arm["steps"] += n
            if log:
                log(f"overhead: repeat {r + 1}/{repeats} done ({time.perf_counter() - t_start:.0f}s)")
        load_end = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    finally:
        torch.set_num_threads(old_threads)

    def med(v):
        v = sorted(v)
        n = len(v)
        return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])

    t_adam = med(arms["adamw"]["times"])
    t_fb = med(fb_times)
    step = t_fb + t_adam
    summary = []
    for f in fs:
        ts = arms[f"soap_f{f}"]["times"]
        summary.append({
            "f": f, "soap_step_s": med(ts), "soap_step_s_min": min(ts), "soap_step_s_max": max(ts),
            "opt_ratio": med(ts) / t_adam,
            "overhead_pct": 100 * (med(ts) - t_adam) / step,
            "overhead_pct_lo": 100 * (min(ts) - t_adam) / step,
            "overhead_pct_hi": 100 * (max(ts) - t_adam) / step,
            "refreshes_per_step": 1.0 / f,
        })
    n_params = sum(math.prod(s) for s in shapes)
    return {
        "schema": 1,
        "params": {"scale": sc.name, "preset": sc.preset, "tokenizer": sc.tokenizer, "batch_size": sc.batch_size,
                   "seq_len": cfg.seq_len, "frequencies": fs, "repeats": repeats, "window": window,
                   "fb_reps": fb_reps, "threads": threads or old_threads, "device": str(dev), "refresh": refresh,
                   "seed": seed, "shampoo": bool(shampoo), "n_params": n_params, "n_matrices": sum(len(s) == 2 for s in shapes),
                   "shapes": [list(s) for s in shapes]},
        "adamw_step_s": t_adam,
        "forward_backward_s": t_fb,
        "adamw_times": arms["adamw"]["times"],
        "forward_backward_times": fb_times,
        "soap_times": {str(f): arms[f"soap_f{f}"]["times"] for f in fs},
        **({"shampoo_times": {str(f): arms[f"shampoo_f{f}"]["times"] for f in fs}} if shampoo else {}),
        "summary": summary,
        "fit": fit_floor([r["f"] for r in summary], [r["overhead_pct"] for r in summary]),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "provenance": provenance(str(dev)),
    }


def run(scale: Any = "cpu", path: Optional[os.PathLike] = None, **kw: Any) -> Path:
    """Run :func:`timing_study` and store it as JSON (default ``data/overhead/overhead_<scale>.json``)."""
    data = timing_study(scale, **kw)
    out = Path(path) if path is not None else default_path(data["params"]["scale"])
    return datasets.save_json(data, out)
