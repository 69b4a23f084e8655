"""The study figures that compare final losses: the learning-rate sweep, the preconditioning frequency (paper
Figs. 1 right and 7 right), the batch size (Fig. 4) and SOAP's variants (Fig. 6). Each reads one study's stored
runs per scale (``analysis.StudyData``) through its table in :mod:`soap_lab.analysis`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping

import matplotlib.ticker as mticker
import numpy as np

from . import analysis
from .plotting import MARKERS, caption, color, footer, panel_rows, save, scale_tag, style

__all__ = ["plot_lr_sweep", "plot_frequency", "plot_batch_size", "plot_variants"]


# =========================================================================================== lr sweep
def plot_lr_sweep(data: Mapping[str, Any], figures_dir, name: str = "lr_sweep") -> List[Path]:
    """The learning-rate sweep: final val loss vs lr per optimizer; the tuned (best) lr is circled."""
    with style():
        fig, axes, present, notes = panel_rows(data, 1, width=4.8)
        for row, key in enumerate(present):
            sd, ax = data[key], axes[row, 0]
            tab = analysis.lr_table(sd)
            ymax = np.nanmax(tab["final_val_loss"].astype(float)) if tab["final_val_loss"].notna().any() else 1.0
            for label, g in tab.groupby("label", sort=False):
                ok = g[g["final_val_loss"].notna()]
                best = g[g["tuned"]]
                tuned = (f" (tuned {best['lr'].iloc[0]:g}: {best['final_val_loss'].iloc[0]:.3f})" if len(best) else "")
                ax.plot(ok["lr"], ok["final_val_loss"], marker=MARKERS.get(label, "o"), color=color(label),
                        label=label + tuned)
                bad = g[g["final_val_loss"].isna()]
                if len(bad):
                    ax.scatter(bad["lr"], [ymax] * len(bad), marker="x", color=color(label), s=40, zorder=3)
                ax.scatter(best["lr"], best["final_val_loss"], s=160, facecolors="none", edgecolors=color(label),
                           linewidths=1.5, zorder=4)
            ax.set_xscale("log")
            lrs = sorted(tab["lr"].unique())
            ax.set_xticks(lrs)
            ax.set_xticklabels([f"{x:g}" for x in lrs])
            ax.minorticks_off()
            ax.margins(x=0.12)
            ax.set_xlabel("peak learning rate")
            ax.set_ylabel("final validation loss")
            ax.set_title(f"Learning-rate sweep (f = {sd.scale.base_frequency}) {scale_tag(sd)}")
            ax.legend(title="circled: tuned lr; ×: diverged", title_fontsize=7)
        footer(fig, [caption(data[k]) for k in present] + notes)
        return save(fig, figures_dir, name)


# ============================================================================= precondition frequency
def plot_frequency(data: Mapping[str, Any], figures_dir, name: str = "frequency") -> List[Path]:
    """Paper Fig. 1 right and Fig. 7 right: final val loss vs f for Shampoo, SOAP (QR), SOAP (eigh); AdamW line.

    The number of basis refreshes a run of this length makes at each f is written under the f axis.
    """
    with style():
        fig, axes, present, notes = panel_rows(data, 1, width=5.6, height=3.8)
        lines = []
        for row, key in enumerate(present):
            sd, ax = data[key], axes[row, 0]
            tab = analysis.frequency_table(sd)
            adam = tab[tab["optimizer"] == "adamw"]
            pre = tab[tab["f"].notna()].copy()
            pre["f"] = pre["f"].astype(int)
            for label in ("Shampoo", "SOAP", "SOAP (eigh)"):
                g = pre[pre["label"] == label].sort_values("f")
                if len(g):
                    ax.plot(g["f"], g["final_val_loss"], marker=MARKERS.get(label, "o"), color=color(label),
                            label=label + (" (QR)" if label == "SOAP" else ""))
            if len(adam) and adam["final_val_loss"].notna().any():
                y = float(adam["final_val_loss"].iloc[0])
                ax.axhline(y, color=color("AdamW"), ls="--", label=f"AdamW (tuned) {y:.3f}")
            fs = sorted(pre["f"].unique())
            steps = int(tab["steps_done"].max()) if len(tab) else sd.scale.steps
            if fs:
                ax.set_xscale("log")
                ax.set_xticks(fs)
                ax.set_xticklabels([f"{f}\n{analysis.basis_refreshes('soap', f, steps)}" for f in fs])
                ax.minorticks_off()
            ax.set_xlabel("precondition frequency f  (second line: SOAP basis refreshes in the run)")
            ax.set_ylabel("final validation loss")
            ax.set_title(f"Final loss vs preconditioning frequency {scale_tag(sd)}")
            ax.legend()
            lines.append(caption(sd))
            lines.append(f"[{key}] a {steps}-step run refreshes SOAP's basis (steps−1)//f times after the initial eigh "
                         f"(at f={fs[-1] if fs else '?'}: {analysis.basis_refreshes('soap', fs[-1], steps) if fs else '?'}); "
                         f"Shampoo recomputes its roots steps//f times from step f. The paper's runs refresh ≥ 30 times at f = 100.")
        footer(fig, lines + notes)
        return save(fig, figures_dir, name)


# ============================================================================================ batch size
def plot_batch_size(data: Mapping[str, Any], figures_dir, name: str = "batch_size") -> List[Path]:
    """Paper Fig. 4: steps to reach a target loss vs batch size, AdamW vs SOAP vs ideal linear scaling.

    Target: AdamW's final val loss at the smallest batch size; steps from the val-loss curves (linear
    interpolation between evaluations). Right: the final val losses.
    """
    with style():
        fig, axes, present, notes = panel_rows(data, 2, width=4.6)
        lines = []
        for row, key in enumerate(present):
            sd = data[key]
            tab = analysis.batch_size_table(sd)
            target = float(tab["target"].iloc[0])
            ax = axes[row, 0]
            for label, g in tab.groupby("label", sort=False):
                g = g.sort_values("batch_size")
                c = color(label)
                ok = g[g["steps_to_target"].notna()]
                ax.plot(ok["batch_size"], ok["steps_to_target"], marker=MARKERS.get(label, "o"), color=c, label=label)
                for _, r in g[g["steps_to_target"].isna()].iterrows():
                    ax.annotate("not reached", (r["batch_size"], sd.scale.steps), color=c, fontsize=7, ha="center")
                    ax.scatter([r["batch_size"]], [sd.scale.steps], marker="x", color=c)
                if len(ok):
                    b0, s0 = float(ok["batch_size"].iloc[0]), float(ok["steps_to_target"].iloc[0])
                    bs = np.array(sorted(tab["batch_size"].unique()), float)
                    bs = bs[bs >= b0]
                    ax.plot(bs, s0 * b0 / bs, color=c, ls=":", lw=1, label=f"ideal linear scaling from {label}")
            ax.axhline(sd.scale.steps, color="0.6", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(mticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(mticker.NullFormatter())
            bss = sorted(tab["batch_size"].unique())
            ax.set_xticks(bss)
            ax.set_xticklabels([str(b) for b in bss])
            ax.minorticks_off()
            ax.set_xlabel("batch size (sequences per step)")
            ax.set_ylabel(f"steps to reach val loss {target:.3f}")
            ax.set_title(f"Steps to target vs batch size {scale_tag(sd)}")
            ax.legend(fontsize=6.5)
            ax2 = axes[row, 1]
            for label, g in tab.groupby("label", sort=False):
                g = g.sort_values("batch_size")
                ax2.plot(g["batch_size"], g["final_val_loss"], marker=MARKERS.get(label, "o"), color=color(label), label=label)
            ax2.axhline(target, color="0.5", ls="--", lw=0.8, label="target")
            ax2.set_xscale("log", base=2)
            ax2.set_xticks(bss)
            ax2.set_xticklabels([str(b) for b in bss])
            ax2.minorticks_off()
            ax2.set_xlabel("batch size (sequences per step)")
            ax2.set_ylabel("final validation loss")
            ax2.set_title(f"Final loss vs batch size ({sd.scale.steps} steps) {scale_tag(sd)}")
            ax2.legend(fontsize=7)
            fs = ", ".join(f"{int(b)}→f={int(f)}" for b, f in tab[tab["optimizer"] == "soap"][["batch_size", "f"]].values)
            lines += [caption(sd), f"[{key}] target = AdamW's final val loss at the smallest batch ({target:.4f}); "
                                    f"SOAP's f scaled with 1/batch ({fs}); every run has the same number of steps"]
        footer(fig, lines + notes)
        return save(fig, figures_dir, name)


# ============================================================================================== variants
def plot_variants(data: Mapping[str, Any], figures_dir, name: str = "variants") -> List[Path]:
    """Paper Fig. 6: SOAP, factorized, one-sided, factorized + one-sided, Shampoo, AdamW — loss and memory."""
    with style():
        fig, axes, present, notes = panel_rows(data, 2, width=4.8, height=3.6)
        lines = []
        for row, key in enumerate(present):
            sd = data[key]
            tab = analysis.variants_table(sd)
            labels = list(tab["label"])
            colors = [color(lb) for lb in labels]
            short = [lb.replace("SOAP factorized + one-sided", "SOAP fact.+1-sided").replace("SOAP factorized", "SOAP fact.")
                     .replace("SOAP one-sided", "SOAP 1-sided") for lb in labels]
            ax = axes[row, 0]
            y = tab["final_val_loss"].astype(float)
            ax.barh(short, y, color=colors)
            finite = y[np.isfinite(y)]
            if len(finite):
                span = float(finite.max() - finite.min()) or 0.05
                ax.set_xlim(float(finite.min()) - 0.6 * span, float(finite.max()) + 0.4 * span)
            for i, v in enumerate(y):
                ax.text(v if np.isfinite(v) else 0, i, f" {v:.4f}" if np.isfinite(v) else " diverged", va="center", fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel("final validation loss")
            ax.set_title(f"SOAP variants: final loss {scale_tag(sd)}")
            ax2 = axes[row, 1]
            mb = tab["state_MB"].astype(float)
            ax2.barh(short, mb, color=colors)
            for i, (v, r) in enumerate(zip(mb, tab["state_per_param"].astype(float))):
                ax2.text(v, i, f" {v:.2f} MB ({r:.1f}× params)", va="center", fontsize=7)
            ax2.invert_yaxis()
            ax2.set_xlim(0, float(mb.max()) * 1.6 if len(mb) else 1)
            ax2.set_xlabel("optimizer state (MB, peak)")
            ax2.set_title(f"Optimizer-state memory {scale_tag(sd)}")
            lines += [caption(sd), f"[{key}] memory = bytes of the tensors in optimizer.state (gradients excluded); "
                                    "× params = state bytes / 4 bytes per parameter"]
        footer(fig, lines + notes)
        return save(fig, figures_dir, name)
