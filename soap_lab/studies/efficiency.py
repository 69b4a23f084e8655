"""Efficiency (paper Figs. 1 left/middle, 2, 3): how many fewer steps, and how much less wall-clock, does SOAP need
than AdamW and Shampoo?

Protocol (§3): a cosine run cannot be cut short, so SOAP (f = ``scale.base_frequency``) also runs at fractions of
the step budget, each with its own full schedule. Per seed, its final losses are fitted with L(N) = a + b·N^(−β)
and solved for N*, where the fit meets the same seed's AdamW (Shampoo) final loss at the full budget N
(:func:`solve_seeds`; N* to 6 significant digits, the figures' curves to 5: the same on any CPU). Steps saved
1 − N*/N (−1 where the fit never reaches it): "≥ 40% fewer steps than AdamW" (> 0.40, the headline), "fewer than
Shampoo" (> 0). A solve outside SOAP's measured budgets (smallest ≤ N* ≤ N) is an extrapolation: rows list those
seeds (``outside``) and say how many (``note``, issue 23). Wall-clock saved 1 − (1 − steps saved)·r, r the
training-step time ratio of each round of the stored timing study (``data/overhead/overhead_<scale>.json``), with a
Bonferroni interval over seeds × rounds: "≥ 35% less wall-clock than AdamW", "less than Shampoo".

Grid (``PARAMS``): AdamW and Shampoo at the full budget, SOAP at every budget fraction, at the reference batch, every
seed. At ``cpu_freq`` the fractions reach down to 0.25 so that every solve lands inside the measured range.
:mod:`soap_lab.studies.batch_size` solves the same fit at every batch size.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .. import stats
from ..records import store
from ..figures.seeds import pm
from .base import Study, finite, run_config, tuned_lr
from .overhead import load_timing as timing
from .overhead import time_ratios

PARAMS = {"cpu_freq": dict(budget_fractions=(0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)),
          "*": dict(budget_fractions=(0.5, 0.625, 0.75, 0.875, 1.0))}
ADAMW_SAVING, ADAMW_WALLCLOCK, BASELINES = 0.40, 0.35, ("AdamW", "Shampoo")  # the paper: ≥ 40% steps, ≥ 35% time
SOLVE_DIGITS = 6  # significant digits of N* (so of every saving): another CPU's round-off in the fit stays below


def grid(scale, root=None) -> List[Any]:
    """AdamW and Shampoo at the full budget, SOAP at each of ``budget_fractions``; each for every seed."""
    lr = {o: tuned_lr(o, scale, root) for o in ("adamw", "shampoo", "soap")}
    arms = [("adamw", 1.0), ("shampoo", 1.0)] + [("soap", float(b)) for b in scale.param(PARAMS, "budget_fractions")]
    return [run_config(scale, root, o, lr[o], budget_fraction=b, seed=int(s)) for o, b in arms for s in scale.seeds]


# ============================================================================================= the fit
@dataclass(frozen=True)
class PowerLawFit:
    """L(N) = a + b·N^(−β) fitted to (steps, final loss) points."""

    a: float
    b: float
    beta: float

    def __call__(self, steps) -> np.ndarray:
        return self.a + self.b * np.asarray(steps, dtype=float) ** (-self.beta)

    def steps_to_reach(self, loss: float) -> float:
        """N with L(N) = loss; ``inf`` when ``loss`` is at or below the fitted asymptote ``a``."""
        return float("inf") if loss <= self.a else float((self.b / (loss - self.a)) ** (1.0 / self.beta))


def fit_power_law(steps: Sequence[float], losses: Sequence[float]) -> PowerLawFit:
    """Least-squares fit of a + b·N^(−β) (a ≥ 0, b ≥ 0, 0 < β ≤ 5). Needs ≥ 3 points with distinct N."""
    from scipy.optimize import curve_fit

    N, L = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    if N.shape != L.shape or len(np.unique(N)) < 3:
        raise ValueError(f"need at least 3 (steps, loss) points with distinct steps, got {len(np.unique(N))}")
    if not np.all(np.isfinite(L)) or np.any(N <= 0):
        raise ValueError("steps must be positive and losses finite")
    top, span = float(N.max()), float(L.max() - L.min()) or 1.0
    p0 = (max(float(L.min()) - span, 0.0), span, 1.0)
    (a, b, beta), _ = curve_fit(lambda n, a, b, beta: a + b * (n / top) ** (-beta), N, L, p0=p0,
                                bounds=([0.0, 0.0, 1e-3], [np.inf, np.inf, 5.0]), maxfev=20000)
    return PowerLawFit(float(a), float(b) * top**beta, float(beta))


@dataclass(frozen=True)
class Savings:
    """One solve of the fit for a baseline's final loss (fractions > 0 when SOAP is better, < 0 when worse)."""

    steps_needed: float  # N* (inf when the fit never reaches the target)
    full_steps: float  # the baseline's budget N
    steps_saved: float  # 1 − N*/N
    target_loss: float
    fit: PowerLawFit
    min_steps: float  # SOAP's smallest measured budget
    inside: bool  # min_steps ≤ N* ≤ N


def savings(steps: Sequence[float], losses: Sequence[float], target_loss: float, full_steps: float) -> Savings:
    """Fit SOAP's (steps, final loss) points, solve for the baseline's final loss (after ``full_steps``)."""
    fit = fit_power_law(steps, losses)
    n_star, full, low = fit.steps_to_reach(target_loss), float(full_steps), float(np.min(np.asarray(steps, float)))
    n_star = float(f"{n_star:.{SOLVE_DIGITS}g}")
    return Savings(n_star, full, 1.0 - n_star / full, float(target_loss), fit, low,
                   bool(math.isfinite(n_star) and low <= n_star <= full))


def final_losses(df, label: str, f: Optional[int] = None, budget: float = 1.0) -> Dict[int, Optional[float]]:
    """``{seed: final loss}`` of the runs labelled ``label`` at ``budget`` (and ``f``) in ``df`` (None: diverged)."""
    g = df[(df["label"] == label) & (df["budget_fraction"] == budget) & ((df["f"] == f) if f is not None else True)]
    return {int(s): (float(v) if finite(v) else None) for s, v in zip(g["seed"], g["final_val_loss"])}


def solve_seeds(df, f: int, base: str) -> Dict[int, Savings]:
    """Per seed, SOAP's final losses at ``f`` over its budgets fitted and solved for the same seed's ``base``
    ("AdamW", "Muon", or "Shampoo" at the same f) full-budget loss; seeds with < 3 SOAP budgets or no fit are left out.
    ``df``: the runs of one batch size."""
    full = df[df["budget_fraction"] == 1.0]
    steps = int(full["steps_total"].max()) if len(full) else 0
    out: Dict[int, Savings] = {}
    for seed, target in final_losses(df, base, f if base == "Shampoo" else None).items():
        soap = df[(df["label"] == "SOAP") & (df["seed"] == seed) & (df["f"] == f)]
        if target is None or soap["budget_fraction"].nunique() < 3:
            continue
        soap = soap[soap["final_val_loss"].map(finite)].sort_values("steps_total")
        try:
            with warnings.catch_warnings():  # 3-7 points for 3 parameters: scipy cannot estimate a covariance
                warnings.simplefilter("ignore")
                out[seed] = savings(soap["steps_total"].astype(float), soap["final_val_loss"].astype(float), target,
                                    steps)
        except (ValueError, RuntimeError):
            continue
    return out


def steps_saved(solves: Mapping[int, Savings]) -> Dict[int, float]:
    """``{seed: 1 − N*/N}``, −1 where the fit never reaches the target."""
    return {s: (v.steps_saved if math.isfinite(v.steps_needed) else -1.0) for s, v in solves.items()}


def flag(row: Dict[str, Any], *solves: Mapping[int, Savings]) -> Dict[str, Any]:
    """``row`` with ``outside`` (its seeds whose N* lies outside SOAP's measured budgets in any of ``solves``,
    never-reached ones included), ``unreached`` and ``note`` ("k of n seeds extrapolated", printed by the report)."""
    seeds, of = row["seeds"], lambda s: [sv[s] for sv in solves if s in sv]  # noqa: E731
    out = [s for s in seeds if not all(v.inside for v in of(s))]
    row.update(outside=out, unreached=[s for s in seeds if not all(math.isfinite(v.steps_needed) for v in of(s))],
               note=f"{len(out)} of {len(seeds)} seeds extrapolated" if out else "")
    return row


def saving_row(text: str, solves: Mapping[int, Savings], threshold: float, **keys) -> Dict[str, Any]:
    """The claim "steps saved > ``threshold``" over the seeds of ``solves``, flagged (:func:`flag`)."""
    return flag(stats.claim(text, steps_saved(solves), "greater", threshold, unit="saved", **keys), solves)


# ============================================================================================ the claims
def efficiency_claims(df, f: int, batch_size: int) -> List[Dict[str, Any]]:
    """Steps saved per seed against AdamW (≥ 40%, the headline) and Shampoo (> 0), ``df`` at one batch size."""
    rows = []
    for base, text, threshold in (("AdamW", "SOAP needs ≥ 40% fewer steps than AdamW (saved > 0.40)", ADAMW_SAVING),
                                  ("Shampoo", "SOAP needs fewer steps than Shampoo (saved > 0)", 0.0)):
        if solves := solve_seeds(df, f, base):
            rows.append(saving_row(text, solves, threshold, where=f"steps vs {base}, batch {batch_size}, f = {f}",
                                   baseline=base, batch_size=batch_size, f=f, headline=base == "AdamW"))
    return rows


def wallclock_claims(df, f: int, timing: Optional[Mapping[str, Any]], batch_size: int,
                     level: float = 0.95) -> List[Dict[str, Any]]:
    """Wall-clock saved = 1 − (1 − steps saved)·(time-per-step ratio) against AdamW (paper: ≥ 35%) and Shampoo.

    Steps saved per seed (:func:`solve_seeds`), the ratio per round of the timing study (:func:`time_ratios`; not
    paired with the seeds). Bonferroni: a t-interval at level 1 − (1 − ``level``)/2 over the seeds and one over
    the rounds; the saving is monotone in both, so their corners hold it with probability ≥ ``level``. Per-seed
    values use the mean ratio. Nothing with fewer than 2 seeds or 2 rounds."""
    each, rows = 1 - (1 - level) / 2, []
    for base, text, threshold in (("AdamW", "SOAP needs ≥ 35% less wall-clock than AdamW (saved > 0.35)",
                                   ADAMW_WALLCLOCK), ("Shampoo", "SOAP needs less wall-clock than Shampoo (saved > 0)", 0.0)):
        solves, ratios = solve_seeds(df, f, base), time_ratios(timing, f, base)
        saved = steps_saved(solves)
        if len(saved) < 2 or len(ratios) < 2:
            continue
        s_iv, r_iv = stats.mean_interval(list(saved.values()), each), stats.mean_interval(ratios, each)
        iv = stats.Interval(1 - (1 - s_iv.mean) * r_iv.mean, 1 - (1 - s_iv.low) * r_iv.high,
                            1 - (1 - s_iv.high) * r_iv.low, s_iv.n, level, method="bonferroni")
        row = stats.claim(text, {s: 1 - (1 - v) * r_iv.mean for s, v in saved.items()}, "greater", threshold,
                          unit="saved", where=f"wall-clock vs {base}, batch {batch_size}, f = {f}", baseline=base, batch_size=batch_size,
                          f=f, time_ratio=r_iv.mean, time_ratio_low=r_iv.low, time_ratio_high=r_iv.high, rounds=r_iv.n)
        row.update(mean=iv.mean, low=iv.low, high=iv.high, verdict=stats.verdict(iv, "greater", threshold))
        rows.append(flag(row, solves))
    return rows


def claims(scale, root=None) -> List[Dict[str, Any]]:
    """Steps and wall-clock saved at the reference batch and f = ``scale.base_frequency``."""
    runs, f, bs = STUDY.data(scale, root).runs, int(scale.base_frequency), int(scale.batch_size)
    ref = runs[runs["batch_size"] == bs] if len(runs) else runs
    return efficiency_claims(ref, f, bs) + wallclock_claims(ref, f, timing(scale), bs) if len(ref) else []


def pool_step_times(sd, batch_size: int, frequency: Optional[int] = None) -> Dict[str, float]:
    """``{label: median over runs of each run's median step time}`` over *every* run of ``sd``'s pool at
    ``batch_size`` (and, for optimizers that take one, at ``frequency``), not only the study's: on a shared CPU one
    run's step time measures the machine as much as the optimizer."""
    from .base import _frame, label

    frame, labels = _frame(sd.scale.experiment, sd.root), {}
    for _, r in frame.iterrows():
        f = r.get("precondition_frequency")
        if int(r["batch_size"]) == int(batch_size) and (frequency is None or not finite(f) or int(f) == int(frequency)):
            hp = {k: r.get(f"hparams.{k}") for k in ("refresh", "refresh_policy") if isinstance(r.get(f"hparams.{k}"), str)}
            labels[r["run_id"]] = label({"optimizer": r["optimizer"], "hparams": hp})
    curves = store.curves(sd.scale.experiment, sd.root, which="train", with_config=False) if labels else []
    if not len(curves):
        return {}
    med = curves[curves["run_id"].isin(labels)].groupby("run_id")["step_time"].median()
    med = med[med.map(finite)]
    return {str(k): float(g.median()) for k, g in med.groupby(med.index.map(labels), sort=True)}


# =============================================================================================== figures
def draw_comparison(data: Mapping[str, Any], out, name: str = "comparison"):
    """Paper Figs. 1 left/middle and 3: validation loss vs steps and vs wall-clock (training time) for AdamW, Shampoo
    and SOAP at the reference batch, SOAP's shorter schedules dashed. Each seed thin, the mean over seeds bold (vs the
    mean time of each evaluation) with its 95% interval as a band (full budget); one seed: its curves, n = 1."""
    from ..figures import seeds as S
    from ..figures import style

    with style.style():
        fig, axes, present, notes = style.panel_rows(data, 2, width=4.9, height=3.6)
        lines: List[str] = []
        for row, key in enumerate(present):
            sd = data[key]
            runs, val = sd.runs[sd.runs["batch_size"] == sd.scale.batch_size], sd.curves("val")
            multi, tops, ns = len(S.seeds_of(sd.runs)) > 1, [], []
            first = {lb: i for i, lb in reversed(list(enumerate(runs["label"])))}  # the grid's order of optimizers
            groups = sorted(runs.groupby(["budget_fraction", "label"], sort=True),
                            key=lambda kv: (-float(kv[0][0]), first[kv[0][1]]))
            for (budget, lab), g in groups:
                full, c = float(budget) == 1.0, style.color(lab)
                cur = val[val["run_id"].isin(g["run_id"])].sort_values(["run_id", "step"])
                text = ((lab + (": mean ± 95% CI (band)" if multi else "")) if full else
                        f"SOAP, {float(budget):g} of the budget" + (" (mean)" if multi else ""))
                tops += [float(cr[cr["step"] >= cr["step"].max() / 3]["val_loss"].max()) for _, cr in cur.groupby("run_id")]
                for col, x in enumerate(("step", "time") if len(cur) else ()):
                    for _, cr in cur.groupby("run_id", sort=True) if multi else ():
                        axes[row, col].plot(cr[x], cr["val_loss"], color=c, lw=0.6, alpha=S.SEED_ALPHA / (1 if full else 2))
                    mc = S.mean_curve(cur, x)
                    ns += list(mc["n"])
                    axes[row, col].plot(mc["x"], mc["mean"], color=c, lw=1.8 if full else 0.9, ls="-" if full else "--",
                                        marker="o" if full else None, ms=2.5, alpha=1.0 if full else 0.8, label=text)
                    if full and multi:
                        axes[row, col].fill_between(mc["x"], mc["mean"] - mc["half"], mc["mean"] + mc["half"], color=c,
                                                    alpha=0.18, lw=0)
            lo = float(runs["final_val_loss"].astype(float).min())
            for col, what in enumerate(("steps", "wall-clock")):
                if tops and finite(lo):
                    axes[row, col].set_ylim(lo - 0.02 * (max(tops) - lo + 1e-9) - 0.01, max(tops))
                axes[row, col].set(ylabel="validation loss", title=f"Loss vs {what} {style.scale_tag(sd)}\n"
                                   f"{S.n_text(ns, where=' per curve')}", xlabel=("step", "training wall-clock (s, "
                                   "evaluation excluded)" + ("; mean over seeds" if multi else ""))[col])
            axes[row, 0].legend(fontsize=6.5)
            lines += [sd.caption(), style.noise_note(sd)]
            lines += [S.how_drawn(key) + "; the shorter schedules without a band"] if multi else []
        style.footer(fig, lines + notes)
        return style.save(fig, out, name)


def _pct(x: float) -> str:
    return f"{100 * x:+.0f}%"


def _more_less(x: float, what: str, fewer: str = "less", more: str = "more") -> str:
    return f"{what} n/a" if not finite(x) else f"{100 * abs(x):.0f}% {fewer if x >= 0 else more} {what}"


def _ci(r: Mapping[str, Any]) -> str:
    return f" (95% CI {_pct(r['low'])} to {_pct(r['high'])}, n = {r['n']})" if r["n"] > 1 else " (n = 1)"


def _texts(key: str, base: str, r, wall, ratio: Optional[float], pool: Mapping[str, float], losses) -> List[str]:
    """The panel's two lines on ``base`` and the footer's: steps saved; wall-clock saved with the timing study
    (Bonferroni over seeds × rounds; with one seed its mean ratio), else at the pool's median step times."""
    src = "timing study" if ratio is not None else "pool's step times"
    ratio = ratio if ratio is not None else pool["SOAP"] / pool[base] if "SOAP" in pool and base in pool else None
    w = (f"{_more_less(wall['mean'], 'wall-clock')}{_ci(wall)}" if wall else "wall-clock n/a" if ratio is None else
         _more_less(1 - (1 - r["mean"]) * ratio, "wall-clock")) + (f", {src} ×{ratio:.2f}" if ratio else "")
    note = f", {r['note']}" if r["note"] else ""
    m, h, k = losses
    return [f"vs {base}: {_more_less(r['mean'], 'steps', 'fewer', 'more')}{_ci(r)}{note}\n   {w}",
            f"[{key}] vs {base}: each seed's fit solved for the same seed's {base} final loss (mean {pm(m, h, k, 4)}): "
            f"steps saved {stats.format_interval(stats.mean_interval(r['values']))}; per seed "
            + ", ".join(f"{s}: {_pct(v)}" for s, v in zip(r["seeds"], r["values"]))
            + (f"; seed(s) {r['unreached']} never reach it (counted as −100%)" if r["unreached"] else "")
            + (f"; {r['note']} (N* outside SOAP's measured budgets)" if note else "") + f"; wall-clock: {w}"]


def _efficiency_row(axes, key: str, sd) -> List[str]:
    from ..figures import seeds as S
    from ..figures import style

    f, bs = int(sd.scale.base_frequency), int(sd.scale.batch_size)
    runs = sd.runs[sd.runs["batch_size"] == bs]
    soap = runs[(runs["label"] == "SOAP") & (runs["f"] == f) & runs["final_val_loss"].map(finite)]
    pool, n, ov = pool_step_times(sd, bs, f), len(S.seeds_of(soap)), timing(sd.scale)
    walls = {r["baseline"]: r for r in wallclock_claims(runs, f, ov, bs)}
    texts, lines, drawn = [], [sd.caption()], {}
    for base in BASELINES:
        losses = [v for v in final_losses(runs, base, None if base == "AdamW" else f).values() if finite(v)]
        drawn[base] = (S.mean_ci(losses), solve_seeds(runs, f, base) if losses else {})
        if not drawn[base][1]:
            texts.append(f"vs {base}: " + ("no fit" if losses else "no finished run"))
            continue
        ratios = time_ratios(ov, f, base)
        t, line = _texts(key, base, saving_row("", drawn[base][1], 0.0), walls.get(base),
                         float(np.mean(ratios)) if ratios else None, pool, drawn[base][0])
        texts, lines = texts + [t], lines + [line]
    fits = dict(sorted({s: v.fit for _, sv in drawn.values() for s, v in sv.items()}.items()))  # one per seed
    t_soap, c_soap = pool.get("SOAP", float("nan")), style.color("SOAP")
    summ = S.summarize(soap, ["steps_total"])
    full = float(runs[runs["budget_fraction"] == 1.0]["steps_total"].max())
    for col, ax in enumerate(axes):
        sx = t_soap if col == 1 else 1.0
        if len(soap):
            lo, hi = float(soap["steps_total"].min()), float(soap["steps_total"].max())
            ax.axvspan(lo * sx, full * sx, color="0.92", lw=0, zorder=0, label="SOAP's measured budgets")
            ns = np.linspace(lo * 0.8, hi * 1.6, 200)
            for i, fit in enumerate(fits.values()):
                ax.plot(ns * sx, style.rounded(fit(ns)), color=c_soap, lw=S.SEED_LW if n > 1 else 1,
                        alpha=S.SEED_ALPHA + 0.2 if n > 1 else 1.0,
                        label=("fit a + b·N^-β" + (", one per seed" if n > 1 else "")) if i == 0 else None)
        ax.scatter(soap["steps_total"].astype(float) * sx, soap["final_val_loss"].astype(float), color=c_soap, s=12,
                   alpha=0.55 if n > 1 else 1.0, lw=0, zorder=3, label="SOAP final loss, one point per seed and budget")
        if n > 1:
            ax.errorbar(summ["steps_total"].astype(float) * sx, summ["mean"], yerr=summ["half"], color=c_soap,
                        marker="o", ls="none", capsize=3, zorder=4, label="SOAP: mean ± 95% CI per budget")
        for base, ((m, h, k), solves) in drawn.items():
            if not k:
                continue
            c = style.color(base)
            ax.axhline(m, color=c, ls="--", lw=1, label=f"{base} final {pm(m, h, k, 4)}")
            if h:
                ax.axhspan(m - h, m + h, color=c, alpha=0.12, lw=0)
            if col == 1 and base in pool:
                ax.scatter([full * pool[base]], [m], color=c, marker="s", zorder=3)
            reached = [v for v in solves.values() if math.isfinite(v.steps_needed)]
            if reached:  # where each seed's fit meets its own seed's baseline (hollow: extrapolated); the mean N*
                xs = np.atleast_1d(style.rounded([v.steps_needed for v in reached]))
                ys, ins = np.array([v.target_loss for v in reached]), np.array([v.inside for v in reached])
                ax.scatter(xs[ins] * sx, ys[ins], color=c, marker="x", s=16, lw=0.8, alpha=0.8, zorder=4)
                ax.scatter(xs[~ins] * sx, ys[~ins], facecolors="none", edgecolors=c, marker="o", s=22, lw=0.8, zorder=4)
                nm, nh = (style.rounded(v) for v in S.mean_ci(list(xs))[:2])
                ax.axvline(nm * sx, color=c, ls=":", lw=1)
                ax.errorbar([nm * sx], [m], xerr=[nh * sx], color=c, marker="|", ms=10, capsize=4, lw=1.5, zorder=5)
        ax.set(ylabel="final validation loss", xlabel=("steps N", "wall-clock (s) = N × the pool's median step time")[col],
               title=f"Efficiency fit, {('steps', 'wall-clock')[col]} {style.scale_tag(sd)}\n{S.n_text([n])}")
    axes[1].text(0.98, 0.97, "\n".join(texts), transform=axes[1].transAxes, ha="right", va="top", fontsize=6.5,
                 bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))
    axes[0].legend(fontsize=6.5)
    return lines + [style.noise_note(sd), (S.how_drawn(key) + "; " if n > 1 else f"[{key}] one seed (n = 1): no interval, "
                    "nothing decided; ") + "×: where a seed's fit meets its own baseline loss (its N*); ○: the same "
                    "outside SOAP's measured budgets (shaded; the fit extrapolated); dotted: the mean N*, its 95% "
                    "interval as whiskers"]


def draw_efficiency(data: Mapping[str, Any], out, name: str = "efficiency"):
    """Paper Fig. 2: SOAP's final losses at the budget fractions with each seed's fit a + b·N^-β and AdamW's and
    Shampoo's final losses, in steps (left) and wall-clock (right: × the pool's median step time); the steps and
    wall-clock saved (mean ± 95% CI over the seeds' solves), the solves outside SOAP's measured budgets hollow and
    counted. One seed is n = 1 (said so). What is drawn from a fit is rounded (``style.rounded``): any CPU, same bytes."""
    from ..figures import style

    with style.style():
        fig, axes, present, notes = style.panel_rows(data, 2, width=4.9, height=3.7)
        lines: List[str] = []
        for row, key in enumerate(present):
            lines += _efficiency_row(axes[row], key, data[key])
        style.footer(fig, lines + notes)
        return style.save(fig, out, name)


STUDY = Study(
    name="efficiency", order=30, paper="Figs. 1 left/middle, 2, 3",
    question="How many fewer steps (and how much less wall-clock) does SOAP need than AdamW and Shampoo?",
    params=PARAMS, grid=grid, claims=claims, figures={"comparison": draw_comparison, "efficiency": draw_efficiency})
