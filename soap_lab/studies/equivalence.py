"""Claim 1 (paper §3): is idealized Shampoo with power ½ exactly Adafactor run in Shampoo's eigenbasis, and what
breaks it? And (not in the paper) how far is the practical algorithm from that identity along training?

Protocol: measured data sets, scale-independent (float64 on the CPU, :mod:`soap_lab.equivalence.experiments`),
stored as ``data/equivalence/claim1.json`` (:func:`~soap_lab.equivalence.experiments.claim1_study`: the teaching
problem, one 16×12 layer, L and R over 64 minibatch gradients; the exponent, the trace factor, ε and a stale
basis varied) and ``data/equivalence/gap_trajectory.json`` (:func:`~soap_lab.equivalence.experiments.gap_trajectory`:
the gap to the idealized update along EigenAdafactor trajectories, teaching problem and a small GPT). ``study run
equivalence`` computes both (minutes) and refuses to replace them without ``--force``.

Claims, read from the stored claim1 data: the identity holds (relative difference < 1e-10) and breaks for the
classic exponent ¼, without the √Tr L factor and in a stale basis (relative difference > 1e-2 at every staleness
s ≥ 1). These are exact identities evaluated by one deterministic float64 computation on one problem instance, not
samples: there is no seed to vary and no interval to draw. Each row therefore has n = 1, no interval, ``exact: True``
and ``where`` "exact (float64): <value>"; its verdict compares the computed value with the threshold directly
(reproduced / contradicted). A seeded verdict would read "inconclusive at this power", which says nothing true
here; the thresholds sit four orders of magnitude away from the values (round-off ≈ 1e-14; breaks ≈ 0.2-1), so
no round-off can flip a verdict.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .. import stats
from ..equivalence import experiments
from ..records import datasets, store
from .base import Study
from .params import ParameterError

__all__ = ["HOLDS", "BREAKS", "paths", "measure", "load_claim1", "load_gap", "exact_row", "claim_rows",
           "draw_claim1", "draw_gap", "STUDY"]

HOLDS = 1e-10
"""The identity holds: relative difference below this (float64 round-off is ≈ 1e-14)."""
BREAKS = 1e-2
"""The identity breaks: relative difference above this."""
_HINT = "python -m soap_lab study run equivalence"


def paths(out_dir=None) -> Tuple[Path, Path]:
    """``(claim1.json, gap_trajectory.json)`` under ``out_dir`` (default ``data/equivalence/``)."""
    d = Path(out_dir) if out_dir is not None else datasets.EQUIVALENCE_DIR
    return d / datasets.CLAIM1_FILE, d / datasets.GAP_FILE


def measure(scale=None, force: bool = False, out_dir=None, log=print, claim1: Optional[Mapping[str, Any]] = None,
            gap: Optional[Mapping[str, Any]] = None) -> Path:
    """Compute both data sets (``claim1``/``gap``: keyword arguments of ``claim1_study``/``gap_trajectory``) and
    store them with their provenance under ``out_dir``; returns the directory. ``scale`` is not used (float64 on
    the CPU at every scale). A stored data set is replaced only with ``force`` (checked before computing)."""
    from ..records.provenance import provenance

    targets = paths(out_dir)
    stored = [p for p in targets if p.exists()]
    if stored and not force:
        raise ParameterError(f"the equivalence data are stored at {stored[0]}: pass --force to compute them again "
                             "(replaces them)")
    for make, kw, path in ((experiments.claim1_study, claim1, targets[0]),
                           (experiments.gap_trajectory, gap, targets[1])):
        d = make(**dict(kw or {}))
        d["provenance"] = provenance()
        datasets.save_json(d, path)
        if log:
            log(f"equivalence: wrote {path}")
    return targets[0].parent


def load_claim1(out_dir=None) -> Dict[str, Any]:
    return datasets.load_json(paths(out_dir)[0], "Claim 1 data", _HINT)


def load_gap(out_dir=None) -> Dict[str, Any]:
    return datasets.load_json(paths(out_dir)[1], "gap-trajectory data", _HINT)


# ================================================================================================ claims
def exact_row(text: str, value: float, kind: str, threshold: float, **keys) -> Dict[str, Any]:
    """A claim on one exactly computed value (module docstring): n = 1, the "interval" is the value itself, the
    verdict compares it with ``threshold`` (``kind`` "less": value < threshold; "greater": value > threshold)."""
    if kind not in ("less", "greater"):
        raise ValueError(f"kind must be 'less' or 'greater', got {kind!r}")
    ok = value < threshold if kind == "less" else value > threshold
    return {"claim": text, "where": f"exact (float64): {value:.1e}", **keys, "n": 1, "mean": float(value),
            "low": float(value), "high": float(value), "values": [float(value)], "seeds": [], "kind": kind,
            "margin": 0.0, "threshold": threshold, "exact": True,
            "verdict": stats.REPRODUCED if ok else stats.CONTRADICTED}


def claim_rows(c: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The claims of §3 on a stored ``claim1_study`` (:func:`exact_row` each)."""
    by_e = {round(float(r["exponent"]), 6): float(r["error"]) for r in c["exponent"]}
    stale = [r for r in c["staleness"] if r["staleness"] >= 1]
    rows = [exact_row(f"Claim 1: √Tr L·L^-½ G R^-½ = Adafactor in the eigenbasis (relative difference < {HOLDS:g})",
                      float(c["exact_error"]), "less", HOLDS, headline=True)]
    if 0.25 in by_e:
        rows.append(exact_row(f"it breaks for the classic exponent ¼ (relative difference > {BREAKS:g})",
                              by_e[0.25], "greater", BREAKS, exponent=0.25))
    rows.append(exact_row(f"it breaks without the trace factor √Tr L (relative difference > {BREAKS:g})",
                          float(c["no_trace_error"]), "greater", BREAKS))
    if stale:
        worst = min(stale, key=lambda r: r["error"])
        rows.append(exact_row(f"it breaks in a stale basis, s = {stale[0]['staleness']}–{stale[-1]['staleness']} "
                              f"steps old (smallest relative difference > {BREAKS:g})", float(worst["error"]),
                              "greater", BREAKS, staleness=int(worst["staleness"])))
    return rows


def claims(scale=None, root=None) -> List[Dict[str, Any]]:
    path = paths()[0]
    return claim_rows(store.read_record(path)) if path.is_file() else []


# =============================================================================================== figures
def _device(d: Mapping[str, Any]) -> str:
    dev = d.get("provenance", {}).get("device", {})
    return f"device {dev.get('type', 'cpu')}: {dev.get('name', '?')}" if d.get("provenance") else ""


def draw_claim1(d: Mapping[str, Any], out=None, name: str = "equivalence_claim1",
                highlight: Optional[Mapping[str, Any]] = None):
    """Claim 1 on the teaching problem: the statistics are the eigenvalues, the two updates agree, and the identity
    breaks with e ≠ ½, without the trace factor, with ε, in a stale basis. ``out=None`` returns the figure
    (the interactive widget, with ``highlight``'s exponent and staleness circled) instead of saving it."""
    import matplotlib.pyplot as plt

    from ..figures.style import color, footer, save, style

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
            near = min(ex, key=lambda r: abs(r["exponent"] - float(highlight["exponent"])))
            ax.scatter([near["exponent"]], [max(near["error"], 1e-17)], s=120, facecolors="none", edgecolors="k", zorder=4)
        ax.set_ylim(1e-17, 1e2)  # two decades of headroom: the errors ≈ 1 stay off the top frame (issue 21)
        ax.set_xlabel("Shampoo exponent e in L^-e G R^-e")
        ax.set_ylabel("relative difference to Adafactor-in-eigenbasis")
        ax.set_title("Only e = ½ matches")
        # lower right, where no point is (e > ½ has errors ≈ 1 at the top; e = ½ sits at the centre)
        ax.text(0.97, 0.03, f"e = ½: {d['exact_error']:.1e}\ne = ½ without √Tr L: {d['no_trace_error']:.2f}",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))

        ax = axes[2]
        st = d["staleness"]
        ax.plot([r["staleness"] for r in st], [r["error"] for r in st], "o-", ms=3, color=color("SOAP (eigh)"))
        if "staleness" in highlight:
            near = min(st, key=lambda r: abs(r["staleness"] - int(highlight["staleness"])))
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
        ax.set_ylim(1e-17, 1e2)
        p = d["params"]
        footer(fig, [f"teaching problem (soap_lab.train.models.anisotropic_regression): one {p['m']}×{p['n']} layer, "
                     f"condition {p['condition']:g}, label noise {p['noise']}, L = E[GGᵀ], R = E[GᵀG] over "
                     f"{p['n_batches']} minibatch gradients, float64; stale bases along an Adam trajectory (lr "
                     f"{p['trajectory_lr']})" + (f" · {_device(d)}" if _device(d) else "")])
        return fig if out is None else save(fig, out, name)


def draw_gap(d: Mapping[str, Any], out=None, name: str = "equivalence_gap"):
    """The measured gap to idealized Shampoo^½ along training vs the age of the basis (``gap_trajectory``): median and
    interquartile band over steps and layers at each age; one row per problem, one column per f. Not in the paper:
    how far the practical algorithm (a basis frozen between refreshes, statistics accumulated across bases) is from
    Claim 1 (which holds to round-off in a fresh basis). ``out=None`` returns the figure."""
    import matplotlib.pyplot as plt

    from ..figures.style import color, footer, save, style

    df = datasets.table(d)
    if not len(df):
        raise store.MissingResults("the gap trajectory has no rows")
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
        p, parts = d["params"], []
        if "teaching" in problems:
            parts.append(f"teaching problem: one {p['m']}×{p['n']} layer, condition {p['condition']:g}, batch {p['batch']}")
        if "gpt" in problems:
            parts.append(f"GPT preset {p['preset']} on Austen characters, batch {p.get('gpt_batch', '?')}, every matrix "
                         "(inverse roots on the factors' range)")
        footer(fig, [f"EigenAdafactor (SOAP's ordering) trained {p['steps']} steps (lr {p['lr']}, betas "
                     f"{tuple(p['betas'])}), " + "; ".join(parts) + ", float64. Before each step: the preconditioned "
                     "gradient (no momentum) in the optimizer's basis vs √Tr L·L^-½ G R^-½ from the current factors; "
                     "median and interquartile band over steps (and matrices) with the same basis age; the first "
                     "basis (from one gradient) is excluded.", _device(d)])
        return fig if out is None else save(fig, out, name)


def _claim1_figure(data: Mapping[str, Any], out):
    """``make figures``: Claim 1 from the stored data set (the same at every scale)."""
    return draw_claim1(load_claim1(), out)


def _gap_figure(data: Mapping[str, Any], out):
    """``make figures``: the gap along training from the stored data set (the same at every scale)."""
    return draw_gap(load_gap(), out)


STUDY = Study(
    name="equivalence", order=5, paper="§3, Claim 1 (the gap along training: not in the paper)", tuned=False,
    question="Is Shampoo with power ½ exactly Adafactor in Shampoo's eigenbasis, and what breaks it?",
    measure=measure, claims=claims, figures={"equivalence_claim1": _claim1_figure, "equivalence_gap": _gap_figure})
