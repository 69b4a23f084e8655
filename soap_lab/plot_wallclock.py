"""The figures about time: validation loss against steps and wall-clock (paper Figs. 1 left/middle and 3), the
efficiency fit with the steps and wall-clock SOAP saves (Fig. 2), and SOAP's time overhead over AdamW against the
preconditioning frequency from the timing study (Fig. 7 left, ``soap_lab.overhead``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, List, Mapping, Optional

import numpy as np

from . import analysis
from .plotting import caption, color, footer, panel_rows, save, scale_tag, style

__all__ = ["plot_comparison", "plot_efficiency", "plot_overhead"]


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
        fig, axes, present, notes = panel_rows(data, 2, width=4.8)
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
                kw = dict(color=color(r["label"]), lw=1.8 if full else 0.9, ls="-" if full else "--",
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
            axes[row, 0].set_title(f"Loss vs steps {scale_tag(sd)}")
            axes[row, 1].set_title(f"Loss vs wall-clock {scale_tag(sd)}")
            axes[row, 0].legend(fontsize=7)
            lines += [caption(sd), _noise_note(sd)]
        footer(fig, lines + notes)
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
        fig, axes, present, notes = panel_rows(data, 2, width=4.8, height=3.6)
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
                ax.scatter(xs * scale_x, ys, color=color("SOAP"), zorder=3, label="SOAP final loss (budget fractions)")
                if fit is not None and len(xs):
                    grid = np.linspace(xs.min() * 0.8, xs.max() * 1.6, 200)
                    ax.plot(grid * scale_x, fit["a"] + fit["b"] * grid ** (-fit["beta"]), color=color("SOAP"), lw=1,
                            label=f"fit {fit['a']:.3f} + {fit['b']:.3g}·N^-{fit['beta']:.2f}")
                for e in eff:
                    if "target" not in e:
                        continue
                    c = color(e["baseline"])
                    ax.axhline(e["target"], color=c, ls="--", lw=1, label=f"{e['baseline']} final {e['target']:.4f}")
                    if col == 1 and e.get("baseline_step_time"):
                        ax.scatter([e["full_steps"] * e["baseline_step_time"]], [e["target"]], color=c, marker="s", zorder=3)
                    if e.get("reached"):
                        ax.axvline(e["steps_needed"] * scale_x, color=c, ls=":", lw=1)
                ax.set_ylabel("final validation loss")
                ax.set_xlabel("steps N" if col == 0 else "wall-clock (s) = N × median step time")
            axes[row, 0].set_title(f"Efficiency fit, steps {scale_tag(sd)}")
            axes[row, 1].set_title(f"Efficiency fit, wall-clock {scale_tag(sd)}")
            axes[row, 0].legend(fontsize=6.5)
            text = "\n".join(_efficiency_text(e, short=True) for e in eff)
            axes[row, 1].text(0.98, 0.97, text, transform=axes[row, 1].transAxes, ha="right",
                              va="top", fontsize=6.5, bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))
            lines += [caption(sd)] + [f"[{key}] " + _efficiency_text(e) for e in eff] + [_noise_note(sd)]
            ov = (overhead or {}).get(key)
            e = next((e for e in eff if e["baseline"] == "AdamW" and e.get("reached")), None)
            ratio = analysis.step_time_ratio(ov, sd.scale.base_frequency) if ov else None
            if e is not None and ratio is not None:
                wall = 1 - e["step_fraction"] * ratio
                lines.append(f"[{key}] with the timing study's step-time ratio instead (SOAP f={sd.scale.base_frequency} "
                             f"vs AdamW training step: ×{ratio:.3f}): {_more_less(wall, 'wall-clock', 'less', 'more')} than AdamW")
        footer(fig, lines + notes)
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
        fig, axes, present, notes = panel_rows(data, 2, width=4.6)
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
                        color=color("SOAP"), capsize=3, label="timing study (median, min–max over repeats)")
            fit = d.get("fit")
            if fit:
                grid = np.geomspace(fs.min(), fs.max() * 1.5, 100)
                ax.plot(grid, fit["floor_pct"] + fit["per_refresh_pct"] / grid, color=color("SOAP"), ls=":", lw=1,
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
                    ax.scatter(soap["f"].astype(float), y, facecolors="none", edgecolors=color("SOAP"), marker="o",
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
            ax2.plot(fs, ratio, marker="o", color=color("SOAP"))
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
        footer(fig, lines + notes)
        return save(fig, figures_dir, name)


def _load(v) -> str:
    return f"{v[0]:.1f}" if v else "?"
