"""The equivalence figures: Claim 1 on the teaching problem and what breaks it, and the measured gap to the
idealized update along training (data computed by :mod:`soap_lab.equivalence.experiments`, stored under ``data/equivalence/``).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import matplotlib.pyplot as plt

from . import ablations
from .records import datasets
from .plotting import color, footer, save, style

__all__ = ["plot_claim1", "plot_gap"]


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
        ax.loglog(sp["lambda"], sp["A"], "o", color=color("SOAP"), label="rows: A_i vs λ_i (L)")
        ax.loglog(sp["mu"], sp["C"], "s", color=color("Shampoo"), mfc="none", label="columns: C_j vs μ_j (R)")
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
        ax.semilogy([r["exponent"] for r in ex], [max(r["error"], 1e-17) for r in ex], "o-", color=color("Shampoo"))
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
        ax.plot([r["staleness"] for r in st], [r["error"] for r in st], "o-", ms=3, color=color("SOAP (eigh)"))
        if "staleness" in highlight:
            s = int(highlight["staleness"])
            near = min(st, key=lambda r: abs(r["staleness"] - s))
            ax.scatter([near["staleness"]], [near["error"]], s=120, facecolors="none", edgecolors="k", zorder=4)
        ax.set_xlabel("staleness s (basis from the factors of step T − s)")
        ax.set_ylabel("relative difference to idealized Shampoo^½")
        ax.set_title("A stale basis breaks it")

        ax = axes[3]
        ep = d["eps"]
        ax.loglog([r["eps_relative"] for r in ep], [max(r["error"], 1e-17) for r in ep], "o-", color=color("AdamW"))
        ax.set_xlabel("ε added to the eigenvalues (relative to mean eigenvalue of L)")
        ax.set_ylabel("relative difference")
        ax.set_title("ε (Shampoo's, on the eigenvalues)")
        ax.set_ylim(1e-17, 3)
        p = d["params"]
        prov = d.get("provenance", {})
        footer(fig, [f"teaching problem (soap_lab.train.models.anisotropic_regression): one {p['m']}×{p['n']} layer, condition "
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
    df = datasets.table(d)
    if not len(df):
        raise ablations.MissingResults("the gap trajectory has no rows")
    df = df[df["period"] > 0]  # the first basis is built from a single gradient
    fs = sorted(df["f"].unique())
    problems = [p for p in ("teaching", "gpt") if p in set(df["problem"])]
    with style():
        fig, axes = plt.subplots(len(problems), len(fs), figsize=(4.6 * len(fs), 3.3 * len(problems)), squeeze=False)
        measures = [("gap_basis", "stale basis, current statistics", "-"),
                    ("gap_running", "stale basis, running statistics (practical)", "--")]
        refresh_color = {"qr": color("SOAP"), "eigh": color("SOAP (eigh)")}
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
        footer(fig, lines)
        if figures_dir is None:
            return fig
        return save(fig, figures_dir, name)
