"""SOAP's time overhead over AdamW against the preconditioning frequency f, from the side-by-side timing study
(paper Fig. 7 left; ``soap_lab.overhead``, stored as ``data/overhead/overhead_<scale>.json``).

The timing study keeps one time per round for each arm (``soap_times[f]``, ``adamw_times``,
``forward_backward_times``; entry r of every list from the same interleaved round), so the figure is drawn per
round (:func:`rounds`): SOAP's extra time per training step in round r is
(SOAP step − AdamW step) / (forward+backward + AdamW step) of that round, in %. Each round is drawn thin, the
mean over rounds with its 95% Student-t interval (repeated measurements of one machine, not seeds), and the fit
c + b/f made per round (``overhead.fit_floor``) is summarised by the mean of c and b with their intervals. A
stored study without per-round times is drawn from its summary (median, min–max over repeats), as before.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from . import analysis, stats
from .plotting import color, footer, missing_hint, panel_rows, save, style
from .seedwise import SEED_ALPHA, SEED_LW, finite, mean_ci, n_text

__all__ = ["rounds", "round_fits", "plot_overhead"]


def rounds(d: Mapping[str, Any]) -> Optional[Dict[str, Dict[int, List[float]]]]:
    """``overhead.per_round``: overhead % and step ratio per round (None without per-round times)."""
    from .overhead import per_round

    return per_round(dict(d))


def round_fits(pct: Mapping[int, List[float]]) -> Dict[str, stats.Interval]:
    """The fit c + b/f made in each round (``overhead.round_fits``), summarised over rounds:
    ``{"floor_pct": c, "per_refresh_pct": b}`` as mean with its 95% t-interval (empty with fewer than 2 frequencies)."""
    from .overhead import round_fits as fits_per_round

    fits = fits_per_round(dict(pct))
    if not fits:
        return {}
    return {k: stats.mean_interval([ft[k] for ft in fits]) for k in ("floor_pct", "per_refresh_pct")}


def _per_round(ax, per: Mapping[int, List[float]], c, what: str) -> List[int]:
    """Each round thin, the mean over rounds with its 95% interval; returns the n of each point."""
    fs = sorted(per)
    n_rounds = len(per[fs[0]])
    for r in range(n_rounds):
        ax.plot(fs, [per[f][r] for f in fs], color=c, lw=SEED_LW, alpha=SEED_ALPHA, marker=".", ms=3,
                label="one timing round" if r == 0 else None)
    st = [mean_ci(per[f]) for f in fs]
    ax.errorbar(fs, [m for m, _, _ in st], yerr=[h for _, h, _ in st], color=c, marker="o", capsize=3, lw=1.5,
                label=f"{what}: mean ± 95% CI over rounds" if n_rounds > 1 else what)
    return [n for *_, n in st]


def _run_points(ax, sd) -> None:
    """The same overhead from the frequency study's recorded optimizer times, each SOAP run against the AdamW run
    of its seed (hollow markers; noisy on a shared machine)."""
    tr = analysis.frequency_table(sd)
    adam = {int(r["seed"]): r for _, r in tr[tr["optimizer"] == "adamw"].iterrows()}
    soap = tr[(tr["label"] == "SOAP") & tr["f"].notna()].sort_values(["seed", "f"])
    xs, ys = [], []
    for _, r in soap.iterrows():
        a = adam.get(int(r["seed"]))
        if a is None or not all(finite(v) for v in (a["opt_time_total"], a["wall_time"], r["opt_time_total"])):
            continue
        a_opt, a_step = float(a["opt_time_total"]) / float(a["steps_done"]), float(a["wall_time"]) / float(a["steps_done"])
        xs.append(float(r["f"]))
        ys.append(100 * (float(r["opt_time_total"]) / float(r["steps_done"]) - a_opt) / a_step)
    if xs:
        ax.scatter(xs, ys, facecolors="none", edgecolors=color("SOAP"), marker="o",
                   label="from the training runs' recorded optimizer time (noisy" +
                         ("; one per seed)" if len(adam) > 1 else ")"))


def _summary_left(ax, d, fs) -> None:
    rows = d["summary"]
    ov = np.array([r["overhead_pct"] for r in rows], float)
    lo = np.array([r.get("overhead_pct_lo", np.nan) for r in rows], float)
    hi = np.array([r.get("overhead_pct_hi", np.nan) for r in rows], float)
    ax.errorbar(fs, ov, yerr=[ov - lo, hi - ov] if np.isfinite(lo).all() else None, marker="o",
                color=color("SOAP"), capsize=3, label="timing study (median, min–max over repeats)")
    fit = d.get("fit")
    if fit:
        grid = np.geomspace(fs.min(), fs.max() * 1.5, 100)
        ax.plot(grid, fit["floor_pct"] + fit["per_refresh_pct"] / grid, color=color("SOAP"), ls=":", lw=1,
                label=f"fit {fit['floor_pct']:.1f}% + {fit['per_refresh_pct']:.1f}%/f")
        ax.axhline(fit["floor_pct"], color="0.5", ls="--", lw=0.8, label=f"floor {fit['floor_pct']:.1f}% (per-step matmuls)")


def _log_f(ax, fs) -> None:
    ax.set_xscale("log")
    ax.set_xticks(fs)
    ax.set_xticklabels([f"{int(f)}" for f in fs])
    ax.minorticks_off()
    ax.set_xlabel("precondition frequency f")


def plot_overhead(data: Mapping[str, Optional[Mapping[str, Any]]], figures_dir, name: str = "overhead",
                  runs: Optional[Mapping[str, Any]] = None) -> List[Path]:
    """Paper Fig. 7 left: SOAP's time overhead over AdamW vs f, from the timing study (``soap_lab.overhead``).

    Left: extra time per training step, as % of an AdamW training step (forward + backward + AdamW step): each
    timing round thin, the mean over rounds with its 95% interval, the fit c + b/f (c = the per-step floor) made
    per round and drawn at the mean of c and b, the floor's interval as a band. Right: optimizer-step time,
    SOAP / AdamW, per round and its mean. Hollow markers: the same overhead from the training runs' recorded
    optimizer times (frequency study, each seed against its own AdamW run), if given in ``runs``.
    """
    with style():
        fig, axes, present, _ = panel_rows(data, 2, width=4.8, height=3.6)
        notes = [f"scale {k}: no timing study (run `{missing_hint(k, timing=True)}`)" for k, v in data.items() if v is None]
        lines = []
        for row, key in enumerate(present):
            d, (ax, ax2) = data[key], axes[row]
            fs = np.array([r["f"] for r in d["summary"]], float)
            rr = rounds(d)
            if rr:
                ns = _per_round(ax, rr["pct"], color("SOAP"), "timing study")
                fits = round_fits(rr["pct"])
                if fits:
                    c, b = fits["floor_pct"], fits["per_refresh_pct"]
                    grid = np.geomspace(fs.min(), fs.max() * 1.5, 100)
                    ax.plot(grid, c.mean + b.mean / grid, color=color("SOAP"), ls=":", lw=1,
                            label=f"fit per round, mean: {c.mean:.1f}% + {b.mean:.1f}%/f")
                    ax.axhline(c.mean, color="0.5", ls="--", lw=0.8, label=f"floor {c.mean:.1f}% (per-step matmuls)")
                    if c.n > 1:
                        ax.axhspan(c.low, c.high, color="0.5", alpha=0.12, lw=0)
                    lines.append(f"[{key}] c + b/f fitted in each round: floor c = {stats.format_interval(c, 2)}, "
                                 f"b = {stats.format_interval(b, 2)} (% of a step; n = timing rounds)")
                _per_round(ax2, rr["ratio"], color("SOAP"), "SOAP / AdamW")
                nt = n_text(ns, unit="timing round")
            else:
                _summary_left(ax, d, fs)
                ax2.plot(fs, [r["opt_ratio"] for r in d["summary"]], marker="o", color=color("SOAP"))
                nt = f"median of {d['params'].get('repeats', '?')} repeats (no per-round times stored)"
            sd = runs.get(key) if runs else None
            if sd is not None:
                _run_points(ax, sd)
            for a in (ax, ax2):
                _log_f(a, fs)
            ax.set_ylabel("SOAP's extra time per step\n(% of an AdamW training step)")
            ax.set_title(f"SOAP's time overhead over AdamW [{key}]\n{nt}")
            ax.legend(fontsize=6.5)
            ax2.set_ylabel("optimizer step time, SOAP / AdamW")
            ax2.set_title(f"Optimizer step alone [{key}]\n{nt}")
            if rr:
                ax2.legend(fontsize=6.5)
            p, prov = d["params"], d.get("provenance", {})
            dev = prov.get("device", {})
            fit = d.get("fit")
            lines.append(f"[{key}] scale {key} (preset {p['preset']}: {p['n_matrices']} matrices, {p['n_params']:,} params; "
                         f"AdamW step {1e3 * d['adamw_step_s']:.2f} ms, forward+backward at batch {p['batch_size']}: "
                         f"{1e3 * d['forward_backward_s']:.0f} ms) · device {dev.get('type', '?')}: {dev.get('name', '?')}, "
                         f"{p['threads']} thread(s)")
            lines.append(f"[{key}] open-loop gradients, arms interleaved in one process, {p['repeats']} repeats × ≥{p['window']} steps; "
                         f"1-min load average {_load(d.get('loadavg_start'))} at the start, {_load(d.get('loadavg_end'))} at the end"
                         f" ({dev.get('cpu_count', '?')} CPUs)"
                         + (f"; the stored summary (medians over rounds) fits {fit['floor_pct']:.1f}% + "
                            f"{fit['per_refresh_pct']:.1f}%/f" if rr and fit else ""))
        footer(fig, lines + notes)
        return save(fig, figures_dir, name)


def _load(v) -> str:
    return f"{v[0]:.1f}" if v else "?"
