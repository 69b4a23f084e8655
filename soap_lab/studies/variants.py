"""SOAP's variants (paper Fig. 6, §7): what do factorizing the second moment and rotating one side only cost?

Question: factorized SOAP (Adafactor instead of Adam in the eigenbasis) should cost almost nothing; one-sided SOAP
(only the smaller side rotated) should land near Shampoo; factorized + one-sided, which keeps less optimizer state
than AdamW, should still beat AdamW.

Protocol: AdamW, the paper's Shampoo baseline, SOAP, SOAP factorized, SOAP one-sided and SOAP factorized +
one-sided, each at its tuned learning rate (SOAP's variants use SOAP's), at f = ``scale.base_frequency``, the
reference batch and every seed of ``scale.seeds`` (same seed: same init and data order). The runs are those of
the old ``ablations.variants`` (same run ids). Each claim is a paired difference of final validation losses per
seed (:mod:`soap_lab.stats`): factorized − SOAP and one-sided − Shampoo are "≈" when the whole 95% interval lies
within ±``CLOSE_MARGIN``; factorized + one-sided − AdamW < 0. The figure adds the optimizer-state memory of each.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

from .. import stats
from .base import Study, by_seed, run_config, tuned_lr

CLOSE_MARGIN = 0.02
""""Costs almost nothing" and "≈": |difference of final losses| below this (nats)."""

#: The optimizers of Fig. 6, in the figure's order.
OPTIMIZERS = ("adamw", "shampoo", "soap", "soap_factorized", "soap_one_sided", "soap_factorized_one_sided")


def grid(scale, root=None) -> List[Any]:
    """Every optimizer of :data:`OPTIMIZERS` at its tuned lr and f = base_frequency, once per seed of the scale."""
    cfgs = [(opt, tuned_lr(opt, scale, root)) for opt in OPTIMIZERS]
    return [run_config(scale, root, opt, lr, seed=int(s)) for opt, lr in cfgs for s in scale.seeds]


def claim_rows(df, f: int) -> List[Dict[str, Any]]:
    """The three claims of Fig. 6 on a run table (``label``, ``f``, ``seed``, ``final_val_loss``), paired by seed."""
    pairs = [(f"factorized SOAP costs almost nothing (abs(factorized − SOAP) < {CLOSE_MARGIN})",
              "SOAP factorized", "SOAP", "equal", CLOSE_MARGIN),
             (f"one-sided SOAP ≈ Shampoo (abs(one-sided − Shampoo) < {CLOSE_MARGIN})",
              "SOAP one-sided", "Shampoo", "equal", CLOSE_MARGIN),
             ("factorized + one-sided beats AdamW (difference < 0)", "SOAP factorized + one-sided", "AdamW", "less", 0.0)]

    def at(label: str, freq: Optional[int]):
        g = df[df["label"] == label]
        return by_seed(g if freq is None else g[g["f"] == freq])

    rows = []
    for text, a, b, kind, margin in pairs:
        d = stats.paired_differences(at(a, f), at(b, None if b == "AdamW" else f))
        if d:
            rows.append(stats.claim(text, d, kind, margin, where=f"f = {f}", f=f, headline=text.startswith("one-sided")))
    return rows


def claims(scale, root=None) -> List[Dict[str, Any]]:
    return claim_rows(STUDY.data(scale, root).runs, scale.base_frequency)


def table(runs):
    """Final validation loss and optimizer-state memory per run (``state_MB``; ``state_per_param``: state bytes per
    4-byte parameter)."""
    df = runs[["run_id", "label", "optimizer", "seed", "final_val_loss", "optimizer_state_bytes", "num_params",
               "step_time_mean"]].copy()
    df["state_MB"] = df["optimizer_state_bytes"].astype(float) / 2**20
    df["state_per_param"] = df["optimizer_state_bytes"].astype(float) / (4 * df["num_params"].astype(float))
    return df.reset_index(drop=True)


def tables(scale, root=None) -> List[Tuple[str, str]]:
    from ..figures.seeds import pm, summarize

    sd = STUDY.data(scale, root)
    if not len(sd.runs):
        return []
    tab = table(sd.runs)
    labels = list(dict.fromkeys(tab["label"]))
    loss = summarize(tab, ["label"]).set_index("label")
    mem = summarize(tab, ["label"], "state_MB").set_index("label")
    out = ["| optimizer | final loss (mean ± 95% CI) | n | optimizer state (MB) |", "|---|---|---|---|"]
    for lb in labels:
        r = loss.loc[lb]
        out.append(f"| {lb} | {pm(r['mean'], r['half'], r['n'], 4)} | {r['n']} | {mem.loc[lb]['mean']:.3f} |")
    return [("Final loss and optimizer-state memory of each optimizer", "\n".join(out))]


# ================================================================================================ figure
def _short(label: str) -> str:
    return (label.replace("SOAP factorized + one-sided", "SOAP fact.+1-sided").replace("SOAP factorized", "SOAP fact.")
            .replace("SOAP one-sided", "SOAP 1-sided"))


def draw(data: Mapping[str, Any], out, name: str = "variants"):
    """Paper Fig. 6, one row per scale. Left: bars at the mean final loss over seeds with its 95% interval, one small
    point per seed, mean ± half-width written (one seed: the run's loss). Right: optimizer-state memory (the same for
    every seed of an optimizer; a spread over seeds would be written)."""
    import numpy as np

    from ..figures import seeds as S
    from ..figures import style

    data = {k: (v if v is not None and len(v.runs) else None) for k, v in data.items()}
    if not any(v is not None for v in data.values()):
        raise style.MissingResults(f"{name}: no stored runs: run " + " or ".join(
            f"`{style.missing_hint(k, 'variants')}`" for k in data))
    with style.style():
        fig, axes, present, _ = style.panel_rows(data, 2, width=4.9, height=3.7)
        notes = [f"scale {k}: no results (run `{style.missing_hint(k, 'variants')}`)" for k, v in data.items()
                 if v is None]
        lines: List[str] = []
        for row, key in enumerate(present):
            sd = data[key]
            tab = table(sd.runs)
            labels = list(dict.fromkeys(tab["label"]))
            summ = S.summarize(tab, ["label"]).set_index("label").loc[labels].reset_index()
            multi = len(S.seeds_of(tab)) > 1
            colors, short = [style.color(lb) for lb in labels], [_short(lb) for lb in labels]
            ax = axes[row, 0]
            ax.barh(short, summ["mean"].astype(float).fillna(0), color=colors,
                    xerr=summ["half"].astype(float) if multi else None, ecolor="0.15", error_kw=dict(capsize=3, lw=1))
            allv = [v for vals in summ["values"] for v in vals]
            if allv:
                lo, hi = min(min(allv), float(summ["low"].min())), max(max(allv), float(summ["high"].max()))
                span = (hi - lo) or 0.05
                ax.set_xlim(lo - 0.5 * span, hi + 0.55 * span)
            for i, r in summ.iterrows():
                if multi and r["n"]:
                    off = np.linspace(-0.22, 0.22, len(r["values"])) if len(r["values"]) > 1 else [0.0]
                    ax.scatter(r["values"], i + np.asarray(off), s=10, color="k", alpha=0.6, zorder=3, lw=0)
                x = max([r["high"], *r["values"]]) if r["n"] else ax.get_xlim()[0]
                ax.text(x, i, f" {S.pm(r['mean'], r['half'], r['n'], 4)}" if r["n"] else " diverged", va="center",
                        fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel("final validation loss" + (" (bar: mean; dots: seeds; ticks: 95% CI)" if multi else ""))
            ax.set_title(f"SOAP variants: final loss {style.scale_tag(sd)}\n{S.n_text(summ['n'], where=' per bar')}")
            ax2 = axes[row, 1]
            mem = S.summarize(tab, ["label"], "state_MB").set_index("label").loc[labels].reset_index()
            per = S.summarize(tab, ["label"], "state_per_param").set_index("label").loc[labels]["mean"]
            mb = mem["mean"].astype(float)
            ax2.barh(short, mb, color=colors)
            for i, (v, rp, vals) in enumerate(zip(mb, per.astype(float), mem["values"])):
                spread = f", {min(vals):.2f}–{max(vals):.2f} over seeds" if vals and max(vals) > min(vals) else ""
                ax2.text(v, i, f" {v:.2f} MB ({rp:.1f}× params){spread}", va="center", fontsize=7)
            ax2.invert_yaxis()
            ax2.set_xlim(0, float(mb.max()) * 1.6 if len(mb) else 1)
            ax2.set_xlabel("optimizer state (MB, peak)")
            same = multi and all(max(v) == min(v) for v in mem["values"] if v)
            ax2.set_title(f"Optimizer-state memory {style.scale_tag(sd)}" + ("\n(the same for every seed)" if same else ""))
            lines += [sd.caption(), f"[{key}] memory = bytes of the tensors in optimizer.state (gradients excluded); "
                                    "× params = state bytes / 4 bytes per parameter"]
            for r in claim_rows(sd.runs, sd.scale.base_frequency):
                iv = stats.Interval(r["mean"], r["low"], r["high"], r["n"])
                lines.append(f"[{key}] {r['claim']}: {stats.format_interval(iv, 4)}: {r['verdict']}")
            if multi:
                lines.append(S.how_drawn(key))
        style.footer(fig, lines + notes)
        return style.save(fig, out, name)


STUDY = Study(
    name="variants", order=50, paper="Fig. 6 (§7)",
    question="Do SOAP's factorized and one-sided variants keep its gains (and beat AdamW with less memory)?",
    grid=grid, claims=claims, tables=tables, figures={"variants": draw})
