"""The figures: one seaborn style, one function per figure, each reading only stored results.

Inputs are what ``soap_lab.analysis`` reads back from stored records (``StudyData``: the rows of
``results.load`` that belong to a study, and their ``results.curves``) or the stored data sets under
``data/equivalence/`` and ``data/overhead/``. Nothing here trains or times anything.

Every run-based figure takes ``{scale name: StudyData or None}`` and draws one row of panels per scale that
has results; a scale without results is named in the figure's footer together with the command that
produces them. Every figure carries its scale and device (from the records) and is saved as PNG and PDF.

    from soap_lab import analysis, plotting, ablations
    sd = analysis.study_data("frequency", ablations.get_scale("cpu"))
    plotting.plot_frequency({"cpu": sd, "gpu": None}, "figures")
"""
from __future__ import annotations

import contextlib
import math
import textwrap
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import seaborn as sns

from . import analysis, stored

__all__ = [
    "PALETTE",
    "style",
    "save",
    "plot_lr_sweep",
    "plot_frequency",
    "plot_comparison",
    "plot_efficiency",
    "plot_batch_size",
    "plot_variants",
    "plot_overhead",
    "plot_claim1",
    "plot_gap",
]

_C = sns.color_palette("colorblind", 10)
#: One color per optimizer label, the same in every figure.
PALETTE: Dict[str, Any] = {
    "AdamW": _C[0],
    "Shampoo": _C[1],
    "SOAP": _C[2],
    "SOAP (eigh)": _C[4],
    "SOAP factorized": _C[3],
    "SOAP one-sided": _C[5],
    "SOAP factorized + one-sided": _C[6],
    "EigenAdafactor": _C[9],
    "Adafactor": _C[7],
}
MARKERS = {"AdamW": "s", "Shampoo": "^", "SOAP": "o", "SOAP (eigh)": "D"}


def _color(label: str):
    return PALETTE.get(label, _C[8])


@contextlib.contextmanager
def style():
    """The lab's one style (seaborn whitegrid, paper context, colorblind palette), without touching globals."""
    rc = {"axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
          "ytick.labelsize": 8, "figure.dpi": 100, "savefig.dpi": 150, "axes.titleweight": "bold",
          "legend.frameon": True, "legend.framealpha": 0.85}
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", rc=rc), sns.color_palette("colorblind"):
        with plt.rc_context(rc):
            yield


def save(fig, figures_dir, name: str) -> List[Path]:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` and ``.pdf`` (no timestamps, so reruns diff cleanly)."""
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None, "Creator": None, "Producer": None})
    plt.close(fig)
    return paths


def missing_hint(scale_name: str) -> str:
    """The command that produces a scale's results."""
    return f"make ablations SCALE={scale_name}" + (" DEVICE=cuda" if scale_name == "gpu" else "")


def _rows(data: Mapping[str, Any], ncols: int, width: float = 4.6, height: float = 3.4, **kw):
    """A figure with one row of ``ncols`` panels per scale present in ``data``; footer notes for the others."""
    present = [k for k, v in data.items() if v is not None]
    if not present:
        raise analysis.ablations.MissingResults(
            "no results for any scale: run " + " or ".join(f"`{missing_hint(k)}`" for k in data))
    fig, axes = plt.subplots(len(present), ncols, figsize=(width * ncols, height * len(present)), squeeze=False, **kw)
    notes = [f"scale {k}: no results (run `{missing_hint(k)}`)" for k, v in data.items() if v is None]
    return fig, axes, present, notes


def _footer(fig, lines: Sequence[str]) -> None:
    """Small text under the panels: scale, device, caveats (one line each)."""
    lines = [ln for ln in lines if ln]
    if not lines:
        return
    fig.tight_layout()
    bb = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, everything drawn so far (labels included)
    y = bb.y0 / fig.get_figheight() - 0.01
    x = max(bb.x0 / fig.get_figwidth(), 0.0)
    width = max(60, int(fig.get_figwidth() * 17))
    text = "\n".join(textwrap.fill(ln, width, subsequent_indent="    ") for ln in lines)
    fig.text(x, y, text, ha="left", va="top", fontsize=7, color="0.25")


def _caption(sd) -> str:
    return sd.caption() if sd is not None else ""


def _scale_tag(sd) -> str:
    return f"[{sd.scale.name}]"


def _fmt_pct(x: Optional[float]) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.0f}%"


# =========================================================================================== lr sweep
def plot_lr_sweep(data: Mapping[str, Any], figures_dir, name: str = "lr_sweep") -> List[Path]:
    """The learning-rate sweep: final val loss vs lr per optimizer; the tuned (best) lr is circled."""
    with style():
        fig, axes, present, notes = _rows(data, 1, width=4.8)
        for row, key in enumerate(present):
            sd, ax = data[key], axes[row, 0]
            tab = analysis.lr_table(sd)
            ymax = np.nanmax(tab["final_val_loss"].astype(float)) if tab["final_val_loss"].notna().any() else 1.0
            for label, g in tab.groupby("label", sort=False):
                ok = g[g["final_val_loss"].notna()]
                best = g[g["tuned"]]
                tuned = (f" (tuned {best['lr'].iloc[0]:g}: {best['final_val_loss'].iloc[0]:.3f})" if len(best) else "")
                ax.plot(ok["lr"], ok["final_val_loss"], marker=MARKERS.get(label, "o"), color=_color(label),
                        label=label + tuned)
                bad = g[g["final_val_loss"].isna()]
                if len(bad):
                    ax.scatter(bad["lr"], [ymax] * len(bad), marker="x", color=_color(label), s=40, zorder=3)
                ax.scatter(best["lr"], best["final_val_loss"], s=160, facecolors="none", edgecolors=_color(label),
                           linewidths=1.5, zorder=4)
            ax.set_xscale("log")
            lrs = sorted(tab["lr"].unique())
            ax.set_xticks(lrs)
            ax.set_xticklabels([f"{x:g}" for x in lrs])
            ax.minorticks_off()
            ax.margins(x=0.12)
            ax.set_xlabel("peak learning rate")
            ax.set_ylabel("final validation loss")
            ax.set_title(f"Learning-rate sweep (f = {sd.scale.base_frequency}) {_scale_tag(sd)}")
            ax.legend(title="circled: tuned lr; ×: diverged", title_fontsize=7)
        _footer(fig, [_caption(data[k]) for k in present] + notes)
        return save(fig, figures_dir, name)


# ============================================================================= precondition frequency
def plot_frequency(data: Mapping[str, Any], figures_dir, name: str = "frequency") -> List[Path]:
    """Paper Fig. 1 right and Fig. 7 right: final val loss vs f for Shampoo, SOAP (QR), SOAP (eigh); AdamW line.

    The number of basis refreshes a run of this length makes at each f is written under the f axis.
    """
    with style():
        fig, axes, present, notes = _rows(data, 1, width=5.6, height=3.8)
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
                    ax.plot(g["f"], g["final_val_loss"], marker=MARKERS.get(label, "o"), color=_color(label),
                            label=label + (" (QR)" if label == "SOAP" else ""))
            if len(adam) and adam["final_val_loss"].notna().any():
                y = float(adam["final_val_loss"].iloc[0])
                ax.axhline(y, color=_color("AdamW"), ls="--", label=f"AdamW (tuned) {y:.3f}")
            fs = sorted(pre["f"].unique())
            steps = int(tab["steps_done"].max()) if len(tab) else sd.scale.steps
            if fs:
                ax.set_xscale("log")
                ax.set_xticks(fs)
                ax.set_xticklabels([f"{f}\n{analysis.basis_refreshes('soap', f, steps)}" for f in fs])
                ax.minorticks_off()
            ax.set_xlabel("precondition frequency f  (second line: SOAP basis refreshes in the run)")
            ax.set_ylabel("final validation loss")
            ax.set_title(f"Final loss vs preconditioning frequency {_scale_tag(sd)}")
            ax.legend()
            lines.append(_caption(sd))
            lines.append(f"[{key}] a {steps}-step run refreshes SOAP's basis (steps−1)//f times after the initial eigh "
                         f"(at f={fs[-1] if fs else '?'}: {analysis.basis_refreshes('soap', fs[-1], steps) if fs else '?'}); "
                         f"Shampoo recomputes its roots steps//f times from step f. The paper's runs refresh ≥ 30 times at f = 100.")
        _footer(fig, lines + notes)
        return save(fig, figures_dir, name)


# ============================================================================== loss vs steps / time
def _noise_note(sd) -> str:
    tr = sd.curves("train")
    if not len(tr):
        return ""
    g = tr.groupby("run_id")["step_time"]
    cv = float((g.std() / g.mean()).median())
    dev = str(sd.scale.device)
    where = "a shared multi-tenant CPU" if dev == "cpu" else dev
    return (f"[{sd.scale.name}] wall-clock = recorded training time per step on {where}; median per-run "
            f"coefficient of variation of the step time {100 * cv:.0f}%" + (" (noisy)" if cv > 0.1 else ""))


def plot_comparison(data: Mapping[str, Any], figures_dir, name: str = "comparison") -> List[Path]:
    """Paper Figs. 1 left/middle and 3: val loss vs steps and vs wall-clock for AdamW, Shampoo, SOAP.

    SOAP's shorter schedules (the budget fractions of the efficiency protocol) are drawn thin and dashed.
    """
    with style():
        fig, axes, present, notes = _rows(data, 2, width=4.8)
        lines = []
        for row, key in enumerate(present):
            sd = data[key]
            val = sd.curves("val")
            runs = sd.runs
            tops = []
            for _, r in runs.sort_values("budget_fraction", ascending=False).iterrows():
                c = val[val["run_id"] == r["run_id"]].sort_values("step")
                if not len(c):
                    continue
                full = float(r["budget_fraction"]) == 1.0
                kw = dict(color=_color(r["label"]), lw=1.8 if full else 0.9, ls="-" if full else "--",
                          alpha=1.0 if full else 0.7,
                          label=r["label"] if full else (f"SOAP, {r['budget_fraction']:g} of the budget"))
                axes[row, 0].plot(c["step"], c["val_loss"], marker="o" if full else None, ms=2.5, **kw)
                axes[row, 1].plot(c["time"], c["val_loss"], marker="o" if full else None, ms=2.5, **kw)
                third = c[c["step"] >= c["step"].max() / 3]
                if len(third):
                    tops.append(float(third["val_loss"].max()))
            lo = float(runs["final_val_loss"].min()) if runs["final_val_loss"].notna().any() else None
            for ax in axes[row]:
                if tops and lo is not None:
                    ax.set_ylim(lo - 0.02 * (max(tops) - lo + 1e-9) - 0.01, max(tops))
                ax.set_ylabel("validation loss")
            axes[row, 0].set_xlabel("step")
            axes[row, 1].set_xlabel("training wall-clock (s, evaluation excluded)")
            axes[row, 0].set_title(f"Loss vs steps {_scale_tag(sd)}")
            axes[row, 1].set_title(f"Loss vs wall-clock {_scale_tag(sd)}")
            axes[row, 0].legend(fontsize=7)
            lines += [_caption(sd), _noise_note(sd)]
        _footer(fig, lines + notes)
        return save(fig, figures_dir, name)


def _more_less(x: Optional[float], what: str, fewer: str, more: str) -> str:
    if x is None or not math.isfinite(x):
        return f"{what} n/a"
    return f"{100 * x:.0f}% {fewer} {what}" if x >= 0 else f"{100 * -x:.0f}% {more} {what}"


def _efficiency_text(e: Mapping[str, Any], short: bool = False) -> str:
    base = e["baseline"]
    if "error" in e:
        return f"vs {base}: {e['error']}"
    if not e.get("reached"):
        if short:
            return f"vs {base}: fit never reaches {e['target']:.4f}"
        return (f"vs {base}: the fit never reaches {base}'s final loss {e['target']:.4f} "
                f"(fitted asymptote {e['fit']['a']:.4f}): no savings can be claimed")
    steps = _more_less(e["steps_saved"], "steps", "fewer", "more")
    w = e.get("wallclock")
    wall = _more_less(e.get("wallclock_saved"), "wall-clock", "less", "more")
    if w:  # the range the saving takes over the pool's step times; undecided when it straddles 0
        wall = (wall if w["decided"] else "wall-clock not decided") + f" ({100 * w['low']:+.0f}% to {100 * w['high']:+.0f}%)"
    if short:
        return f"vs {base}: {steps}, {wall}"
    return (f"vs {base}: the fit reaches {base}'s final loss {e['target']:.4f} at N* = {e['steps_needed']:.0f} "
            f"(budget {e['full_steps']} steps): SOAP needs {steps}, {wall}")


def plot_efficiency(data: Mapping[str, Any], figures_dir, name: str = "efficiency",
                    overhead: Optional[Mapping[str, Any]] = None) -> List[Path]:
    """Paper Fig. 2: SOAP's final losses at budget fractions, the fit a + b·N^-β, AdamW's and Shampoo's losses.

    Left: in steps; right: in wall-clock (steps × the runs' median recorded step time). The savings (or that
    the fit never reaches a baseline) are printed on the figure. With ``overhead`` (``{scale: timing study}``)
    the wall-clock saving vs AdamW is also given with the timing study's cleaner step-time ratio.
    """
    with style():
        fig, axes, present, notes = _rows(data, 2, width=4.8, height=3.6)
        lines = []
        for row, key in enumerate(present):
            sd = data[key]
            eff = analysis.efficiency_table(sd)
            pts = eff[0]["points"] if eff else []
            t_soap = next((e.get("soap_step_time") for e in eff if e.get("soap_step_time")), None)
            fit = next((e.get("fit") for e in eff if e.get("fit")), None)
            for col, ax in enumerate(axes[row]):
                xs = np.array([p[0] for p in pts], float)
                ys = np.array([p[1] for p in pts], float)
                scale_x = (t_soap or float("nan")) if col == 1 else 1.0
                ax.scatter(xs * scale_x, ys, color=_color("SOAP"), zorder=3, label="SOAP final loss (budget fractions)")
                if fit is not None and len(xs):
                    grid = np.linspace(xs.min() * 0.8, xs.max() * 1.6, 200)
                    ax.plot(grid * scale_x, fit["a"] + fit["b"] * grid ** (-fit["beta"]), color=_color("SOAP"), lw=1,
                            label=f"fit {fit['a']:.3f} + {fit['b']:.3g}·N^-{fit['beta']:.2f}")
                for e in eff:
                    if "target" not in e:
                        continue
                    c = _color(e["baseline"])
                    ax.axhline(e["target"], color=c, ls="--", lw=1, label=f"{e['baseline']} final {e['target']:.4f}")
                    if col == 1 and e.get("baseline_step_time"):
                        ax.scatter([e["full_steps"] * e["baseline_step_time"]], [e["target"]], color=c, marker="s", zorder=3)
                    if e.get("reached"):
                        ax.axvline(e["steps_needed"] * scale_x, color=c, ls=":", lw=1)
                ax.set_ylabel("final validation loss")
                ax.set_xlabel("steps N" if col == 0 else "wall-clock (s) = N × median step time")
            axes[row, 0].set_title(f"Efficiency fit, steps {_scale_tag(sd)}")
            axes[row, 1].set_title(f"Efficiency fit, wall-clock {_scale_tag(sd)}")
            axes[row, 0].legend(fontsize=6.5)
            text = "\n".join(_efficiency_text(e, short=True) for e in eff)
            axes[row, 1].text(0.98, 0.97, text, transform=axes[row, 1].transAxes, ha="right",
                              va="top", fontsize=6.5, bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))
            lines += [_caption(sd)] + [f"[{key}] " + _efficiency_text(e) for e in eff] + [_noise_note(sd)]
            ov = (overhead or {}).get(key)
            e = next((e for e in eff if e["baseline"] == "AdamW" and e.get("reached")), None)
            ratio = analysis.step_time_ratio(ov, sd.scale.base_frequency) if ov else None
            if e is not None and ratio is not None:
                wall = 1 - e["step_fraction"] * ratio
                lines.append(f"[{key}] with the timing study's step-time ratio instead (SOAP f={sd.scale.base_frequency} "
                             f"vs AdamW training step: ×{ratio:.3f}): {_more_less(wall, 'wall-clock', 'less', 'more')} than AdamW")
        _footer(fig, lines + notes)
        return save(fig, figures_dir, name)


# ============================================================================================ batch size
def plot_batch_size(data: Mapping[str, Any], figures_dir, name: str = "batch_size") -> List[Path]:
    """Paper Fig. 4: steps to reach a target loss vs batch size, AdamW vs SOAP vs ideal linear scaling.

    Target: AdamW's final val loss at the smallest batch size; steps from the val-loss curves (linear
    interpolation between evaluations). Right: the final val losses.
    """
    with style():
        fig, axes, present, notes = _rows(data, 2, width=4.6)
        lines = []
        for row, key in enumerate(present):
            sd = data[key]
            tab = analysis.batch_size_table(sd)
            target = float(tab["target"].iloc[0])
            ax = axes[row, 0]
            for label, g in tab.groupby("label", sort=False):
                g = g.sort_values("batch_size")
                c = _color(label)
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
            ax.set_title(f"Steps to target vs batch size {_scale_tag(sd)}")
            ax.legend(fontsize=6.5)
            ax2 = axes[row, 1]
            for label, g in tab.groupby("label", sort=False):
                g = g.sort_values("batch_size")
                ax2.plot(g["batch_size"], g["final_val_loss"], marker=MARKERS.get(label, "o"), color=_color(label), label=label)
            ax2.axhline(target, color="0.5", ls="--", lw=0.8, label="target")
            ax2.set_xscale("log", base=2)
            ax2.set_xticks(bss)
            ax2.set_xticklabels([str(b) for b in bss])
            ax2.minorticks_off()
            ax2.set_xlabel("batch size (sequences per step)")
            ax2.set_ylabel("final validation loss")
            ax2.set_title(f"Final loss vs batch size ({sd.scale.steps} steps) {_scale_tag(sd)}")
            ax2.legend(fontsize=7)
            fs = ", ".join(f"{int(b)}→f={int(f)}" for b, f in tab[tab["optimizer"] == "soap"][["batch_size", "f"]].values)
            lines += [_caption(sd), f"[{key}] target = AdamW's final val loss at the smallest batch ({target:.4f}); "
                                    f"SOAP's f scaled with 1/batch ({fs}); every run has the same number of steps"]
        _footer(fig, lines + notes)
        return save(fig, figures_dir, name)


# ============================================================================================== variants
def plot_variants(data: Mapping[str, Any], figures_dir, name: str = "variants") -> List[Path]:
    """Paper Fig. 6: SOAP, factorized, one-sided, factorized + one-sided, Shampoo, AdamW — loss and memory."""
    with style():
        fig, axes, present, notes = _rows(data, 2, width=4.8, height=3.6)
        lines = []
        for row, key in enumerate(present):
            sd = data[key]
            tab = analysis.variants_table(sd)
            labels = list(tab["label"])
            colors = [_color(lb) for lb in labels]
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
            ax.set_title(f"SOAP variants: final loss {_scale_tag(sd)}")
            ax2 = axes[row, 1]
            mb = tab["state_MB"].astype(float)
            ax2.barh(short, mb, color=colors)
            for i, (v, r) in enumerate(zip(mb, tab["state_per_param"].astype(float))):
                ax2.text(v, i, f" {v:.2f} MB ({r:.1f}× params)", va="center", fontsize=7)
            ax2.invert_yaxis()
            ax2.set_xlim(0, float(mb.max()) * 1.6 if len(mb) else 1)
            ax2.set_xlabel("optimizer state (MB, peak)")
            ax2.set_title(f"Optimizer-state memory {_scale_tag(sd)}")
            lines += [_caption(sd), f"[{key}] memory = bytes of the tensors in optimizer.state (gradients excluded); "
                                    "× params = state bytes / 4 bytes per parameter"]
        _footer(fig, lines + notes)
        return save(fig, figures_dir, name)


# ============================================================================================== overhead
def plot_overhead(data: Mapping[str, Optional[Mapping[str, Any]]], figures_dir, name: str = "overhead",
                  runs: Optional[Mapping[str, Any]] = None) -> List[Path]:
    """Paper Fig. 7 left: SOAP's time overhead over AdamW vs f, from the timing study (``soap_lab.overhead``).

    Left: extra time per training step, as % of an AdamW training step (forward + backward + AdamW step),
    with the fit c + b/f (c = the per-step floor). Right: optimizer-step time, SOAP / AdamW. Hollow markers:
    the same overhead from the training runs' recorded optimizer times (frequency study), if given in ``runs``.
    """
    with style():
        fig, axes, present, notes = _rows(data, 2, width=4.6)
        lines = []
        for row, key in enumerate(present):
            d = data[key]
            rows = d["summary"]
            fs = np.array([r["f"] for r in rows], float)
            ax = axes[row, 0]
            ov = np.array([r["overhead_pct"] for r in rows], float)
            lo = np.array([r.get("overhead_pct_lo", np.nan) for r in rows], float)
            hi = np.array([r.get("overhead_pct_hi", np.nan) for r in rows], float)
            ax.errorbar(fs, ov, yerr=[ov - lo, hi - ov] if np.isfinite(lo).all() else None, marker="o",
                        color=_color("SOAP"), capsize=3, label="timing study (median, min–max over repeats)")
            fit = d.get("fit")
            if fit:
                grid = np.geomspace(fs.min(), fs.max() * 1.5, 100)
                ax.plot(grid, fit["floor_pct"] + fit["per_refresh_pct"] / grid, color=_color("SOAP"), ls=":", lw=1,
                        label=f"fit {fit['floor_pct']:.1f}% + {fit['per_refresh_pct']:.1f}%/f")
                ax.axhline(fit["floor_pct"], color="0.5", ls="--", lw=0.8, label=f"floor {fit['floor_pct']:.1f}% (per-step matmuls)")
            sd = runs.get(key) if runs else None
            if sd is not None:
                tr = analysis.frequency_table(sd)
                adam = tr[tr["optimizer"] == "adamw"]
                soap = tr[(tr["label"] == "SOAP") & tr["f"].notna()].sort_values("f")
                if len(adam) and len(soap):
                    a = adam.iloc[0]
                    a_opt = float(a["opt_time_total"]) / float(a["steps_done"])
                    a_step = float(a["wall_time"]) / float(a["steps_done"])
                    y = [100 * (float(r["opt_time_total"]) / float(r["steps_done"]) - a_opt) / a_step for _, r in soap.iterrows()]
                    ax.scatter(soap["f"].astype(float), y, facecolors="none", edgecolors=_color("SOAP"), marker="o",
                               label="from the training runs' recorded optimizer time (noisy)")
            ax.set_xscale("log")
            ax.set_xticks(fs)
            ax.set_xticklabels([f"{int(f)}" for f in fs])
            ax.minorticks_off()
            ax.set_xlabel("precondition frequency f")
            ax.set_ylabel("SOAP's extra time per step\n(% of an AdamW training step)")
            ax.set_title(f"SOAP's time overhead over AdamW [{key}]")
            ax.legend(fontsize=6.5)
            ax2 = axes[row, 1]
            ratio = np.array([r["opt_ratio"] for r in rows], float)
            ax2.plot(fs, ratio, marker="o", color=_color("SOAP"))
            ax2.set_xscale("log")
            ax2.set_xticks(fs)
            ax2.set_xticklabels([f"{int(f)}" for f in fs])
            ax2.minorticks_off()
            ax2.set_xlabel("precondition frequency f")
            ax2.set_ylabel("optimizer step time, SOAP / AdamW")
            ax2.set_title(f"Optimizer step alone [{key}]")
            p, prov = d["params"], d.get("provenance", {})
            dev = prov.get("device", {})
            lines.append(f"[{key}] scale {key} (preset {p['preset']}: {p['n_matrices']} matrices, {p['n_params']:,} params; "
                         f"AdamW step {1e3 * d['adamw_step_s']:.2f} ms, forward+backward at batch {p['batch_size']}: "
                         f"{1e3 * d['forward_backward_s']:.0f} ms) · device {dev.get('type', '?')}: {dev.get('name', '?')}, "
                         f"{p['threads']} thread(s)")
            lines.append(f"[{key}] open-loop gradients, arms interleaved in one process, {p['repeats']} repeats × ≥{p['window']} steps; "
                         f"1-min load average {_load(d.get('loadavg_start'))} at the start, {_load(d.get('loadavg_end'))} at the end"
                         f" ({prov.get('device', {}).get('cpu_count', '?')} CPUs)")
        _footer(fig, lines + notes)
        return save(fig, figures_dir, name)


def _load(v) -> str:
    return f"{v[0]:.1f}" if v else "?"


# =========================================================================================== equivalence
def plot_claim1(d: Mapping[str, Any], figures_dir=None, name: str = "equivalence_claim1", highlight: Optional[Mapping[str, Any]] = None):
    """Claim 1 on the teaching problem (``claim1.claim1_study``): the statistics are the eigenvalues, the two
    updates agree, and the identity breaks with e ≠ ½, without the trace factor, with ε, in a stale basis.

    ``figures_dir=None`` returns the figure (interactive use) instead of saving it.
    """
    highlight = dict(highlight or {})
    with style():
        fig, axes = plt.subplots(2, 2, figsize=(10, 7.2))
        axes = axes.ravel()
        sp = d["spectrum"]
        ax = axes[0]
        ax.loglog(sp["lambda"], sp["A"], "o", color=_color("SOAP"), label="rows: A_i vs λ_i (L)")
        ax.loglog(sp["mu"], sp["C"], "s", color=_color("Shampoo"), mfc="none", label="columns: C_j vs μ_j (R)")
        allv = [v for v in sp["lambda"] + sp["mu"] if v > 0]
        ax.plot([min(allv), max(allv)], [min(allv), max(allv)], color="0.5", lw=0.8, ls="--")
        ax.set_xlabel("eigenvalue of L (λ) or R (μ)")
        ax.set_ylabel("Adafactor statistic in the eigenbasis")
        ax.set_title("Adafactor's statistics = eigenvalues")
        ax.legend(fontsize=7, loc="upper left")
        ax.text(0.97, 0.03, f"max rel. error {d['stats_error']:.1e}\n1ᵀA = {sp['sum_A']:.4g}, Tr L = {sp['trace_L']:.4g}",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7)

        ax = axes[1]
        ex = d["exponent"]
        ax.semilogy([r["exponent"] for r in ex], [max(r["error"], 1e-17) for r in ex], "o-", color=_color("Shampoo"))
        ax.axvline(0.5, color="0.5", ls="--", lw=0.8)
        ax.axvline(0.25, color="0.7", ls=":", lw=0.8)
        ax.axvline(0.4, color="0.7", ls=":", lw=0.8)
        ax.text(0.25, 1e-9, " ¼\n classic", fontsize=7, color="0.4")
        ax.text(0.4, 1e-6, " 1/2.5\n paper's\n baseline", fontsize=7, color="0.4")
        if "exponent" in highlight:
            e = float(highlight["exponent"])
            near = min(ex, key=lambda r: abs(r["exponent"] - e))
            ax.scatter([near["exponent"]], [max(near["error"], 1e-17)], s=120, facecolors="none", edgecolors="k", zorder=4)
        ax.set_ylim(1e-17, 3)
        ax.set_xlabel("Shampoo exponent e in L^-e G R^-e")
        ax.set_ylabel("relative difference to Adafactor-in-eigenbasis")
        ax.set_title("Only e = ½ matches")
        ax.text(0.03, 0.97, f"e = ½: {d['exact_error']:.1e}\ne = ½ without √Tr L: {d['no_trace_error']:.2f}",
                transform=ax.transAxes, ha="left", va="top", fontsize=7,
                bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))

        ax = axes[2]
        st = d["staleness"]
        ax.plot([r["staleness"] for r in st], [r["error"] for r in st], "o-", ms=3, color=_color("SOAP (eigh)"))
        if "staleness" in highlight:
            s = int(highlight["staleness"])
            near = min(st, key=lambda r: abs(r["staleness"] - s))
            ax.scatter([near["staleness"]], [near["error"]], s=120, facecolors="none", edgecolors="k", zorder=4)
        ax.set_xlabel("staleness s (basis from the factors of step T − s)")
        ax.set_ylabel("relative difference to idealized Shampoo^½")
        ax.set_title("A stale basis breaks it")

        ax = axes[3]
        ep = d["eps"]
        ax.loglog([r["eps_relative"] for r in ep], [max(r["error"], 1e-17) for r in ep], "o-", color=_color("AdamW"))
        ax.set_xlabel("ε added to the eigenvalues (relative to mean eigenvalue of L)")
        ax.set_ylabel("relative difference")
        ax.set_title("ε (Shampoo's, on the eigenvalues)")
        ax.set_ylim(1e-17, 3)
        p = d["params"]
        prov = d.get("provenance", {})
        _footer(fig, [f"teaching problem (soap_lab.models.anisotropic_regression): one {p['m']}×{p['n']} layer, condition "
                      f"{p['condition']:g}, label noise {p['noise']}, L = E[GGᵀ], R = E[GᵀG] over {p['n_batches']} minibatch "
                      f"gradients, float64; stale bases along an Adam trajectory (lr {p['trajectory_lr']})"
                      + (f" · device {prov.get('device', {}).get('type', 'cpu')}: {prov.get('device', {}).get('name', '?')}" if prov else "")])
        if figures_dir is None:
            return fig
        return save(fig, figures_dir, name)


def plot_gap(d: Mapping[str, Any], figures_dir=None, name: str = "equivalence_gap"):
    """The measured gap to idealized Shampoo^½ along training trajectories vs the age of the basis
    (``claim1.gap_trajectory``): median (and interquartile band) over steps and layers at each age; one row
    per problem, one column per f.

    Not in the paper: it shows how far the practical algorithm (a basis frozen between refreshes, statistics
    accumulated across bases) is from the identity of Claim 1 (which holds to round-off in a fresh basis).
    """
    df = stored.table(d)
    if not len(df):
        raise analysis.ablations.MissingResults("the gap trajectory has no rows")
    df = df[df["period"] > 0]  # the first basis is built from a single gradient
    fs = sorted(df["f"].unique())
    problems = [p for p in ("teaching", "gpt") if p in set(df["problem"])]
    with style():
        fig, axes = plt.subplots(len(problems), len(fs), figsize=(4.6 * len(fs), 3.3 * len(problems)), squeeze=False)
        measures = [("gap_basis", "stale basis, current statistics", "-"),
                    ("gap_running", "stale basis, running statistics (practical)", "--")]
        refresh_color = {"qr": _color("SOAP"), "eigh": _color("SOAP (eigh)")}
        for i, prob in enumerate(problems):
            for j, f in enumerate(fs):
                ax = axes[i, j]
                g = df[(df["problem"] == prob) & (df["f"] == f)]
                for refresh, gr in g.groupby("refresh"):
                    c = refresh_color.get(refresh, "k")
                    for col, lab, ls in measures:
                        q = gr.groupby("age")[col].quantile([0.25, 0.5, 0.75]).unstack()
                        ax.plot(q.index, q[0.5], ls=ls, color=c, lw=1.4, label=f"{refresh} refresh: {lab}")
                        if col == "gap_basis":
                            ax.fill_between(q.index, q[0.25], q[0.75], color=c, alpha=0.12, lw=0)
                fresh = float(g["gap_fresh"].max()) if len(g) else float("nan")
                ax.text(0.97, 0.04, f"fresh eigenbasis (Claim 1): max gap {fresh:.0e}", transform=ax.transAxes,
                        ha="right", va="bottom", fontsize=7, color="0.3")
                ax.set_ylim(bottom=0)
                ax.set_xlabel("gradients since the basis was computed")
                ax.set_ylabel("relative gap to idealized Shampoo^½")
                n_layers = g["layer"].nunique()
                what = "teaching problem" if prob == "teaching" else "GPT"
                ax.set_title(f"{what}: f = {f}" + (f" ({n_layers} matrices)" if n_layers > 1 else ""))
                if i == 0 and j == 0:
                    ax.legend(fontsize=6.5, loc="upper left")
        p = d["params"]
        prov = d.get("provenance", {})
        parts = []
        if "teaching" in problems:
            parts.append(f"teaching problem: one {p['m']}×{p['n']} layer, condition {p['condition']:g}, batch {p['batch']}")
        if "gpt" in problems:
            parts.append(f"GPT preset {p['preset']} on Austen characters, batch {p.get('gpt_batch', '?')}, every matrix "
                         "(inverse roots on the factors' range)")
        lines = [f"EigenAdafactor (SOAP's ordering) trained {p['steps']} steps (lr {p['lr']}, betas {tuple(p['betas'])}), "
                 + "; ".join(parts) + ", float64. Before each step: the preconditioned gradient (no momentum) in the "
                 "optimizer's basis vs √Tr L·L^-½ G R^-½ from the current factors; median and interquartile band over "
                 "steps (and matrices) with the same basis age; the first basis (from one gradient) is excluded.",
                 (f"device {prov.get('device', {}).get('type', 'cpu')}: {prov.get('device', {}).get('name', '?')}" if prov else "")]
        _footer(fig, lines)
        if figures_dir is None:
            return fig
        return save(fig, figures_dir, name)
