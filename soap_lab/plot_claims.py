"""The paper's other claims with seeds, in one figure: every seed, the mean with its 95% interval, the verdict.

A forest plot of :func:`soap_lab.seeded_claims.claims` (and its wall-clock claims where the scale's timing study
is stored), one row per claim, in two panels (one above the other) by unit:

- left: differences of final validation loss (QR − eigh, the variants, SOAP − AdamW per batch size);
- right: fractions saved (steps to AdamW's or Shampoo's loss per batch size, their growth, wall-clock).

Each row shows one grey point per seed, the mean with its interval (coloured by verdict), and the claim's
boundary: the margin band ±m for "as good as" claims, a dashed line at the threshold otherwise. The text right
of each row gives n and the verdict. Saved through ``soap_lab.plotting.save`` (PNG + PDF, no timestamps).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from . import ablations, stats

__all__ = ["SCALES", "rows_for", "plot_claims_seeded", "draw"]

#: Registered scales that hold the seeded claims (``ablations.seeded_others``).
SCALES = ("cpu_freq",)

VERDICT_COLORS = {stats.REPRODUCED: "#1b7837", stats.CONTRADICTED: "#b2182b", stats.INCONCLUSIVE: "#525252"}


def _is_saving(row: Mapping[str, Any]) -> bool:
    return str(row.get("baseline", "")).startswith(("steps", "wall-clock", "AdamW", "Shampoo"))


def _label(row: Mapping[str, Any]) -> str:
    claim, where = str(row["claim"]).split(" (")[0], str(row.get("baseline") or "")
    growth = re.search(r"batch (\d+) vs (\d+)$", where)  # "batch 128 vs 8", "steps, batch 128 vs 8"
    if growth:
        hi, lo = growth.groups()
        return f"{claim} ({'steps' if where.startswith('steps') else 'final loss'}, batch {lo} → {hi})"
    return claim if "f" not in row or where else f"{claim}, f = {row['f']}"


def _panel(ax, rows: Sequence[Mapping[str, Any]], xlabel: str) -> None:
    for y, r in enumerate(rows):
        c = VERDICT_COLORS.get(r["verdict"], "0.3")
        ax.scatter(r["values"], [y] * len(r["values"]), color="0.55", s=11, zorder=3)
        if r["n"] > 1:
            ax.errorbar([r["mean"]], [y], xerr=[[r["mean"] - r["low"]], [r["high"] - r["mean"]]], color=c,
                        marker="o", ms=5, capsize=3, lw=1.6, zorder=4)
        else:
            ax.scatter([r["mean"]], [y], color=c, marker="o", s=25, zorder=4)
        m = float(r.get("margin", 0.0))
        if r.get("kind") == "equal":
            ax.fill_betweenx([y - 0.4, y + 0.4], -m, m, color="#9ecae1", alpha=0.35, lw=0, zorder=1)
        else:
            x = -m if r.get("kind") == "less" else m
            ax.plot([x, x], [y - 0.4, y + 0.4], color="0.2", ls="--", lw=0.9, zorder=2)
        ax.annotate(f"n={r['n']}, {r['verdict']}", (1.01, y), xycoords=("axes fraction", "data"), va="center",
                    fontsize=6.5, color=c, annotation_clip=False)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_label(r) for r in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.axvline(0.0, color="0.6", lw=0.6, zorder=0)
    ax.set_xlabel(xlabel)


def plot_claims_seeded(rows: Sequence[Mapping[str, Any]], figures_dir, scale_name: str = "cpu_freq",
                       name: str = "claims_seeded", notes: Sequence[str] = ()) -> List[Path]:
    """Draw the forest plot of ``rows`` (``seeded_claims`` rows, each with ``kind`` and ``margin``)."""
    import matplotlib.pyplot as plt

    from . import plotting

    if not rows:
        raise ablations.MissingResults("claims_seeded: no seeded claims stored: run "
                                       "`python -m soap_lab.freq_study --arms others`")
    loss = [r for r in rows if not _is_saving(r)]
    saving = [r for r in rows if _is_saving(r)]
    panels = [(p, lab) for p, lab in ((loss, "difference of final validation loss (nats)"),
                                      (saving, "fraction saved (1 − SOAP's / the baseline's steps or time)"))
              if p]
    with plotting.style():
        counts = [len(p) for p, _ in panels]
        fig, axes = plt.subplots(len(panels), 1, figsize=(8.6, 0.36 * sum(counts) + 1.3 * len(panels)), squeeze=False,
                                 gridspec_kw={"height_ratios": counts})
        for ax, (p, lab) in zip(axes[:, 0], panels):
            _panel(ax, p, lab)
        ns = sorted({int(r["n"]) for r in rows})
        fig.suptitle(f"The paper's other claims with seeds [{scale_name}]: n = {'–'.join(map(str, ns))} seeds per claim",
                     fontweight="bold", fontsize=10)
        lines = ["Grey points: one seed each (paired: same init and data order in both arms). Mean ± 95% CI: "
                 "Student t over seeds; wall-clock rows: Bonferroni over seeds × timing rounds (soap_lab.seeded_claims). "
                 "Shaded band: the ±margin of an 'as good as' claim; dashed line: the claim's threshold.",
                 *notes]
        plotting.footer(fig, lines)
        return plotting.save(fig, figures_dir, name)


def rows_for(scale, root=None) -> List[Dict[str, Any]]:
    """The claims of ``scale`` as :func:`seeded_claims.report` computes them (wall-clock where timed)."""
    from . import seeded_claims

    df = seeded_claims.frame(scale, root)
    if not len(df):
        return []
    ref = df[df["batch_size"] == scale.batch_size]
    timing = seeded_claims.timing(scale)
    return (seeded_claims.claims(df, scale) + seeded_claims.wallclock_claims(ref, scale.base_frequency, timing))


def draw(root, figures_dir, scales: Mapping[str, Any]) -> List[Path]:
    """The figure for the first scale of ``scales`` that is (an override of) one of :data:`SCALES`, else the
    registered one."""
    chosen = [v for v in scales.values() if v.name.split("-")[0] in SCALES] or [ablations.get_scale(SCALES[0])]
    sc = chosen[0]
    try:
        rows = rows_for(sc, root)
    except ablations.CorruptResults:
        raise
    except ablations.MissingResults:
        rows = []
    return plot_claims_seeded(rows, figures_dir, sc.name)
