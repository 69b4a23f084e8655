"""The seeded frequency study's figure: every seed, the mean with its 95% interval, and n.

One row of two panels per (batch size, step budget) present in the records (``soap_lab.freq_analysis``):

- left: final validation loss vs f — one thin line per seed and optimizer, the mean with its 95% t-interval as
  error bars, AdamW's mean and interval as a band;
- right: the difference of rises rise_SOAP(f) − rise_Shampoo(f) (rise = loss(f) − loss(f₀), same seed) — one
  point per seed, the mean with its interval, the zero line, and the verdict on the paper's claim (< 0).

Saved through ``soap_lab.plotting.save`` (PNG + PDF, no timestamps).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from . import ablations, analysis, freq_analysis, stats

__all__ = ["SEEDED_SCALES", "study_datas", "draw", "plot_frequency_seeded"]

#: Registered scales that hold the seeded frequency study.
SEEDED_SCALES = ("cpu_freq",)


def _mean_ci(values):
    iv = stats.mean_interval(values)
    err = iv.half_width if iv.n > 1 else 0.0
    return iv.mean, err, iv.n


def plot_frequency_seeded(data: Mapping[str, Any], figures_dir, name: str = "frequency_seeded") -> List:
    """Draw the figure from ``{scale name: [StudyData of the arms]}`` (a scale mapped to None is named in the footer)."""
    import matplotlib.pyplot as plt  # drawing only: the tables (``--report``) need neither matplotlib nor seaborn

    from . import plotting

    frames = {k: freq_analysis.final_losses(v) for k, v in data.items() if v}
    groups = [(k, b, s) for k, df in frames.items() if len(df) for b, s in freq_analysis._groups(df)]
    if not groups:
        raise ablations.MissingResults(
            "frequency_seeded: no runs of the seeded frequency study: run `python -m soap_lab.freq_study`")
    with plotting.style():
        fig, axes = plt.subplots(len(groups), 2, figsize=(10.4, 3.8 * len(groups)), squeeze=False)
        lines = []
        for row, (key, bs, steps) in enumerate(groups):
            df = frames[key]
            g = df[(df["batch_size"] == bs) & (df["steps"] == steps)]
            ax, bx = axes[row]
            ns = set()
            for opt, label in (("shampoo", "Shampoo"), ("soap", "SOAP")):
                o = g[(g["optimizer"] == opt) & g["final_val_loss"].notna()]
                if not len(o):
                    continue
                c = plotting.color(label)
                for _, sg in o.groupby("seed"):
                    sg = sg.sort_values("f")
                    ax.plot(sg["f"].astype(int), sg["final_val_loss"], color=c, lw=0.8, alpha=0.45)
                fs = sorted({int(f) for f in o["f"]})
                stat = [_mean_ci(o[o["f"] == f]["final_val_loss"].astype(float).tolist()) for f in fs]
                ns.update(n for *_, n in stat)
                ax.errorbar(fs, [m for m, _, _ in stat], yerr=[e for _, e, _ in stat], color=c, marker=plotting.MARKERS[label],
                            capsize=3, lw=1.6, label=f"{label}{' (QR)' if opt == 'soap' else ''}: mean ± 95% CI")
            a = g[(g["optimizer"] == "adamw") & g["final_val_loss"].notna()]
            if len(a):
                m, e, n = _mean_ci(a["final_val_loss"].astype(float).tolist())
                ax.axhline(m, color=plotting.color("AdamW"), ls="--", lw=1, label=f"AdamW {m:.3f} (n = {n})")
                if e:
                    ax.axhspan(m - e, m + e, color=plotting.color("AdamW"), alpha=0.12, lw=0)
            ax.set_xscale("log")
            fs_all = sorted({int(f) for f in g["f"].dropna()})
            ax.set_xticks(fs_all)
            ax.set_xticklabels([str(f) for f in fs_all])
            ax.minorticks_off()
            n_txt = "–".join(str(n) for n in sorted({min(ns), max(ns)})) if ns else "0"
            ax.set_title(f"Final loss vs f [{key}, batch {bs}, {steps} steps]\nn = {n_txt} seeds per point")
            ax.set_xlabel("precondition frequency f (thin lines: one seed each)")
            ax.set_ylabel("final validation loss")
            ax.legend(fontsize=6.5)

            diff = freq_analysis.rise_difference_table(g)
            for i, r in enumerate(diff):
                x = r["f"]
                bx.scatter([x] * len(r["values"]), r["values"], color="0.45", s=12, zorder=3,
                           label="one seed" if i == 0 else None)
                err = (r["high"] - r["mean"]) if r["n"] > 1 else 0.0
                bx.errorbar([x], [r["mean"]], yerr=[err], color="k", marker="o", capsize=4, zorder=4,
                            label="mean ± 95% CI" if i == 0 else None)
                bx.annotate(f"n={r['n']}\n{r['verdict']}", (x, r["mean"]), textcoords="offset points", xytext=(6, 4),
                            fontsize=6)
            bx.axhline(0.0, color="0.3", lw=0.8)
            bx.set_xscale("log")
            if diff:
                bx.set_xticks([r["f"] for r in diff])
                bx.set_xticklabels([str(r["f"]) for r in diff])
                bx.minorticks_off()
                bx.legend(fontsize=6.5, loc="best")
            f0 = diff[0]["f0"] if diff else "f₀"
            bx.set_title(f"Difference of rises, SOAP − Shampoo [{key}, batch {bs}]\nrise = loss(f) − loss({f0}), same seed")
            bx.set_xlabel("precondition frequency f")
            bx.set_ylabel("difference of rises (< 0: SOAP degrades less)")
            for r in diff:
                lines.append(f"[{key} batch {bs}, {steps} steps] f = {r['f']}: rise_SOAP − rise_Shampoo = "
                             f"{stats.format_interval(stats.Interval(r['mean'], r['low'], r['high'], r['n']))}: "
                             f"{r['verdict']}")
        notes = [f"scale {k}: no results (run `python -m soap_lab.freq_study`)" for k, v in data.items() if not v]
        lines.append("Seeds are paired: the same seed gives the same init and data order at every f and for every "
                     "optimizer. Intervals: Student t over seeds (soap_lab.stats).")
        plotting.footer(fig, lines + notes)
        return plotting.save(fig, figures_dir, name)


def study_datas(scale, root=None) -> Optional[List[Any]]:
    """The ``analysis.StudyData`` of every arm of the seeded study at ``scale`` with stored runs (None: none)."""
    out = []
    for arm in ablations.SEEDED_STUDIES:
        try:
            sd = analysis.study_data(arm, scale, root)
        except ablations.MissingResults:
            return None  # the lr sweep is not finished: no arm can be drawn
        if len(sd.runs):
            out.append(sd)
    return out or None


def draw(root, figures_dir, scales: Mapping[str, Any]) -> List[Path]:
    """The figure for the scales of ``scales`` that are (overrides of) :data:`SEEDED_SCALES`, else the registered ones."""
    chosen: Dict[str, Any] = {k: v for k, v in scales.items() if v.name.split("-")[0] in SEEDED_SCALES}
    if not chosen:
        chosen = {k: ablations.get_scale(k) for k in SEEDED_SCALES}
    return plot_frequency_seeded({sc.name: study_datas(sc, root) for sc in chosen.values()}, figures_dir)
