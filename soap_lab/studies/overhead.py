"""SOAP's time overhead over AdamW vs the preconditioning frequency f (paper Fig. 7 left): a study of measured data.

Question: does SOAP's extra time per training step fall with f toward a nonzero floor (the per-step projections
and factor updates)?

Protocol (the side-by-side timing study: the training runs' step times move with whatever else runs on a shared
machine): in one process, on the parameter shapes of the scale's model preset, with open-loop gradients (fixed
structured tensors), interleave blocks of AdamW steps, SOAP steps at each f (a whole number of refresh periods),
the paper's Shampoo baseline at each f, Muon, and forward+backward passes at the scale's batch; repeat the round
``timing_repeats`` times in a shuffled order, keeping every block's time (entry r of every list is round r).
Stored as ``data/overhead/overhead_<scale>.json`` (an overridden scale: ``out/overhead/``), never replaced without
``--force``; files stored before Muon was timed (no ``muon_times``) still load.

Overhead in round r at f = (SOAP step − AdamW step) / (forward+backward + AdamW step), in %. Claims: c + b/f
fitted in each round, "falls with f": b > 0, "toward a nonzero floor": c > 0, Student t over the rounds (repeated
measurements of one machine, not seeds). For other studies: :func:`time_ratios` (SOAP's training-step time over
AdamW's, Shampoo's or Muon's per round) and :func:`load_timing` (the stored study of a scale).
"""
from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .. import stats
from ..records import datasets, store
from .base import SHAMPOO_BASELINE, Study
from .params import ParameterError
from .scales import Scale, get_scale, is_registered

__all__ = ["PARAMS", "default_path", "timing_study", "measure", "load_timing", "fit_floor",
           "per_round", "round_fits", "time_ratios", "overhead_claims", "draw", "STUDY"]

_BASE = dict(timing_frequencies=(1, 3, 10, 30, 100), timing_repeats=3, timing_window=200, timing_fb_reps=4,
             timing_shampoo=True, timing_muon=True)
#: The timing study per scale (``cpu_freq``: as its stored study was measured: 15 rounds of 60-step blocks).
PARAMS = {"cpu": dict(_BASE),
          "cpu_freq": dict(_BASE, timing_frequencies=(1, 3, 10, 30), timing_repeats=15, timing_window=60,
                           timing_fb_reps=20),
          "*": dict(_BASE, timing_repeats=5)}


def default_path(scale: Any) -> Path:
    """``data/overhead/overhead_<scale>.json`` for a registered scale; an overridden one (``<name>-<hash>``) goes to
    ``out/overhead/`` (git-ignored). ``scale``: a :class:`Scale` or its name."""
    name = scale.name if isinstance(scale, Scale) else str(scale)
    overridden = (not is_registered(scale)) if isinstance(scale, Scale) else "-" in name
    return (store.REPO_ROOT / "out" / "overhead" if overridden else datasets.OVERHEAD_DIR) / f"overhead_{name}.json"


def _grads(shapes, k: int, seed: int, device):
    """``k`` open-loop gradients per shape, anisotropic (rotations matter), float32."""
    import torch

    g, out = torch.Generator().manual_seed(seed), []
    for s in shapes:
        row = []
        if len(s) == 2:
            A = torch.randn(s[0], s[0], generator=g) / s[0] ** 0.5
            B = torch.randn(s[1], s[1], generator=g) / s[1] ** 0.5
        for _ in range(k):
            x = torch.randn(*s, generator=g)
            row.append((1e-3 * (A @ x @ B + 0.1 * x if len(s) == 2 else x)).to(device))
        out.append(row)
    return out


def timing_study(scale: Any = "cpu", frequencies: Optional[Sequence[int]] = None, repeats: Optional[int] = None,
                 window: Optional[int] = None, fb_reps: Optional[int] = None, threads: Optional[int] = 1,
                 device: Optional[str] = None, refresh: str = "qr", seed: int = 0, shampoo: Optional[bool] = None,
                 muon: Optional[bool] = None, log: Optional[Callable[[str], None]] = print) -> Dict[str, Any]:
    """Time AdamW, SOAP(f), Shampoo(f) and Muon optimizer steps and forward+backward, interleaved (module docstring).

    ``scale``: a :class:`Scale` or a registered name; unset arguments come from its :data:`PARAMS`
    (``frequencies``, ``repeats``, ``window``: steps per block, rounded up to a multiple of f; ``fb_reps``;
    ``shampoo``/``muon``: also time the paper's Shampoo baseline at every f / Muon, stored as ``shampoo_times``,
    ``muon_times``). ``threads``: torch threads during the study (1 = as the CPU training runs)."""
    import torch

    from ..optim import build_optimizer
    from ..records.provenance import provenance
    from ..train import data, models

    sc = get_scale(scale) if isinstance(scale, str) else scale
    p = lambda v, key: sc.param(PARAMS, key) if v is None else v  # noqa: E731
    fs = [int(f) for f in p(frequencies, "timing_frequencies")]
    repeats, window, fb_reps = int(p(repeats, "timing_repeats")), int(p(window, "timing_window")), int(p(fb_reps, "timing_fb_reps"))
    shampoo, muon = bool(p(shampoo, "timing_shampoo")), bool(p(muon, "timing_muon"))
    if not fs:
        raise ValueError("frequencies is empty: give at least one precondition frequency, e.g. [1, 10, 100]")
    if any(f < 1 for f in fs):
        raise ValueError(f"precondition frequencies must be >= 1, got {fs}")
    if repeats < 1 or window < 1 or fb_reps < 1:
        raise ValueError("repeats, window and fb_reps must be >= 1")
    dev, old_threads = torch.device(device or sc.device), torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    try:
        cfg = models.gpt_config(sc.preset, data.get_tokenizer(sc.tokenizer, "austen").vocab_size)
        model = models.GPT(cfg).to(dev)
        shapes = [tuple(q.shape) for q in model.parameters()]
        grads = _grads(shapes, 4, seed, dev)
        arms: Dict[str, Dict[str, Any]] = {}

        def make_arm(name: str, opt_name: str, **kw):
            named = [(n, torch.nn.Parameter(q.detach().clone())) for n, q in model.named_parameters()]
            params = [q for _, q in named]
            arg = named if opt_name == "muon" else params  # Muon splits its parameters by name
            arms[name] = {"params": params, "opt": build_optimizer(opt_name, arg, lr=3e-3, betas=(0.95, 0.95), **kw),
                          "k": 0, "times": [], "f": kw.get("precondition_frequency", 1)}

        make_arm("adamw", "adamw")
        if muon:
            make_arm("muon", "muon")
        for f in fs:
            make_arm(f"soap_f{f}", "soap", precondition_frequency=f, refresh=refresh)
            if shampoo:
                make_arm(f"shampoo_f{f}", "shampoo", precondition_frequency=f, **SHAMPOO_BASELINE)

        def steps_of(arm: Dict[str, Any], n: int) -> None:
            for _ in range(n):
                for q, g in zip(arm["params"], grads):
                    q.grad = g[arm["k"] % 4]
                arm["opt"].step()
                arm["k"] += 1

        for arm in arms.values():
            steps_of(arm, arm["f"] + 1)  # warm up: the first call (SOAP: eigh, no update), one refresh period
        x = torch.randint(0, cfg.vocab_size, (sc.batch_size, cfg.seq_len), device=dev)

        def fb_block() -> float:
            sync()
            t0 = time.perf_counter()
            for _ in range(fb_reps):
                model.zero_grad(set_to_none=True)
                model(x, x)[1].backward()
            sync()
            return (time.perf_counter() - t0) / fb_reps

        fb_block()
        fb_times: List[float] = []
        load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        rng, order, t_start = random.Random(seed), list(arms) + ["forward_backward"], time.perf_counter()
        for r in range(repeats):
            rng.shuffle(order)
            for name in order:
                if name == "forward_backward":
                    fb_times.append(fb_block())
                    continue
                arm = arms[name]
                n = int(math.ceil(window / arm["f"]) * arm["f"])
                sync()
                t0 = time.perf_counter()
                steps_of(arm, n)
                sync()
                arm["times"].append((time.perf_counter() - t0) / n)
            if log:
                log(f"overhead: repeat {r + 1}/{repeats} done ({time.perf_counter() - t_start:.0f}s)")
        load_end = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    finally:
        torch.set_num_threads(old_threads)

    import statistics

    med = statistics.median
    t_adam, t_fb = med(arms["adamw"]["times"]), med(fb_times)
    step = t_fb + t_adam
    summary = []
    for f in fs:
        ts = arms[f"soap_f{f}"]["times"]
        summary.append({"f": f, "soap_step_s": med(ts), "soap_step_s_min": min(ts), "soap_step_s_max": max(ts),
                        "opt_ratio": med(ts) / t_adam, "overhead_pct": 100 * (med(ts) - t_adam) / step,
                        "overhead_pct_lo": 100 * (min(ts) - t_adam) / step,
                        "overhead_pct_hi": 100 * (max(ts) - t_adam) / step, "refreshes_per_step": 1.0 / f})
    return {
        "schema": 1,
        "params": {"scale": sc.name, "preset": sc.preset, "tokenizer": sc.tokenizer, "batch_size": sc.batch_size,
                   "seq_len": cfg.seq_len, "frequencies": fs, "repeats": repeats, "window": window,
                   "fb_reps": fb_reps, "threads": threads or old_threads, "device": str(dev), "refresh": refresh,
                   "seed": seed, "shampoo": shampoo, "muon": muon, "n_params": sum(math.prod(s) for s in shapes),
                   "n_matrices": sum(len(s) == 2 for s in shapes), "shapes": [list(s) for s in shapes]},
        "adamw_step_s": t_adam, "forward_backward_s": t_fb,
        "adamw_times": arms["adamw"]["times"], "forward_backward_times": fb_times,
        "soap_times": {str(f): arms[f"soap_f{f}"]["times"] for f in fs},
        **({"shampoo_times": {str(f): arms[f"shampoo_f{f}"]["times"] for f in fs}} if shampoo else {}),
        **({"muon_times": arms["muon"]["times"]} if muon else {}),
        "summary": summary, "fit": fit_floor([r["f"] for r in summary], [r["overhead_pct"] for r in summary]),
        "loadavg_start": load_start, "loadavg_end": load_end, "provenance": provenance(str(dev)),
    }


def measure(scale: Scale, force: bool = False, path: Optional[os.PathLike] = None, log=print, **kw: Any) -> Path:
    """Run :func:`timing_study` at ``scale`` and store it (default :func:`default_path`); a stored study is replaced
    only with ``force`` (one-line :class:`ParameterError` otherwise, checked before measuring)."""
    out = Path(path) if path is not None else default_path(scale)
    if out.exists() and not force:
        raise ParameterError(f"a timing study is stored at {out}: pass --force to measure it again (replaces it)")
    return datasets.save_json(timing_study(scale, log=log, **kw), out)


def load_timing(scale: Any) -> Optional[Dict[str, Any]]:
    """The stored timing study of ``scale`` (a :class:`Scale` or its name), or None."""
    path = default_path(scale)
    return store.read_record(path) if path.is_file() else None


# ============================================================================================ per round
def fit_floor(fs: Sequence[float], overhead_pct: Sequence[float]) -> Optional[Dict[str, float]]:
    """Least-squares fit of overhead(f) = c + b/f; None with fewer than 2 distinct f."""
    import numpy as np

    f, y = np.asarray(fs, float), np.asarray(overhead_pct, float)
    if len(np.unique(f)) < 2:
        return None
    (c, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(f), 1.0 / f], 1), y, rcond=None)
    return {"floor_pct": float(c), "per_refresh_pct": float(b)}


def per_round(study: Mapping[str, Any]) -> Optional[Dict[str, Dict[int, List[float]]]]:
    """Per round of a stored timing study: ``{"pct": {f: SOAP's extra time per training step in % of an AdamW
    training step}, "ratio": {f: SOAP step / AdamW step}}``; None without per-round times (or unequal lists)."""
    soap = study.get("soap_times") or {}
    adam, fb = study.get("adamw_times"), study.get("forward_backward_times")
    fs = sorted(int(f) for f in soap)
    if not fs or not adam or not fb or len(adam) != len(fb) or any(len(soap[str(f)]) != len(adam) for f in fs):
        return None
    return {"pct": {f: [100 * (s - a) / (b + a) for s, a, b in zip(soap[str(f)], adam, fb)] for f in fs},
            "ratio": {f: [s / a for s, a in zip(soap[str(f)], adam)] for f in fs}}


def round_fits(pct: Mapping[int, List[float]]) -> List[Dict[str, float]]:
    """:func:`fit_floor` made in each round of ``per_round(...)["pct"]`` (empty with fewer than 2 frequencies)."""
    fs = sorted(pct)
    return [fit_floor(fs, [pct[f][r] for f in fs]) for r in range(len(pct[fs[0]]))] if len(fs) >= 2 else []


BASES = ("AdamW", "Shampoo", "Muon")


def time_ratios(timing: Optional[Mapping[str, Any]], f: int, base: str = "AdamW") -> List[float]:
    """SOAP's training-step time at ``f`` over ``base``'s (AdamW, Shampoo at the same f, or Muon) in each round of a
    stored timing study: (forward+backward + SOAP step) / (forward+backward + base step), every time from the same
    round. Empty where the study lacks the arms (a study stored before Muon was timed has no ``muon_times``)."""
    if base not in BASES:
        raise ValueError(f"unknown base {base!r}; allowed: {', '.join(BASES)}")
    timing = timing or {}
    soap = (timing.get("soap_times") or {}).get(str(f))
    other = {"AdamW": timing.get("adamw_times"), "Muon": timing.get("muon_times"),
             "Shampoo": (timing.get("shampoo_times") or {}).get(str(f))}[base]
    fb = timing.get("forward_backward_times")
    if not (soap and other and fb) or not len(soap) == len(other) == len(fb):
        return []
    return [(t_fb + t_s) / (t_fb + t_o) for t_fb, t_s, t_o in zip(fb, soap, other)]


def overhead_claims(timing: Optional[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Fig. 7 left per round: c + b/f fitted in each round; "falls with f": b > 0, "a nonzero floor": c > 0."""
    per, rows = per_round(timing) if timing else None, []
    fits = dict(enumerate(round_fits(per["pct"]))) if per else {}
    for key, text in (("per_refresh_pct", "SOAP's overhead falls with f (b > 0 in c + b/f, % of a step)"),
                      ("floor_pct", "SOAP's overhead has a nonzero floor (c > 0 in c + b/f, % of a step)")):
        if fits:
            row = stats.claim(text, {r: fit[key] for r, fit in fits.items()}, "greater", 0.0, where="timing rounds",
                              unit="pct", headline=key == "floor_pct")
            rows.append({**row, "seeds": [], "rounds": row["n"]})
    return rows


def claims(scale, root=None) -> List[Dict[str, Any]]:
    return overhead_claims(load_timing(scale))


# ================================================================================================ figure
def _per_round(ax, per: Mapping[int, List[float]], c, what: str, S, first: bool = True) -> List[int]:
    """Each round thin (named in the legend if ``first``), the mean over rounds with its 95% interval; returns the
    n of each point."""
    fs = sorted(per)
    for r in range(len(per[fs[0]])):
        ax.plot(fs, [per[f][r] for f in fs], color=c, lw=S.SEED_LW, alpha=S.SEED_ALPHA, marker=".", ms=3,
                label="one timing round" if r == 0 and first else None)
    st = [S.mean_ci(per[f]) for f in fs]
    ax.errorbar(fs, [m for m, _, _ in st], yerr=[h for _, h, _ in st], color=c, marker="o", capsize=3, lw=1.5,
                label=f"{what}: mean ± 95% CI over rounds" if len(per[fs[0]]) > 1 else what)
    return [n for *_, n in st]


def _run_points(ax, sd, style) -> None:
    """The same overhead from the frequency study's recorded optimizer times at the reference batch and steps, each
    SOAP run against the AdamW run of its seed (hollow markers; noisy on a shared machine)."""
    from ..figures.seeds import finite
    from .frequency import STUDY as FREQUENCY

    try:
        tr = FREQUENCY.data(sd.scale, sd.root).runs
    except store.MissingResults:
        return
    if not len(tr):
        return
    tr = tr[(tr["batch_size"] == sd.scale.batch_size) & (tr["steps"] == sd.scale.steps)]
    adam = {int(r["seed"]): r for _, r in tr[tr["optimizer"] == "adamw"].iterrows()}
    xs, ys = [], []
    for _, r in tr[(tr["label"] == "SOAP") & tr["f"].notna()].sort_values(["seed", "f"]).iterrows():
        a = adam.get(int(r["seed"]))
        if a is None or not all(finite(v) for v in (a["opt_time_total"], a["wall_time"], r["opt_time_total"])):
            continue
        a_opt, a_step = float(a["opt_time_total"]) / float(a["steps_done"]), float(a["wall_time"]) / float(a["steps_done"])
        xs.append(float(r["f"]))
        ys.append(100 * (float(r["opt_time_total"]) / float(r["steps_done"]) - a_opt) / a_step)
    if xs:
        ax.scatter(xs, ys, facecolors="none", edgecolors=style.color("SOAP"), marker="o",
                   label="from the training runs' recorded optimizer time (noisy" + ("; one per seed)" if len(adam) > 1 else ")"))


def draw(data: Mapping[str, Any], out, name: str = "overhead"):
    """Per scale with a stored timing study. Left: SOAP's extra time per training step (% of an AdamW training step):
    each round thin, the mean over rounds with its 95% interval, c + b/f fitted per round and drawn at the mean of c
    and b (the floor's interval as a band); hollow: the same from the frequency study's recorded optimizer times.
    Right: optimizer-step time over AdamW's per round, SOAP and (where timed) Shampoo at each f and Muon."""
    import numpy as np

    from ..figures import seeds as S
    from ..figures import style

    timings = {k: (load_timing(sd.scale) if sd is not None else None) for k, sd in data.items()}
    if not any(v is not None for v in timings.values()):
        raise store.MissingResults("overhead: no timing study stored: run " + " or ".join(
            f"`{style.missing_hint(k, 'overhead')}`" for k in data))
    with style.style():
        fig, axes, present, _ = style.panel_rows(timings, 2, width=4.8, height=3.6)
        notes = [f"scale {k}: no timing study (run `{style.missing_hint(k, 'overhead')}`)" for k, v in timings.items()
                 if v is None]
        lines = []
        for row, key in enumerate(present):
            d, (ax, ax2) = timings[key], axes[row]
            fs = np.array([r["f"] for r in d["summary"]], float)
            rr, fit = per_round(d), d.get("fit")
            if rr:
                nt = S.n_text(_per_round(ax, rr["pct"], style.color("SOAP"), "timing study", S), unit="timing round")
                fits = round_fits(rr["pct"])
                if fits:
                    c, b = (stats.mean_interval([ft[k] for ft in fits]) for k in ("floor_pct", "per_refresh_pct"))
                    grid = np.geomspace(fs.min(), fs.max() * 1.5, 100)
                    ax.plot(grid, c.mean + b.mean / grid, color=style.color("SOAP"), ls=":", lw=1,
                            label=f"fit per round, mean: {c.mean:.1f}% + {b.mean:.1f}%/f")
                    ax.axhline(c.mean, color="0.5", ls="--", lw=0.8, label=f"floor {c.mean:.1f}% (per-step matmuls)")
                    if c.n > 1:
                        ax.axhspan(c.low, c.high, color="0.5", alpha=0.12, lw=0)
                    lines.append(f"[{key}] c + b/f fitted in each round: floor c = {stats.format_interval(c, 2)}, "
                                 f"b = {stats.format_interval(b, 2)} (% of a step; n = timing rounds)")
                _per_round(ax2, rr["ratio"], style.color("SOAP"), "SOAP / AdamW", S)
                adam = d["adamw_times"]
                if d.get("shampoo_times"):
                    sh = {int(f): [s / a for s, a in zip(v, adam)] for f, v in d["shampoo_times"].items()}
                    _per_round(ax2, sh, style.color("Shampoo"), "Shampoo / AdamW", S, first=False)
                if d.get("muon_times"):
                    m, h, n = S.mean_ci([t / a for t, a in zip(d["muon_times"], adam)])
                    ax2.axhline(m, color=style.color("Muon"), ls="--", lw=1.2, label=f"Muon / AdamW (no f): {S.pm(m, h, n, 2)}")
                    if h:
                        ax2.axhspan(m - h, m + h, color=style.color("Muon"), alpha=0.15, lw=0)
                ax2.legend(fontsize=6.5)
            else:  # a study stored without per-round times: its summary (medians over repeats)
                ax.plot(fs, [r["overhead_pct"] for r in d["summary"]], marker="o", color=style.color("SOAP"),
                        label="timing study (median over repeats)")
                ax2.plot(fs, [r["opt_ratio"] for r in d["summary"]], marker="o", color=style.color("SOAP"))
                nt = f"median of {d['params'].get('repeats', '?')} repeats (no per-round times stored)"
            if data[key] is not None:
                _run_points(ax, data[key], style)
            for a in (ax, ax2):
                style.log_axis(a, fs, [f"{int(f)}" for f in fs])
                a.set_xlabel("precondition frequency f")
            ax.set_ylabel("SOAP's extra time per step\n(% of an AdamW training step)")
            ax.set_title(f"SOAP's time overhead over AdamW [{key}]\n{nt}")
            ax.legend(fontsize=6.5)
            ax2.set_ylabel("optimizer step time / AdamW's")
            ax2.set_title(f"Optimizer step alone [{key}]\n{nt}")
            p, dev = d["params"], d.get("provenance", {}).get("device", {})
            load = lambda v: f"{v[0]:.1f}" if v else "?"  # noqa: E731
            lines.append(f"[{key}] scale {key} (preset {p['preset']}: {p['n_matrices']} matrices, {p['n_params']:,} params; "
                         f"AdamW step {1e3 * d['adamw_step_s']:.2f} ms, forward+backward at batch {p['batch_size']}: "
                         f"{1e3 * d['forward_backward_s']:.0f} ms) · device {dev.get('type', '?')}: {dev.get('name', '?')}, "
                         f"{p['threads']} thread(s)")
            lines.append(f"[{key}] open-loop gradients, arms interleaved in one process, {p['repeats']} repeats × ≥{p['window']} "
                         f"steps; 1-min load average {load(d.get('loadavg_start'))} at the start, {load(d.get('loadavg_end'))} "
                         f"at the end ({dev.get('cpu_count', '?')} CPUs)" + ("" if d.get("muon_times") else "; Muon not timed")
                         + (f"; the stored summary (medians over rounds) fits {fit['floor_pct']:.1f}% + "
                            f"{fit['per_refresh_pct']:.1f}%/f" if rr and fit else ""))
        style.footer(fig, lines + notes)
        return style.save(fig, out, name)


STUDY = Study(
    name="overhead", order=70, paper="Fig. 7 left", tuned=False, params=PARAMS, measure=measure, claims=claims,
    question="Does SOAP's time overhead over AdamW fall with f toward a nonzero floor?", figures={"overhead": draw})
