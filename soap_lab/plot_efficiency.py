"""The efficiency figure (paper Fig. 2): SOAP's final losses at fractions of the step budget, the fit
a + b·N^-β, AdamW's and Shampoo's final losses, and the steps and wall-clock SOAP saves.

One seed (:func:`_row_single`, ``analysis.efficiency_table``): the budget-fraction points, their fit and the
baselines' final losses, N* marked where the fit meets each; the savings are printed (or that the fit never
reaches a baseline). Several seeds (:func:`_row_seeded`, issue 11): each seed's points and fit drawn thin, the
mean over seeds at each budget with its 95% interval, the baselines' means with their intervals (bands), N* as
the mean over seeds with its interval (a vertical band); the steps saved are fitted per seed by
``seeded_claims.savings`` (each seed's fit solved for the same seed's baseline loss) and given as mean ± 95% CI.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from . import analysis, efficiency, seeded_claims, stats
from . import step_times as stt
from .plotting import caption, color, footer, noise_note, panel_rows, save, scale_tag, style
from .seedwise import SEED_ALPHA, SEED_LW, finite, how_drawn, mean_ci, n_text, pm, seeds_of, summarize

__all__ = ["plot_efficiency", "seed_fits"]

BASELINES = ("AdamW", "Shampoo")


def _more_less(x: Optional[float], what: str, fewer: str, more: str) -> str:
    if x is None or not math.isfinite(x):
        return f"{what} n/a"
    return f"{100 * x:.0f}% {fewer} {what}" if x >= 0 else f"{100 * -x:.0f}% {more} {what}"


def _efficiency_text(e: Mapping[str, Any], short: bool = False) -> str:
    base = e["baseline"]
    if "error" in e:
        return f"vs {base}: {e['error']}"
    if not e.get("reached"):
        if short:
            return f"vs {base}: fit never reaches {e['target']:.4f}"
        return (f"vs {base}: the fit never reaches {base}'s final loss {e['target']:.4f} "
                f"(fitted asymptote {e['fit']['a']:.4f}): no savings can be claimed")
    steps = _more_less(e["steps_saved"], "steps", "fewer", "more")
    w = e.get("wallclock")
    wall = _more_less(e.get("wallclock_saved"), "wall-clock", "less", "more")
    if w:  # the range the saving takes over the pool's step times; undecided when it straddles 0
        wall = (wall if w["decided"] else "wall-clock not decided") + f" ({100 * w['low']:+.0f}% to {100 * w['high']:+.0f}%)"
    if short:
        return f"vs {base}: {steps}, {wall}"
    return (f"vs {base}: the fit reaches {base}'s final loss {e['target']:.4f} at N* = {e['steps_needed']:.0f} "
            f"(budget {e['full_steps']} steps): SOAP needs {steps}, {wall}")


# ================================================================================================ one seed
def _row_single(axes, key: str, sd, ov) -> List[str]:
    eff = analysis.efficiency_table(sd)
    pts = eff[0]["points"] if eff else []
    t_soap = next((e.get("soap_step_time") for e in eff if e.get("soap_step_time")), None)
    fit = next((e.get("fit") for e in eff if e.get("fit")), None)
    for col, ax in enumerate(axes):
        xs = np.array([p[0] for p in pts], float)
        ys = np.array([p[1] for p in pts], float)
        scale_x = (t_soap or float("nan")) if col == 1 else 1.0
        ax.scatter(xs * scale_x, ys, color=color("SOAP"), zorder=3, label="SOAP final loss (budget fractions)")
        if fit is not None and len(xs):
            grid = np.linspace(xs.min() * 0.8, xs.max() * 1.6, 200)
            ax.plot(grid * scale_x, fit["a"] + fit["b"] * grid ** (-fit["beta"]), color=color("SOAP"), lw=1,
                    label=f"fit {fit['a']:.3f} + {fit['b']:.3g}·N^-{fit['beta']:.2f}")
        for e in eff:
            if "target" not in e:
                continue
            c = color(e["baseline"])
            ax.axhline(e["target"], color=c, ls="--", lw=1, label=f"{e['baseline']} final {e['target']:.4f}")
            if col == 1 and e.get("baseline_step_time"):
                ax.scatter([e["full_steps"] * e["baseline_step_time"]], [e["target"]], color=c, marker="s", zorder=3)
            if e.get("reached"):
                ax.axvline(e["steps_needed"] * scale_x, color=c, ls=":", lw=1)
    text = "\n".join(_efficiency_text(e, short=True) for e in eff)
    lines = [caption(sd)] + [f"[{key}] " + _efficiency_text(e) for e in eff] + [noise_note(sd)]
    e = next((e for e in eff if e["baseline"] == "AdamW" and e.get("reached")), None)
    ratio = analysis.step_time_ratio(ov, sd.scale.base_frequency) if ov else None
    if e is not None and ratio is not None:
        wall = 1 - e["step_fraction"] * ratio
        lines.append(f"[{key}] with the timing study's step-time ratio instead (SOAP f={sd.scale.base_frequency} "
                     f"vs AdamW training step: ×{ratio:.3f}): {_more_less(wall, 'wall-clock', 'less', 'more')} than AdamW")
    return _finish(axes, text, lines)


def _finish(axes, text: str, lines: List[str]) -> List[str]:
    axes[1].text(0.98, 0.97, text, transform=axes[1].transAxes, ha="right", va="top", fontsize=6.5,
                 bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))
    for ax in axes:
        ax.set_ylabel("final validation loss")
    axes[0].legend(fontsize=6.5)
    return lines


# ============================================================================================ several seeds
def seed_fits(runs, f: int) -> Dict[int, efficiency.PowerLawFit]:
    """``{seed: fit a + b·N^-β}`` of SOAP's final losses over its budget fractions at ``f``, per seed with ≥ 3 budgets
    (the fit ``seeded_claims.savings`` solves; parameters to 5 significant digits, so the figure is the same bytes
    on any CPU)."""
    out: Dict[int, efficiency.PowerLawFit] = {}
    soap = runs[(runs["label"] == "SOAP") & (runs["f"] == f) & runs["final_val_loss"].map(finite)]
    for seed, g in soap.groupby("seed", sort=True):
        if g["budget_fraction"].nunique() < 3:
            continue
        try:
            with warnings.catch_warnings():  # 3-5 points for 3 parameters: scipy cannot estimate a covariance
                warnings.simplefilter("ignore")
                fit = efficiency.fit_power_law(g["steps_total"].astype(float), g["final_val_loss"].astype(float))
        except (ValueError, RuntimeError):
            continue
        out[int(seed)] = efficiency.PowerLawFit(*(float(f"{v:.5g}") for v in (fit.a, fit.b, fit.beta)))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:+.0f}%"


def _saved_text(base: str, iv: stats.Interval, unreached: List[int]) -> str:
    what = _more_less(iv.mean, "steps", "fewer", "more")
    ci = f" (95% CI {_pct(iv.low)} to {_pct(iv.high)}, n = {iv.n})" if iv.n > 1 else " (n = 1)"
    return f"vs {base}: {what}{ci}" + (f", {len(unreached)} seed(s) never reach" if unreached else "")


def _wall(iv: stats.Interval, saved: Mapping[int, float], pool: Mapping[str, Any], base: str):
    """The wall-clock saving at the pool's median step times (mean over seeds), and its range over the seeds'
    interval and the pool's step-time range, decided when that range has one sign; None without step times."""
    ps, pb = pool.get("SOAP"), pool.get(base)
    if not (ps and pb):
        return None
    mid = float(np.mean([stt.wallclock_saving(1 - v, ps, pb).mid for v in saved.values()]))
    lo_f, hi_f = (iv.low, iv.high) if iv.n > 1 else (iv.mean, iv.mean)
    low, high = stt.wallclock_saving(1 - lo_f, ps, pb).low, stt.wallclock_saving(1 - hi_f, ps, pb).high
    return mid, low, high, (low > 0) == (high > 0) and low != 0


def _wall_text(w) -> str:
    if w is None:
        return "wall-clock n/a (no step times)"
    mid, low, high, decided = w
    return (_more_less(mid, "wall-clock", "less", "more") if decided else "wall-clock not decided") + \
        f" ({_pct(low)} to {_pct(high)})"


def _row_seeded(axes, key: str, sd, ov) -> List[str]:
    scale, runs = sd.scale, sd.runs[sd.runs["batch_size"] == sd.scale.batch_size]
    f, bs = int(scale.base_frequency), int(scale.batch_size)
    soap = runs[(runs["label"] == "SOAP") & (runs["f"] == f) & runs["final_val_loss"].map(finite)]
    pool = {lab: stt.pool_step_times(sd, lab, bs, f) for lab in ("SOAP", *BASELINES)}
    t_soap = pool["SOAP"].median if pool["SOAP"] else float("nan")
    fits = seed_fits(runs, f)
    summ = summarize(soap, ["steps_total"])
    full = int(runs[runs["budget_fraction"] == 1.0]["steps_total"].max())
    base_stats, texts, lines, b_seeds, b_vals = {}, [], [caption(sd)], {}, {}
    for base in BASELINES:
        b = runs[(runs["label"] == base) & (runs["budget_fraction"] == 1.0)]
        b = b[b["f"] == f] if base != "AdamW" else b
        b = b.sort_values("seed")
        vals = b["final_val_loss"].tolist()
        b_seeds[base], b_vals[base] = [int(x) for x in b["seed"]], [float(v) for v in vals]
        if not any(finite(v) for v in vals):
            texts.append(f"vs {base}: no finished run")
            continue
        saved = seeded_claims.savings(runs, f, base)
        base_stats[base] = (mean_ci(vals), saved)
        if not saved:
            texts.append(f"vs {base}: no fit")
            continue
        iv = stats.mean_interval(list(saved.values()))
        unreached = [s for s, v in saved.items() if v == -1.0]
        w = _wall(iv, saved, pool, base)
        texts.append(_saved_text(base, iv, unreached) + "\n   " + _wall_text(w))
        m, h, n = base_stats[base][0]
        lines.append(f"[{key}] vs {base}: each seed's fit solved for the same seed's {base} final loss (mean "
                     f"{pm(m, h, n, 4)}): steps saved {stats.format_interval(iv)}; per seed "
                     + ", ".join(f"{s}: {_pct(v)}" for s, v in saved.items())
                     + (f"; seed(s) {unreached} never reach it (counted as −100%)" if unreached else ""))
        if w is not None:
            lines.append(f"[{key}] vs {base}: wall-clock saved at the pool's median step times {_pct(w[0])} (mean over "
                         f"seeds); over the seeds' 95% CI × the pool's step-time range {_pct(w[1])} to {_pct(w[2])}: "
                         + ("decided" if w[3] else "not decided"))
    for col, ax in enumerate(axes):
        sx = t_soap if col == 1 else 1.0
        ax.scatter(soap["steps_total"].astype(float) * sx, soap["final_val_loss"].astype(float), color=color("SOAP"),
                   s=12, alpha=0.55, lw=0, zorder=3, label="SOAP final loss, one point per seed and budget")
        ax.errorbar(summ["steps_total"].astype(float) * sx, summ["mean"], yerr=summ["half"], color=color("SOAP"),
                    marker="o", ls="none", capsize=3, zorder=4, label="SOAP: mean ± 95% CI per budget")
        if len(soap):
            grid = np.linspace(float(soap["steps_total"].min()) * 0.8, float(soap["steps_total"].max()) * 1.6, 200)
            for i, (seed, fit) in enumerate(fits.items()):
                ax.plot(grid * sx, fit(grid), color=color("SOAP"), lw=SEED_LW, alpha=SEED_ALPHA + 0.2,
                        label="fit a + b·N^-β, one per seed" if i == 0 else None)
        for base, ((m, h, n), saved) in base_stats.items():
            c = color(base)
            ax.axhline(m, color=c, ls="--", lw=1, label=f"{base} final {pm(m, h, n, 4)}")
            if h:
                ax.axhspan(m - h, m + h, color=c, alpha=0.12, lw=0)
            if col == 1 and pool.get(base):
                ax.scatter([full * pool[base].median], [m], color=c, marker="s", zorder=3)
            targets = dict(zip(b_seeds[base], b_vals[base]))
            reached = {s: float(f"{(1 - v) * full:.5g}") for s, v in saved.items() if v != -1.0}  # any CPU
            if reached:  # where each seed's fit meets its own seed's baseline; the mean N* with its interval
                ax.scatter([n_s * sx for n_s in reached.values()], [targets[s] for s in reached], color=c, marker="x",
                           s=16, lw=0.8, alpha=0.8, zorder=4)
                nm, nh, _ = mean_ci(list(reached.values()))
                ax.axvline(nm * sx, color=c, ls=":", lw=1)
                ax.errorbar([nm * sx], [m], xerr=[nh * sx], color=c, marker="|", ms=10, capsize=4, lw=1.5, zorder=5)
    lines += [noise_note(sd), how_drawn(key) + "; ×: where each seed's fit meets its own baseline loss (N* of that seed); "
              "dotted verticals: the mean N* over seeds, its 95% interval as horizontal whiskers on the baseline's mean"]
    lines += _timing_lines(key, runs, f, ov, base_stats)
    return _finish(axes, "\n".join(texts), lines)


def _timing_lines(key: str, runs, f: int, ov, base_stats) -> List[str]:
    """The wall-clock saving with the timing study's step-time ratio: a Bonferroni interval over seeds and timing
    rounds (``seeded_claims.wallclock_claims``) where it has several rounds, else the median ratio."""
    if not ov:
        return []
    out = []
    for r in seeded_claims.wallclock_claims(runs, f, ov):
        out.append(f"[{key}] with the timing study's step-time ratio ({r['baseline']}: ×{r['time_ratio']:.3f}, "
                   f"{r['rounds']} rounds): wall-clock saved {r['mean']:+.3f} (95% CI [{r['low']:+.3f}, {r['high']:+.3f}], "
                   f"Bonferroni over {r['n']} seeds and the rounds)")
    ratio = analysis.step_time_ratio(ov, f)
    if not out and ratio is not None and "AdamW" in base_stats and base_stats["AdamW"][1]:
        m = mean_ci(list(base_stats["AdamW"][1].values()))[0]
        out.append(f"[{key}] with the timing study's step-time ratio (SOAP f={f} vs AdamW training step: ×{ratio:.3f}): "
                   f"{_more_less(1 - (1 - m) * ratio, 'wall-clock', 'less', 'more')} than AdamW (mean over seeds)")
    return out


# ================================================================================================= figure
def plot_efficiency(data: Mapping[str, Any], figures_dir, name: str = "efficiency",
                    overhead: Optional[Mapping[str, Any]] = None) -> List[Path]:
    """Paper Fig. 2: SOAP's final losses at budget fractions, the fit a + b·N^-β, AdamW's and Shampoo's losses.

    Left: in steps; right: in wall-clock (steps × the pool's median recorded step time). The savings (or that
    the fit never reaches a baseline) are printed on the figure; with several seeds, each seed's points and fit
    thin, the means with their 95% intervals, and the steps saved as mean ± 95% CI over the per-seed fits. With
    ``overhead`` (``{scale: timing study}``) the wall-clock saving vs AdamW is also given with the timing study's
    cleaner step-time ratio.
    """
    with style():
        fig, axes, present, notes = panel_rows(data, 2, width=4.9, height=3.7)
        lines: List[str] = []
        for row, key in enumerate(present):
            sd = data[key]
            seeds = seeds_of(sd.runs)
            ov = (overhead or {}).get(key)
            lines += (_row_seeded if len(seeds) > 1 else _row_single)(axes[row], key, sd, ov)
            nt = n_text([len(seeds)])
            axes[row, 0].set_title(f"Efficiency fit, steps {scale_tag(sd)}\n{nt}")
            axes[row, 1].set_title(f"Efficiency fit, wall-clock {scale_tag(sd)}\n{nt}")
            axes[row, 0].set_xlabel("steps N")
            axes[row, 1].set_xlabel("wall-clock (s) = N × median step time")
        footer(fig, lines + notes)
        return save(fig, figures_dir, name)
