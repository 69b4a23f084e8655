"""The study figures that compare final losses: the learning-rate sweep, the preconditioning frequency (paper
Figs. 1 right and 7 right), the batch size (Fig. 4) and SOAP's variants (Fig. 6). Each reads one study's stored
runs per scale (``analysis.StudyData``) through its table in :mod:`soap_lab.analysis`, one row of panels per scale.

Seeds (issue 11, :mod:`soap_lab.seedwise`): where a configuration ran with several seeds, each seed is drawn thin
(a line, or a small point on a bar), the mean over seeds with its 95% Student-t interval (error bars or a band),
and the panel titles say n; with one seed the run is drawn alone and the title says n = 1 (no interval).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping

import matplotlib.ticker as mticker
import numpy as np

from . import analysis
from .plotting import MARKERS, caption, color, footer, panel_rows, save, scale_tag, style
from .seedwise import (SEED_ALPHA, dodge, finite, how_drawn, mean_ci, mean_errorbar, n_text, pm, seed_lines, seeds_of,
                       summarize)

__all__ = ["plot_lr_sweep", "plot_frequency", "plot_batch_size", "plot_variants"]


def _dx(i: int, k: int, width: float = 0.02):
    return lambda x: dodge(x, i, k, width)


# =========================================================================================== lr sweep
def plot_lr_sweep(data: Mapping[str, Any], figures_dir, name: str = "lr_sweep") -> List[Path]:
    """The learning-rate sweep: final val loss vs lr per optimizer.

    Per optimizer: the mean over seeds at each lr with its 95% interval (one seed: the run), a thin line per
    seed, × where a seed diverged; circled: the lr the studies use (lowest mean over the tuning seeds
    ``scale.lr_seeds``, ``analysis.tuned_lrs``). A sweep run on more seeds than it was tuned on shows them all.
    """
    with style():
        fig, axes, present, notes = panel_rows(data, 1, width=5.2, height=3.9)
        lines = []
        for row, key in enumerate(present):
            sd, ax = data[key], axes[row, 0]
            tab = analysis.lr_table(sd)
            tuned = analysis.tuned_lrs(sd)
            fin = tab["final_val_loss"].map(finite)
            ymax = float(tab[fin]["final_val_loss"].astype(float).max()) if fin.any() else 1.0
            labels = list(dict.fromkeys(tab["label"]))
            seeds, ns = seeds_of(tab), []
            for i, label in enumerate(labels):
                g, c, dx = tab[tab["label"] == label], color(label), _dx(i, len(labels))
                if len(seeds) > 1:
                    seed_lines(ax, g, "lr", "final_val_loss", c, xfun=dx)
                summ = summarize(g, ["lr"])
                ok = summ[summ["n"] > 0]
                ns += list(ok["n"])
                best = ok[ok["lr"] == tuned.get(label)]
                text = (f" (tuned {best['lr'].iloc[0]:g}: {pm(best['mean'].iloc[0], best['half'].iloc[0], best['n'].iloc[0])})"
                        if len(best) else "")
                mean_errorbar(ax, dx(ok["lr"]), ok, c, label=label + text, marker=MARKERS.get(label, "o"), ms=5, lw=1.5)
                bad = g[~g["final_val_loss"].map(finite)]
                if len(bad):
                    ax.scatter(dx(bad["lr"].astype(float)), [ymax] * len(bad), marker="x", color=c, s=40, zorder=3)
                ax.scatter(dx(best["lr"]), best["mean"], s=170, facecolors="none", edgecolors=c, linewidths=1.5, zorder=4)
            ax.set_xscale("log")
            lrs = sorted(tab["lr"].unique())
            ax.set_xticks(lrs)
            ax.set_xticklabels([f"{x:g}" for x in lrs])
            ax.minorticks_off()
            ax.margins(x=0.12)
            ax.set_xlabel("peak learning rate")
            ax.set_ylabel("final validation loss")
            tune = sorted(sd.scale.lr_seeds)
            on = f" (on seed{'s' if len(tune) > 1 else ''} {', '.join(map(str, tune))})" if set(tune) != set(seeds) else ""
            ax.set_title(f"Learning-rate sweep (f = {sd.scale.base_frequency}) {scale_tag(sd)}\n{n_text(ns, where=' per point')}")
            ax.legend(title=f"circled: tuned lr{on}; ×: diverged" + ("\nmean ± 95% CI over seeds" if len(seeds) > 1 else ""),
                      title_fontsize=7, fontsize=7)
            lines.append(caption(sd))
            if len(seeds) > 1:
                lines.append(how_drawn(key) + (f"; the lr was tuned on seed{'s' if len(tune) > 1 else ''} "
                                               f"{', '.join(map(str, tune))}, the same sweep ran on seeds "
                                               f"{', '.join(map(str, seeds))}" if on else ""))
        footer(fig, lines + notes)
        return save(fig, figures_dir, name)


# ============================================================================= precondition frequency
def plot_frequency(data: Mapping[str, Any], figures_dir, name: str = "frequency") -> List[Path]:
    """Paper Fig. 1 right and Fig. 7 right: final val loss vs f for Shampoo, SOAP (QR), SOAP (eigh); AdamW line.

    Per optimizer and f: the mean over seeds with its 95% interval, a thin line per seed; AdamW: its mean
    (dashed), its interval (band) and each seed (dotted). The number of basis refreshes a run of this length
    makes at each f is written under the f axis.
    """
    with style():
        fig, axes, present, notes = panel_rows(data, 1, width=5.6, height=4.3)
        lines = []
        for row, key in enumerate(present):
            sd, ax = data[key], axes[row, 0]
            tab = analysis.frequency_table(sd)
            adam = tab[(tab["optimizer"] == "adamw") & tab["final_val_loss"].map(finite)]
            pre = tab[tab["f"].notna()].copy()
            pre["f"] = pre["f"].astype(int)
            multi, ns = len(seeds_of(tab)) > 1, []
            labels = [lb for lb in ("Shampoo", "SOAP", "SOAP (eigh)") if (pre["label"] == lb).any()]
            for i, label in enumerate(labels):
                g, c, dx = pre[pre["label"] == label], color(label), _dx(i, len(labels), 0.015)
                if multi:
                    seed_lines(ax, g, "f", "final_val_loss", c, xfun=dx)
                summ = summarize(g, ["f"])
                ok = summ[summ["n"] > 0]
                ns += list(ok["n"])
                mean_errorbar(ax, dx(ok["f"]), ok, c, marker=MARKERS.get(label, "o"), ms=5, lw=1.5,
                              label=label + (" (QR)" if label == "SOAP" else "") + (": mean ± 95% CI" if multi else ""))
            if len(adam):
                ys = adam.sort_values("seed")["final_val_loss"].astype(float).tolist()
                m, h, n = mean_ci(ys)
                for y in ys if n > 1 else []:
                    ax.axhline(y, color=color("AdamW"), ls=":", lw=0.7, alpha=SEED_ALPHA + 0.15)
                ax.axhline(m, color=color("AdamW"), ls="--", label=f"AdamW (tuned) {pm(m, h, n)}")
                if h:
                    ax.axhspan(m - h, m + h, color=color("AdamW"), alpha=0.12, lw=0)
                ns.append(n)
            fs = sorted(pre["f"].unique())
            steps = int(tab["steps_done"].max()) if len(tab) else sd.scale.steps
            if fs:
                ax.set_xscale("log")
                ax.set_xticks(fs)
                ax.set_xticklabels([f"{f}\n{analysis.basis_refreshes('soap', f, steps)}" for f in fs])
                ax.minorticks_off()
            ax.set_xlabel("precondition frequency f  (second line: SOAP basis refreshes in the run)")
            ax.set_ylabel("final validation loss")
            ax.set_title(f"Final loss vs preconditioning frequency {scale_tag(sd)}\n{n_text(ns, where=' per point')}")
            ax.legend(fontsize=7)
            lines.append(caption(sd))
            if multi:
                lines.append(how_drawn(key) + "; AdamW: dashed mean, band, dotted seeds")
            lines.append(f"[{key}] a {steps}-step run refreshes SOAP's basis (steps−1)//f times after the initial eigh "
                         f"(at f={fs[-1] if fs else '?'}: {analysis.basis_refreshes('soap', fs[-1], steps) if fs else '?'}); "
                         f"Shampoo recomputes its roots steps//f times from step f. The paper's runs refresh ≥ 30 times at f = 100.")
        footer(fig, lines + notes)
        return save(fig, figures_dir, name)


# ============================================================================================ batch size
def _log2_batches(ax, bss) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(bss)
    ax.set_xticklabels([str(b) for b in bss])
    ax.minorticks_off()
    ax.set_xlabel("batch size (sequences per step)")


def _fewer_seeds(ax, xs, summ, n_max: int, ys=None) -> None:
    """Write n next to the points that have fewer seeds than the panel's most."""
    for x, y, n in zip(xs, summ["mean"] if ys is None else ys, summ["n"]):
        if 0 < n < n_max:
            ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(-6, -11), ha="right", fontsize=6.5,
                        color="0.3")


def plot_batch_size(data: Mapping[str, Any], figures_dir, name: str = "batch_size") -> List[Path]:
    """Paper Fig. 4: steps to reach a target loss vs batch size, AdamW vs SOAP vs ideal linear scaling.

    Target: AdamW's final val loss at the smallest batch size, of the same seed; steps from the val-loss curves
    (linear interpolation between evaluations). Right: the final val losses. Each point: the mean over seeds
    with its 95% interval, a thin line per seed; a point with fewer seeds than the others says its n, a seed
    that never reaches the target is counted as "not reached" (and left out of the mean).
    """
    with style():
        fig, axes, present, notes = panel_rows(data, 2, width=4.8, height=3.6)
        lines = []
        for row, key in enumerate(present):
            sd = data[key]
            tab = analysis.batch_size_table(sd)
            multi = len(seeds_of(tab)) > 1
            targets = tab.groupby("seed", sort=True)["target"].first()
            t_mean, t_half, t_n = mean_ci(targets.tolist())
            b0 = int(tab[tab["optimizer"] == "adamw"]["batch_size"].min())
            labels = list(dict.fromkeys(tab["label"]))
            bss = sorted(int(b) for b in tab["batch_size"].unique())
            n_max = int(summarize(tab, ["label", "batch_size"])["n_runs"].max())
            ax, ax2, ns = axes[row, 0], axes[row, 1], []
            for i, label in enumerate(labels):
                g, c, dx = tab[tab["label"] == label], color(label), _dx(i, len(labels), 0.025)
                if multi:
                    seed_lines(ax, g, "batch_size", "steps_to_target", c, xfun=dx)
                summ = summarize(g, ["batch_size"], "steps_to_target")
                ok = summ[summ["n"] > 0]
                mean_errorbar(ax, dx(ok["batch_size"]), ok, c, marker=MARKERS.get(label, "o"), ms=5, lw=1.5,
                              label=label + (": mean ± 95% CI" if multi else ""))
                _fewer_seeds(ax, dx(ok["batch_size"]), ok, n_max)
                for b, gb in g.groupby("batch_size", sort=True):
                    k = int((gb["how"] == "not reached").sum())
                    if k:
                        ax.scatter(dx([b]), [sd.scale.steps], marker="x", color=c)
                        ax.annotate("not reached" if len(gb) == 1 else f"{k} of {len(gb)} not reached",
                                    (dx([b])[0], sd.scale.steps), color=c, fontsize=7, ha="center",
                                    textcoords="offset points", xytext=(0, 4))
                if len(ok):
                    bb, s0 = float(ok["batch_size"].iloc[0]), float(ok["mean"].iloc[0])
                    bs = np.array([b for b in bss if b >= bb], float)
                    ax.plot(bs, s0 * bb / bs, color=c, ls=":", lw=1, label=f"ideal linear scaling from {label}")
                fl = summarize(g, ["batch_size"])
                okf = fl[fl["n"] > 0]
                ns += list(okf["n"])
                if multi:
                    seed_lines(ax2, g, "batch_size", "final_val_loss", c, xfun=dx)
                mean_errorbar(ax2, dx(okf["batch_size"]), okf, c, marker=MARKERS.get(label, "o"), ms=5, lw=1.5,
                              label=label + (": mean ± 95% CI" if multi else ""))
                _fewer_seeds(ax2, dx(okf["batch_size"]), okf, n_max)
            ax.axhline(sd.scale.steps, color="0.6", lw=0.8)
            _log2_batches(ax, bss)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(mticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(mticker.NullFormatter())
            ax.set_ylabel(f"steps to reach the same seed's AdamW loss\nat batch {b0} (mean {t_mean:.3f})" if multi
                          else f"steps to reach val loss {t_mean:.3f}")
            nt = n_text(ns, where=" per point")
            ax.set_title(f"Steps to target vs batch size {scale_tag(sd)}\n{nt}")
            hs, ls = ax.get_legend_handles_labels()  # the means first, the ideal-scaling lines after them
            order = sorted(range(len(ls)), key=lambda j: (ls[j].startswith("ideal"), j))
            ax.legend([hs[j] for j in order], [ls[j] for j in order], fontsize=6.5)
            ax2.axhline(t_mean, color="0.5", ls="--", lw=0.8, label="target" + (" (mean over seeds)" if multi else ""))
            _log2_batches(ax2, bss)
            ax2.set_ylabel("final validation loss")
            ax2.set_title(f"Final loss vs batch size ({sd.scale.steps} steps) {scale_tag(sd)}\n{nt}")
            ax2.legend(fontsize=7)
            soap = tab[tab["optimizer"] == "soap"][["batch_size", "f"]].dropna().drop_duplicates().sort_values("batch_size")
            fs = ", ".join(f"{int(b)}→f={int(f)}" for b, f in soap.values)
            tt = f"{pm(t_mean, t_half, t_n, 4)}, n = {t_n}" if multi else f"{t_mean:.4f}"
            lines += [caption(sd), f"[{key}] target = AdamW's final val loss at the smallest batch ({tt}"
                                    f"{'; each seed its own' if multi else ''}); SOAP's f scaled with 1/batch ({fs}); "
                                    "every run has the same number of steps"]
            if multi:
                lines.append(how_drawn(key))
        footer(fig, lines + notes)
        return save(fig, figures_dir, name)


# ============================================================================================== variants
def _short(label: str) -> str:
    return (label.replace("SOAP factorized + one-sided", "SOAP fact.+1-sided").replace("SOAP factorized", "SOAP fact.")
            .replace("SOAP one-sided", "SOAP 1-sided"))


def plot_variants(data: Mapping[str, Any], figures_dir, name: str = "variants") -> List[Path]:
    """Paper Fig. 6: SOAP, factorized, one-sided, factorized + one-sided, Shampoo, AdamW — loss and memory.

    Left: bars at the mean final val loss over seeds, its 95% interval as error bars, one small point per seed,
    the mean ± half-width written (one seed: the run's loss). Right: optimizer-state memory (the same for every
    seed of an optimizer; a spread over seeds would be written).
    """
    with style():
        fig, axes, present, notes = panel_rows(data, 2, width=4.9, height=3.7)
        lines = []
        for row, key in enumerate(present):
            sd = data[key]
            tab = analysis.variants_table(sd)
            labels = list(dict.fromkeys(tab["label"]))
            summ = summarize(tab, ["label"]).set_index("label").loc[labels].reset_index()
            multi = len(seeds_of(tab)) > 1
            colors, short = [color(lb) for lb in labels], [_short(lb) for lb in labels]
            ax = axes[row, 0]
            y = summ["mean"].astype(float)
            ax.barh(short, y.fillna(0), color=colors, xerr=summ["half"].astype(float) if multi else None, ecolor="0.15",
                    error_kw=dict(capsize=3, lw=1))
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
                ax.text(x, i, f" {pm(r['mean'], r['half'], r['n'], 4)}" if r["n"] else " diverged", va="center", fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel("final validation loss" + (" (bar: mean; dots: seeds; ticks: 95% CI)" if multi else ""))
            ax.set_title(f"SOAP variants: final loss {scale_tag(sd)}\n{n_text(summ['n'], where=' per bar')}")
            ax2 = axes[row, 1]
            mem = summarize(tab, ["label"], "state_MB").set_index("label").loc[labels].reset_index()
            per = summarize(tab, ["label"], "state_per_param").set_index("label").loc[labels]["mean"]
            mb = mem["mean"].astype(float)
            ax2.barh(short, mb, color=colors)
            for i, (v, rp, vals) in enumerate(zip(mb, per.astype(float), mem["values"])):
                spread = f", {min(vals):.2f}–{max(vals):.2f} over seeds" if vals and max(vals) > min(vals) else ""
                ax2.text(v, i, f" {v:.2f} MB ({rp:.1f}× params){spread}", va="center", fontsize=7)
            ax2.invert_yaxis()
            ax2.set_xlim(0, float(mb.max()) * 1.6 if len(mb) else 1)
            ax2.set_xlabel("optimizer state (MB, peak)")
            same = multi and all(max(v) == min(v) for v in mem["values"] if v)
            ax2.set_title(f"Optimizer-state memory {scale_tag(sd)}" + ("\n(the same for every seed)" if same else ""))
            lines += [caption(sd), f"[{key}] memory = bytes of the tensors in optimizer.state (gradients excluded); "
                                    "× params = state bytes / 4 bytes per parameter"]
            if multi:
                lines.append(how_drawn(key))
        footer(fig, lines + notes)
        return save(fig, figures_dir, name)
