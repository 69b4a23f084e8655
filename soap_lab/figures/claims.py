"""Every claim at a glance: a forest plot of claim rows (:func:`soap_lab.stats.claim`), one row per claim.

Each row shows one grey point per seed, the mean with its 95% interval coloured by its verdict, and where the
claim holds shaded green on that row (left of −margin for "less", right of +margin for "greater", inside ±margin
for "as good as"), so the claimed side is visible row by row. Panels group rows by unit (loss differences,
fractions saved, percent of a step). The text right of each row gives n and the verdict.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Sequence

from .. import stats
from . import style
from .seeds import finite

__all__ = ["VERDICT_COLORS", "unit", "forest"]

VERDICT_COLORS = {stats.REPRODUCED: "#1b7837", stats.CONTRADICTED: "#b2182b", stats.INCONCLUSIVE: "#525252"}
_UNITS = {"loss": "difference of final validation loss (nats)",
          "saved": "fraction saved (1 − SOAP's / the baseline's steps or time)",
          "pct": "SOAP's overhead, % of an AdamW training step",
          "refreshes": "refreshes per factor saved by the adaptive refresh",
          "log10 tau": "log10 of the staleness τ each tolerates (SOAP − Shampoo)",
          "ratio": "time per training step, SOAP / Muon − 1",
          "slope": "change of rise_SOAP − rise_Shampoo per doubling of the width"}


def unit(row: Mapping[str, Any]) -> str:
    """The row's unit: ``row["unit"]`` if given, else "loss"."""
    return str(row.get("unit", "loss"))


def _label(r: Mapping[str, Any]) -> str:
    claim = str(r["claim"]).split(" (")[0]
    where = str(r.get("where", ""))
    return f"{claim} [{where}]" if where else claim


def _panel(ax, rows: Sequence[Mapping[str, Any]], xlabel: str) -> None:
    vals = [v for r in rows for v in [*r["values"], r["low"], r["high"]] if finite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (-1.0, 1.0)
    pad = 0.08 * ((hi - lo) or 1.0)
    left, right = lo - pad, hi + pad
    for y, r in enumerate(rows):
        m, kind = float(r.get("margin", 0.0)), r.get("kind")
        span = (-m, m) if kind == "equal" else ((min(left, -m), -m) if kind == "less" else (m, max(right, m)))
        ax.fill_betweenx([y - 0.42, y + 0.42], *span, color="#a1d99b", alpha=0.45, lw=0, zorder=1)
        if kind != "equal":
            ax.plot([span[1] if kind == "less" else span[0]] * 2, [y - 0.42, y + 0.42], color="0.25", ls="--",
                    lw=0.8, zorder=2)
        c = VERDICT_COLORS.get(r["verdict"], "0.3")
        ax.scatter(r["values"], [y] * len(r["values"]), color="0.5", s=9, zorder=3)
        if r["n"] > 1:
            ax.errorbar([r["mean"]], [y], xerr=[[r["mean"] - r["low"]], [r["high"] - r["mean"]]], color=c,
                        marker="o", ms=4.5, capsize=3, lw=1.5, zorder=4)
        else:
            ax.scatter([r["mean"]], [y], color=c, marker="o", s=22, zorder=4)
        ax.annotate(f"n={r['n']}, {r['verdict']}", (1.01, y), xycoords=("axes fraction", "data"), va="center",
                    fontsize=6.3, color=c, annotation_clip=False)
    ax.set_xlim(left, right)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_label(r) for r in rows], fontsize=6.5)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.axvline(0.0, color="0.6", lw=0.6, zorder=0)
    ax.set_xlabel(xlabel)


def forest(rows: Sequence[Mapping[str, Any]], out, name: str, title: str, lines: Sequence[str] = ()) -> List[Path]:
    """Draw the forest plot of ``rows`` into ``out/<name>.png|pdf``; ``lines`` go to the footer."""
    import matplotlib.pyplot as plt

    if not rows:
        raise style.MissingResults(f"{name}: no claims stored")
    panels = [([r for r in rows if unit(r) == u], lab) for u, lab in _UNITS.items()]
    panels = [(p, lab) for p, lab in panels if p]
    with style.style():
        counts = [len(p) for p, _ in panels]
        fig, axes = plt.subplots(len(panels), 1, figsize=(9.4, 0.3 * sum(counts) + 1.3 * len(panels)), squeeze=False,
                                 gridspec_kw={"height_ratios": counts})
        for ax, (p, lab) in zip(axes[:, 0], panels):
            _panel(ax, p, lab)
        head = fig.suptitle(title, fontweight="bold", fontsize=10, va="top")
        style.footer(fig, ["Grey points: one seed each (paired: same init and data order in both arms); mean ± 95% "
                           "CI coloured by verdict (green reproduced, red contradicted, grey inconclusive); shaded "
                           "green: where the claim holds on that row, dashed: its threshold. Intervals: Student t "
                           "over seeds (wall-clock: Bonferroni over seeds × timing rounds; overhead: over timing "
                           "rounds).", *lines])
        h = fig.get_figheight()  # the title in the top half inch (suptitle's default y is a fraction of a tall figure)
        fig.subplots_adjust(top=1 - 0.5 / h)
        head.set_y(1 - 0.15 / h)
        return style.save(fig, out, name)
