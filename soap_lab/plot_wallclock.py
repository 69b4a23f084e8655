"""Validation loss against steps and against wall-clock (paper Figs. 1 left/middle and 3).

The other figures about time have their own modules: the efficiency fit (Fig. 2, :mod:`soap_lab.plot_efficiency`)
and SOAP's overhead over AdamW from the timing study (Fig. 7 left, :mod:`soap_lab.plot_overhead`); both are
re-exported here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping

from .plot_efficiency import _efficiency_text, plot_efficiency  # noqa: F401  (re-exported)
from .plot_overhead import plot_overhead  # noqa: F401  (re-exported)
from .plotting import caption, color, footer, noise_note, panel_rows, save, scale_tag, style
from .seedwise import SEED_ALPHA, how_drawn, mean_ci, n_text, seeds_of

__all__ = ["plot_comparison", "plot_efficiency", "plot_overhead", "mean_curve"]


def mean_curve(curves, x: str = "step"):
    """The mean over seeds of val-loss curves, at the steps every seed evaluated: ``{step, x (mean), mean, half, n}``
    rows from a frame with ``run_id``, ``step``, ``x`` and ``val_loss`` (one run per seed)."""
    import pandas as pd

    runs = sorted(curves["run_id"].unique())
    rows = []
    for step, g in curves.groupby("step", sort=True):
        if len(g) < len(runs) or g["run_id"].nunique() < len(runs):
            continue
        m, h, n = mean_ci(g["val_loss"].astype(float).tolist())
        rows.append({"step": float(step), "x": float(g[x].astype(float).mean()), "mean": m, "half": h, "n": n})
    return pd.DataFrame(rows, columns=["step", "x", "mean", "half", "n"])


def _group_label(label: str, budget: float, multi: bool) -> str:
    if budget != 1.0:
        return f"SOAP, {budget:g} of the budget" + (" (mean)" if multi else "")
    return label + (": mean ± 95% CI (band)" if multi else "")


def plot_comparison(data: Mapping[str, Any], figures_dir, name: str = "comparison") -> List[Path]:
    """Paper Figs. 1 left/middle and 3: val loss vs steps and vs wall-clock for AdamW, Shampoo, SOAP.

    SOAP's shorter schedules (the budget fractions of the efficiency protocol) are drawn thin and dashed. With
    several seeds: a thin line per seed and run, the mean curve over seeds (bold; dashed for the shorter
    schedules) and, for the full-budget runs, its 95% interval as a band; wall-clock: the mean over seeds of the
    loss against the mean over seeds of the time at each evaluation.
    """
    with style():
        fig, axes, present, notes = panel_rows(data, 2, width=4.9, height=3.6)
        lines = []
        for row, key in enumerate(present):
            sd = data[key]
            val = sd.curves("val")
            runs = sd.runs
            multi = len(seeds_of(runs)) > 1
            tops, ns = [], []
            first = {lb: i for i, lb in reversed(list(enumerate(runs["label"])))}  # the study's order of optimizers
            groups = runs.groupby(["budget_fraction", "label"], sort=True)
            for (budget, label), g in sorted(groups, key=lambda kv: (-float(kv[0][0]), first[kv[0][1]])):
                full, c = float(budget) == 1.0, color(label)
                ids = sorted(g["run_id"])
                cur = val[val["run_id"].isin(ids)].sort_values(["run_id", "step"])
                if not len(cur):
                    continue
                lw, ls = (1.8, "-") if full else (0.9, "--")
                for rid, cr in cur.groupby("run_id", sort=True):
                    if multi:
                        kw = dict(color=c, lw=0.6, alpha=SEED_ALPHA if full else SEED_ALPHA / 2)
                    else:
                        kw = dict(color=c, lw=lw, ls=ls, alpha=1.0 if full else 0.7, marker="o" if full else None,
                                  ms=2.5, label=_group_label(label, float(budget), multi))
                    axes[row, 0].plot(cr["step"], cr["val_loss"], **kw)
                    axes[row, 1].plot(cr["time"], cr["val_loss"], **kw)
                    third = cr[cr["step"] >= cr["step"].max() / 3]
                    if len(third):
                        tops.append(float(third["val_loss"].max()))
                if multi:
                    for col, x in ((0, "step"), (1, "time")):
                        mc = mean_curve(cur, x)
                        ns += list(mc["n"])
                        axes[row, col].plot(mc["x"], mc["mean"], color=c, lw=lw, ls=ls, marker="o" if full else None,
                                            ms=2.5, alpha=1.0 if full else 0.8, label=_group_label(label, float(budget), multi))
                        if full:
                            axes[row, col].fill_between(mc["x"], mc["mean"] - mc["half"], mc["mean"] + mc["half"],
                                                        color=c, alpha=0.18, lw=0)
                else:
                    ns.append(len(ids))
            lo = float(runs["final_val_loss"].min()) if runs["final_val_loss"].notna().any() else None
            for ax in axes[row]:
                if tops and lo is not None:
                    ax.set_ylim(lo - 0.02 * (max(tops) - lo + 1e-9) - 0.01, max(tops))
                ax.set_ylabel("validation loss")
            axes[row, 0].set_xlabel("step")
            axes[row, 1].set_xlabel("training wall-clock (s, evaluation excluded)"
                                    + ("; mean over seeds" if multi else ""))
            nt = n_text(ns, where=" per curve")
            axes[row, 0].set_title(f"Loss vs steps {scale_tag(sd)}\n{nt}")
            axes[row, 1].set_title(f"Loss vs wall-clock {scale_tag(sd)}\n{nt}")
            axes[row, 0].legend(fontsize=6.5)
            lines += [caption(sd), noise_note(sd)]
            if multi:
                lines.append(how_drawn(key) + "; the shorter schedules without a band")
        footer(fig, lines + notes)
        return save(fig, figures_dir, name)
