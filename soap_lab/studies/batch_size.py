"""Batch size (paper Fig. 4): does SOAP's advantage grow with batch size?

Protocol: AdamW and SOAP at every batch of ``batch_sizes`` (sequences per step) for the same number of steps, SOAP's
f scaled with 1/batch as in the paper (f = 10 at 2M tokens, 80 at 256k): f(b) = max(1, round(base_frequency ·
batch_size / b)) (:func:`batch_frequency`). The paper's form (where ``budget_fractions`` is not empty): SOAP also at
those fractions of the budget at every batch, and Shampoo at the smallest batch (Fig. 4 right).

Claims, per seed (the same seed: the same init and data order): final losses at equal steps, d(b) = SOAP − AdamW
< 0 at each b and d(largest) − d(smallest) < 0; in the paper's form, steps saved against AdamW at each b by the
efficiency protocol (:mod:`soap_lab.studies.efficiency`: SOAP's fit solved for the same seed's AdamW loss) > 0, their
growth saved(largest) − saved(smallest) > 0 (the headline), and steps saved against Shampoo at the smallest batch
> 0. A solve outside SOAP's measured budgets is flagged as in the efficiency study (``outside``, ``note``).

The figure: steps to reach the same seed's AdamW final loss at the smallest batch, vs batch size (from the
validation curves, linearly interpolated; ideal linear scaling dotted), the final losses, and the steps saved.
The one-seed ``cpu`` scale keeps its final-loss grid (``--set budget_fractions=...`` adds the paper's form).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import stats
from . import efficiency as E
from .base import MissingResults, Study, finite, run_config, tuned_lr

PARAMS = {"cpu": dict(batch_sizes=(8, 32, 128), budget_fractions=()),
          "cpu_freq": dict(batch_sizes=(8, 32, 128), budget_fractions=(0.25, 0.375, 0.5, 0.625, 0.75, 0.875)),
          "gpu": dict(batch_sizes=(16, 64, 256), budget_fractions=(0.5, 0.625, 0.75, 0.875)),
          "*": dict(batch_sizes=(8, 32, 128), budget_fractions=(0.5, 0.625, 0.75, 0.875))}


def batch_frequency(scale, batch_size: int) -> int:
    """SOAP's f at ``batch_size``: ``base_frequency`` at the reference batch, scaled with 1/batch (at least 1)."""
    return max(1, round(scale.base_frequency * scale.batch_size / batch_size))


def grid(scale, root=None) -> List[Any]:
    """AdamW and SOAP (f scaled with 1/batch) at every batch; SOAP at every budget fraction below 1 at every batch and
    Shampoo at the smallest batch (where there are fractions); each for every seed."""
    bss = [int(b) for b in scale.param(PARAMS, "batch_sizes")]
    fracs = [float(x) for x in scale.param(PARAMS, "budget_fractions") if float(x) < 1.0]
    arms = [(o, b, 1.0) for b in bss for o in ("adamw", "soap")] + [("soap", b, x) for b in bss for x in fracs]
    arms += [("shampoo", min(bss), 1.0)] if fracs else []
    lr = {o: tuned_lr(o, scale, root) for o in dict.fromkeys(o for o, _, _ in arms)}
    return [run_config(scale, root, o, lr[o], batch_size=b, budget_fraction=x, seed=int(s),
                       precondition_frequency=batch_frequency(scale, b)) for o, b, x in arms for s in scale.seeds]


# ============================================================================================ the claims
def _growth(per: Mapping[int, Mapping[int, float]], text: str, kind: str, what: str, **keys) -> List[Dict[str, Any]]:
    """The largest batch's per-seed value minus the smallest's (nothing with fewer than 2 batches)."""
    if len(per) < 2:
        return []
    lo, hi = min(per), max(per)
    d = stats.paired_differences(per[hi], per[lo])
    return [stats.claim(text.format(hi=hi, lo=lo), d, kind, where=f"{what}, batch {hi} vs {lo}", **keys)] if d else []


def claim_rows(df, scale) -> List[Dict[str, Any]]:
    """The claims of Fig. 4 on the runs of ``df`` (every batch), per seed, in the order of the module docstring."""
    bss = [int(b) for b in scale.param(PARAMS, "batch_sizes")]
    at = {b: df[df["batch_size"] == b] for b in bss}
    final = {b: d for b in bss if (d := stats.paired_differences(
        E.final_losses(at[b], "SOAP", batch_frequency(scale, b)), E.final_losses(at[b], "AdamW")))}
    rows = [stats.claim(f"SOAP beats AdamW at batch {b} (SOAP − AdamW < 0)", d, "less", where=f"final loss, batch {b}",
                        batch_size=b) for b, d in final.items()]
    rows += _growth(final, "SOAP's advantage grows with batch size (d({hi}) − d({lo}) < 0, d = SOAP − AdamW)", "less",
                    "final loss")
    solves = {b: s for b in bss if (s := E.solve_seeds(at[b], batch_frequency(scale, b), "AdamW"))}
    rows += [E.saving_row(f"SOAP needs fewer steps than AdamW at batch {b} (saved > 0)", s, 0.0,
                          where=f"steps vs AdamW, batch {b}", batch_size=b) for b, s in solves.items()]
    grow = _growth({b: E.steps_saved(s) for b, s in solves.items()}, "SOAP's step saving grows with batch size "
                   "(saved({hi}) − saved({lo}) > 0)", "greater", "steps vs AdamW", headline=True, unit="saved")
    rows += [E.flag(r, solves[min(solves)], solves[max(solves)]) for r in grow]  # extrapolated at either end
    if bss and (s := E.solve_seeds(at[min(bss)], batch_frequency(scale, min(bss)), "Shampoo")):
        rows.append(E.saving_row(f"SOAP needs fewer steps than Shampoo at batch {min(bss)} (saved > 0)", s, 0.0,
                                 where=f"steps vs Shampoo, batch {min(bss)}", batch_size=min(bss)))
    return rows


def claims(scale, root=None) -> List[Dict[str, Any]]:
    runs = STUDY.data(scale, root).runs
    return claim_rows(runs, scale) if len(runs) else []


# ================================================================================================ tables
def steps_to_target(steps: Sequence[float], losses: Sequence[float], target: float) -> Tuple[float, str]:
    """First step at which a validation curve reaches ``target`` (linear interpolation between evaluations):
    ``(step, how)``, how ``"interpolated"``, ``"first eval"`` (already below at the first evaluation: an upper
    bound) or ``"not reached"`` (step NaN)."""
    pts = sorted((float(s), float(v)) for s, v in zip(steps, losses) if finite(v))
    if not pts:
        return float("nan"), "not reached"
    if pts[0][1] <= target:
        return pts[0][0], "first eval"
    for (s0, l0), (s1, l1) in zip(pts, pts[1:]):
        if l1 <= target < l0:
            return s0 + (l0 - target) / (l0 - l1) * (s1 - s0), "interpolated"
    return float("nan"), "not reached"


def batch_size_table(sd, target: Optional[float] = None):
    """Steps to reach the target val loss per full-budget AdamW and SOAP run, with its final loss. Default target:
    AdamW's final val loss at the smallest batch of the same seed (a seed without it: how = "no target"). Columns:
    run_id, label, optimizer, seed, batch_size, f, final_val_loss, target, steps_to_target, how, tokens_to_target."""
    import pandas as pd

    runs = sd.runs[(sd.runs["budget_fraction"] == 1.0) & sd.runs["label"].isin(["AdamW", "SOAP"])]
    adam = runs[(runs["label"] == "AdamW") & runs["final_val_loss"].map(finite)]
    if target is None and not len(adam):
        raise MissingResults("the batch-size study has no finished AdamW run to define the target loss")
    targets = {int(s): float(g.sort_values("batch_size")["final_val_loss"].iloc[0]) for s, g in adam.groupby("seed")}
    val, rows = sd.curves("val"), []
    for _, r in runs.iterrows():
        t = float(target) if target is not None else targets.get(int(r["seed"]), float("nan"))
        c = val[val["run_id"] == r["run_id"]] if len(val) else val
        step, how = ((float("nan"), "no target") if not finite(t) else
                     steps_to_target(c["step"], c["val_loss"], t) if len(c) else (float("nan"), "not reached"))
        rows.append({"run_id": r["run_id"], "label": r["label"], "optimizer": r["optimizer"], "seed": int(r["seed"]),
                     "batch_size": int(r["batch_size"]), "f": r["f"], "final_val_loss": r["final_val_loss"],
                     "target": t, "steps_to_target": step, "how": how,
                     "tokens_to_target": step * float(r["tokens_per_step"]) if finite(step) else float("nan")})
    return pd.DataFrame(rows)


# ================================================================================================ figure
def _log2_batches(ax, bss) -> None:
    from ..figures import style

    style.log_axis(ax, bss, base=2)
    ax.set_xlabel("batch size (sequences per step)")


def _fewer_seeds(ax, xs, summ, n_max: int) -> None:
    """Write n next to the points that have fewer seeds than the panel's most."""
    for x, y, n in zip(xs, summ["mean"], summ["n"]):
        if 0 < n < n_max:
            ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(-6, -11), ha="right", fontsize=6.5,
                        color="0.3")


def _saved_panel(ax, sd, bss) -> List[str]:
    """Steps saved against AdamW per batch (and against Shampoo at the smallest) from the claims' solves: each seed
    small (hollow where extrapolated), the mean with its 95% interval. Returns the footer's lines: every claim."""
    from ..figures import seeds as S
    from ..figures import style

    rows = claim_rows(sd.runs, sd.scale)
    saved = [r for r in rows if r["claim"].startswith("SOAP needs fewer steps")]
    for base, dx in (("AdamW", 1.0), ("Shampoo", 1.08)):
        c = style.color(base)
        for i, r in enumerate(r for r in saved if f"than {base}" in r["claim"]):
            b, vals = r["batch_size"] * dx, style.rounded(r["values"])
            ins = [s not in r["outside"] for s in r["seeds"]]
            ax.scatter([b] * sum(ins), [v for v, k in zip(vals, ins) if k], color=c, s=12, alpha=0.6, lw=0, zorder=3)
            ax.scatter([b] * (len(ins) - sum(ins)), [v for v, k in zip(vals, ins) if not k], facecolors="none",
                       edgecolors=c, s=16, lw=0.8, zorder=3)
            ax.errorbar([b], [style.rounded(r["mean"])], yerr=[style.rounded(r["high"] - r["mean"]) if r["n"] > 1 else 0],
                        color=c, marker=style.MARKERS.get(base, "o"), capsize=3, zorder=4,
                        label=f"vs {base}: mean ± 95% CI" if i == 0 else None)
    _log2_batches(ax, bss)
    ax.set_ylabel("steps saved 1 − N*/N (efficiency fit)")
    ax.set_title(f"Steps saved vs batch size {style.scale_tag(sd)}\n{S.n_text([r['n'] for r in saved], where=' per point')}")
    if saved:
        ax.axhline(0.0, color="0.3", lw=0.8)
        ax.legend(fontsize=6.5, title="hollow: N* outside the measured budgets", title_fontsize=6.5)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"not measured at scale {sd.scale.name}:\nno budget fractions (--set budget_fractions=...)",
                ha="center", va="center", fontsize=8, transform=ax.transAxes)
    return [f"[{sd.scale.name}] {r['claim']}: {stats.format_interval(stats.Interval(r['mean'], r['low'], r['high'], r['n']))}"
            f" ({r['verdict']}{'; ' + r['note'] if r.get('note') else ''})" for r in rows]


def draw(data: Mapping[str, Any], out, name: str = "batch_size"):
    """Paper Fig. 4: steps to reach the target loss vs batch size for AdamW and SOAP with ideal linear scaling
    (dotted), the final losses vs batch size and, in the paper's form, the steps SOAP saves per batch. Each point:
    the mean over seeds with its 95% interval, each seed thin; a point with fewer seeds says its n, a seed that never
    reaches the target is marked "not reached" (left out of the mean)."""
    import matplotlib.ticker as mticker
    import numpy as np

    from ..figures import seeds as S
    from ..figures import style

    with style.style():
        fig, axes, present, notes = style.panel_rows(data, 3, width=4.8, height=3.6)
        lines: List[str] = []
        for row, key in enumerate(present):
            sd = data[key]
            tab = batch_size_table(sd)
            multi = len(S.seeds_of(tab)) > 1
            t_mean, t_half, t_n = S.mean_ci(tab.groupby("seed", sort=True)["target"].first().tolist())
            b0 = int(tab[tab["optimizer"] == "adamw"]["batch_size"].min())
            labels, bss = list(dict.fromkeys(tab["label"])), sorted(int(b) for b in tab["batch_size"].unique())
            n_max = int(S.summarize(tab, ["label", "batch_size"])["n_runs"].max())
            ax, ax2, ns = axes[row, 0], axes[row, 1], []
            for i, label in enumerate(labels):
                g, c = tab[tab["label"] == label], style.color(label)
                dx = lambda x, i=i: S.dodge(x, i, len(labels), 0.025)  # noqa: E731
                mk = dict(marker=style.MARKERS.get(label, "o"), ms=5, lw=1.5, label=label + (": mean ± 95% CI" if multi else ""))
                for a, col in ((ax, "steps_to_target"), (ax2, "final_val_loss")):
                    if multi:
                        S.seed_lines(a, g, "batch_size", col, c, xfun=dx)
                    summ = S.summarize(g, ["batch_size"], col)
                    ok = summ[summ["n"] > 0]
                    S.mean_errorbar(a, dx(ok["batch_size"]), ok, c, **mk)
                    _fewer_seeds(a, dx(ok["batch_size"]), ok, n_max)
                    ns += list(ok["n"]) if a is ax2 else []
                    if a is ax and len(ok):  # ideal linear scaling from the smallest batch
                        bb, s0 = float(ok["batch_size"].iloc[0]), float(ok["mean"].iloc[0])
                        bs = np.array([b for b in bss if b >= bb], float)
                        ax.plot(bs, s0 * bb / bs, color=c, ls=":", lw=1, label=f"ideal linear scaling from {label}")
                for b, gb in g.groupby("batch_size", sort=True):
                    k = int((gb["how"] == "not reached").sum())
                    if k:
                        ax.scatter(dx([b]), [sd.scale.steps], marker="x", color=c)
                        ax.annotate("not reached" if len(gb) == 1 else f"{k} of {len(gb)} not reached",
                                    (dx([b])[0], sd.scale.steps), color=c, fontsize=7, ha="center",
                                    textcoords="offset points", xytext=(0, 4))
            ax.axhline(sd.scale.steps, color="0.6", lw=0.8)
            _log2_batches(ax, bss)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(mticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(mticker.NullFormatter())
            ax.set_ylabel(f"steps to reach the same seed's AdamW loss\nat batch {b0} (mean {t_mean:.3f})" if multi
                          else f"steps to reach val loss {t_mean:.3f}")
            nt = S.n_text(ns, where=" per point")
            ax.set_title(f"Steps to target vs batch size {style.scale_tag(sd)}\n{nt}")
            hs, ls = ax.get_legend_handles_labels()  # the means first, the ideal-scaling lines after them
            order = sorted(range(len(ls)), key=lambda j: (ls[j].startswith("ideal"), j))
            ax.legend([hs[j] for j in order], [ls[j] for j in order], fontsize=6.5)
            ax2.axhline(t_mean, color="0.5", ls="--", lw=0.8, label="target" + (" (mean over seeds)" if multi else ""))
            _log2_batches(ax2, bss)
            ax2.set_ylabel("final validation loss")
            ax2.set_title(f"Final loss vs batch size ({sd.scale.steps} steps) {style.scale_tag(sd)}\n{nt}")
            ax2.legend(fontsize=7)
            soap = tab[tab["optimizer"] == "soap"][["batch_size", "f"]].dropna().drop_duplicates().sort_values("batch_size")
            fs = ", ".join(f"{int(b)}→f={int(f)}" for b, f in soap.values)
            tt = f"{S.pm(t_mean, t_half, t_n, 4)}, n = {t_n}" if multi else f"{t_mean:.4f}"
            lines += [sd.caption(), f"[{key}] target = AdamW's final val loss at the smallest batch ({tt}"
                                    f"{'; each seed its own' if multi else ''}); SOAP's f scaled with 1/batch ({fs}); "
                                    "every full-budget run has the same number of steps"]
            lines += [S.how_drawn(key)] if multi else []
            lines += _saved_panel(axes[row, 2], sd, bss)
        style.footer(fig, lines + notes)
        return style.save(fig, out, name)


STUDY = Study(
    name="batch_size", order=40, paper="Fig. 4",
    question="Does SOAP's advantage grow with batch size?",
    params=PARAMS, grid=grid, claims=claims, figures={"batch_size": draw})
