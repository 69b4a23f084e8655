"""The tuning protocol: each tuned optimizer's learning rate, chosen by a small sweep at f = base_frequency.

The lr with the lowest mean final loss over the tuning seeds (``scale.lr_seeds``; at ``cpu_freq`` seed 0 only)
is the one every other study uses (:func:`soap_lab.studies.base.tuned_lr`). Where the sweep also ran on other
seeds (``seeds``), the choice is checked seed by seed: loss(lr) − loss(tuned) > 0 for every other lr of the grid.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

from .. import stats
from .base import Study, by_seed, finite, lr_sweep_configs, tuned_lr

PARAMS = {"cpu_freq": dict(seeds=(0, 1, 2)), "*": dict(seeds=None)}


def grid(scale, root=None) -> List[Any]:
    seeds = scale.param(PARAMS, "seeds")
    return lr_sweep_configs(scale, root, seeds=None if seeds is None else sorted(set(seeds) | set(scale.lr_seeds)))


def claims(scale, root=None) -> List[Dict[str, Any]]:
    df, rows = STUDY.data(scale, root).runs, []
    for opt, lrs in scale.lrs.items():
        tuned = tuned_lr(opt, scale, root)
        at = lambda lr: by_seed(df[(df["optimizer"] == opt) & (df["lr"] == lr)])  # noqa: E731
        for lr in lrs:
            d = stats.paired_differences(at(lr), at(tuned)) if lr != tuned else {}
            if d:
                rows.append(stats.claim(f"{opt}: the tuned lr {tuned:g} beats lr {lr:g} (loss(lr) − loss(tuned) > 0)",
                                        d, "greater", where=f"{opt} lr {lr:g}"))
    return rows


def tuned_lrs(sd) -> Dict[str, float]:
    """``{label: lr}`` as :func:`tuned_lr` chooses it, from the sweep's stored runs (lowest mean over the tuning
    seeds; an lr where any of them diverged is out)."""
    runs = sd.runs[sd.runs["seed"].isin(list(sd.scale.lr_seeds))]
    out: Dict[str, float] = {}
    for label, g in runs.groupby("label", sort=True):
        means = {float(lr): gl["final_val_loss"].astype(float).mean() for lr, gl in g.groupby("lr", sort=True)
                 if gl["final_val_loss"].map(finite).all()}
        if means:
            out[str(label)] = min(means, key=lambda lr: (means[lr], lr))
    return out


def draw(data: Mapping[str, Any], out, name: str = "lr_sweep"):
    """Final loss vs lr per optimizer: the mean over seeds at each lr with its 95% interval, a thin line per seed,
    × where a seed diverged; circled: the lr the studies use."""
    from ..figures import seeds as S
    from ..figures import style

    with style.style():
        fig, axes, present, notes = style.panel_rows(data, 1, width=5.2, height=3.9)
        lines = []
        for row, key in enumerate(present):
            sd, ax = data[key], axes[row, 0]
            tab = sd.runs.sort_values(["optimizer", "lr", "seed"])
            tuned = tuned_lrs(sd)
            fin = tab["final_val_loss"].map(finite)
            ymax = float(tab[fin]["final_val_loss"].astype(float).max()) if fin.any() else 1.0
            labels = list(dict.fromkeys(tab["label"]))
            seeds, ns = S.seeds_of(tab), []
            for i, label in enumerate(labels):
                g, c = tab[tab["label"] == label], style.color(label)
                dx = lambda x, i=i: S.dodge(x, i, len(labels), 0.02)  # noqa: E731
                if len(seeds) > 1:
                    S.seed_lines(ax, g, "lr", "final_val_loss", c, xfun=dx)
                summ = S.summarize(g, ["lr"])
                ok = summ[summ["n"] > 0]
                ns += list(ok["n"])
                best = ok[ok["lr"] == tuned.get(label)]
                text = (f" (tuned {best['lr'].iloc[0]:g}: {S.pm(best['mean'].iloc[0], best['half'].iloc[0], best['n'].iloc[0])})"
                        if len(best) else "")
                S.mean_errorbar(ax, dx(ok["lr"]), ok, c, label=label + text, marker=style.MARKERS.get(label, "o"),
                                ms=5, lw=1.5)
                bad = g[~g["final_val_loss"].map(finite)]
                if len(bad):
                    ax.scatter(dx(bad["lr"].astype(float)), [ymax] * len(bad), marker="x", color=c, s=40, zorder=3)
                ax.scatter(dx(best["lr"]), best["mean"], s=170, facecolors="none", edgecolors=c, linewidths=1.5,
                           zorder=4)
            style.log_axis(ax, sorted(tab["lr"].unique()))
            ax.margins(x=0.12)
            ax.set_xlabel("peak learning rate")
            ax.set_ylabel("final validation loss")
            tune = sorted(sd.scale.lr_seeds)
            on = f" (on seed{'s' if len(tune) > 1 else ''} {', '.join(map(str, tune))})" if set(tune) != set(seeds) else ""
            ax.set_title(f"Learning-rate sweep (f = {sd.scale.base_frequency}) [{key}]\n"
                         f"{S.n_text(ns, where=' per point')}")
            ax.legend(title=f"circled: tuned lr{on}; ×: diverged" + ("\nmean ± 95% CI over seeds" if len(seeds) > 1 else ""),
                      title_fontsize=7, fontsize=7)
            lines.append(sd.caption())
            if len(seeds) > 1:
                lines.append(S.how_drawn(key) + (f"; the lr was tuned on seed{'s' if len(tune) > 1 else ''} "
                                                 f"{', '.join(map(str, tune))}, the same sweep ran on seeds "
                                                 f"{', '.join(map(str, seeds))}" if on else ""))
        style.footer(fig, lines + notes)
        return style.save(fig, out, name)


STUDY = Study(name="lr_sweep", order=10, paper="§3 (the tuning protocol)", tuned=False,
              question="Which learning rate does each optimizer get, and does the choice hold on every seed?",
              params=PARAMS, grid=grid, claims=claims, figures={"lr_sweep": draw})
