"""The paper's other claims with seeds (scale ``cpu_freq``): QR vs eigh, the variants, the efficiency protocol.

Each claim is a difference computed seed by seed between two arms that share the seed's init and data order
(:mod:`soap_lab.stats`), summarised by its mean and 95% t-interval, and judged by the interval alone:

- Fig. 7 right, "QR refreshes are as good as eigh": SOAP (QR) − SOAP (eigh) at each f, |d| < 0.02;
- Fig. 6, "factorized SOAP costs almost nothing": SOAP factorized − SOAP, |d| < 0.02; "one-sided SOAP ≈ Shampoo":
  SOAP one-sided − Shampoo, |d| < 0.02; "factorized + one-sided beats AdamW": that − AdamW < 0;
- Fig. 4, "SOAP's advantage grows with batch size": d(b) = SOAP − AdamW at each batch b of ``scale.batch_sizes``
  (SOAP's f scaled with 1/b as in the paper), d(b) < 0 at each, and d(largest) − d(smallest) < 0;
- Figs. 1-3, the efficiency protocol per seed: SOAP's final losses at the budget fractions fitted with
  a + b·N^-β (:mod:`soap_lab.efficiency`) and solved for the same seed's AdamW (Shampoo) final loss; steps saved
  1 − N*/N. "≥ 40% fewer steps than AdamW": saved > 0.40; "fewer steps than Shampoo (≈ 20%)": saved > 0. A seed
  whose fit never reaches the target counts as no saving at all (saved = −1, stated in the row).

Input: the records of ``ablations.seeded_others`` (trained by ``python -m soap_lab.freq_study --arms others``);
nothing trains. :func:`lr_check` checks the seed-0 learning-rate tuning on every seed.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional

from . import ablations, analysis, efficiency, stats

__all__ = ["CLOSE_MARGIN", "frame", "qr_vs_eigh", "variants", "efficiency_claims", "batch_claims", "claims",
           "lr_check", "markdown", "report"]

#: "As good as" / "costs almost nothing": |difference of final losses| below this (nats), as in freq_analysis.
CLOSE_MARGIN = 0.02
#: The efficiency claim against AdamW: at least this fraction of the steps saved.
ADAMW_SAVING = 0.40


def frame(scale, root=None):
    """One row per stored run of the frequency, variants, comparison and batch-size studies at ``scale`` (their
    tuned lrs): label, f, seed, batch size, budget_fraction, steps, final loss."""
    import pandas as pd

    studies = ("frequency", "variants", "comparison", "batch_size")
    frames = [sd.runs for sd in (analysis.study_data(st, scale, root) for st in studies) if len(sd.runs)]
    cols = ["run_id", "label", "f", "seed", "batch_size", "budget_fraction", "steps_total", "final_val_loss"]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True).drop_duplicates("run_id")[cols].reset_index(drop=True)


def lr_check(scale, root=None) -> List[Dict[str, Any]]:
    """The tuning checked on every seed: for each optimizer and each other lr of its grid, loss(lr) − loss(tuned)
    per seed; the tuned lr (chosen on ``scale.lr_seeds``) holds where the interval is above 0."""
    import dataclasses

    sd = analysis.study_data("lr_sweep", dataclasses.replace(scale, tune_seeds=tuple(scale.seeds)), root)
    df, rows = sd.runs, []
    for opt, lrs in scale.lrs.items():
        tuned = ablations.tuned_lr(opt, scale, root)

        def at(lr):
            g = df[(df["optimizer"] == opt) & (df["lr"] == lr)]
            return {int(s): float(v) for s, v in zip(g["seed"], g["final_val_loss"])
                    if v is not None and math.isfinite(float(v))}

        for lr in lrs:
            d = stats.paired_differences(at(lr), at(tuned)) if lr != tuned else {}
            if d:
                rows.append(_row(f"{opt}: the tuned lr {tuned:g} beats lr {lr:g} (loss(lr) − loss(tuned) > 0)", d,
                                 "greater", 0.0, baseline=f"{opt} lr {lr:g}"))
    return rows


def _by_seed(df, label: str, f: Optional[int] = None, budget: float = 1.0) -> Dict[int, Optional[float]]:
    g = df[(df["label"] == label) & (df["budget_fraction"] == budget)]
    if f is not None:
        g = g[g["f"] == f]
    out: Dict[int, Optional[float]] = {}
    for s, v in zip(g["seed"], g["final_val_loss"]):
        out[int(s)] = float(v) if v is not None and math.isfinite(float(v)) else None
    return out


def _row(claim: str, values: Dict[int, float], kind: str, margin: float = 0.0, **keys) -> Dict[str, Any]:
    iv = stats.mean_interval(list(values.values()))
    return {"claim": claim, **keys, "n": iv.n, "mean": iv.mean, "low": iv.low, "high": iv.high,
            "values": iv.values, "seeds": list(values), "verdict": stats.verdict(iv, kind, margin)}


def qr_vs_eigh(df) -> List[Dict[str, Any]]:
    rows = []
    fs = sorted({int(f) for f in df[df["label"] == "SOAP (eigh)"]["f"].dropna()})
    for f in fs:
        d = stats.paired_differences(_by_seed(df, "SOAP", f), _by_seed(df, "SOAP (eigh)", f))
        if d:
            rows.append(_row(f"QR refresh as good as eigh (abs(SOAP QR − SOAP eigh) < {CLOSE_MARGIN})", d, "equal",
                             CLOSE_MARGIN, f=f))
    return rows


def variants(df, f: int) -> List[Dict[str, Any]]:
    pairs = [(f"factorized SOAP costs almost nothing (abs(factorized − SOAP) < {CLOSE_MARGIN})",
              "SOAP factorized", "SOAP", "equal", CLOSE_MARGIN),
             (f"one-sided SOAP ≈ Shampoo (abs(one-sided − Shampoo) < {CLOSE_MARGIN})",
              "SOAP one-sided", "Shampoo", "equal", CLOSE_MARGIN),
             ("factorized + one-sided beats AdamW (difference < 0)", "SOAP factorized + one-sided", "AdamW", "less", 0.0)]
    rows = []
    for claim, a, b, kind, margin in pairs:
        d = stats.paired_differences(_by_seed(df, a, f), _by_seed(df, b, None if b == "AdamW" else f))
        if d:
            rows.append(_row(claim, d, kind, margin, f=f))
    return rows


def _saved(df, f: int, seed: int, target: float, full_steps: int) -> float:
    soap = df[(df["label"] == "SOAP") & (df["seed"] == seed) & (df["f"] == f)]
    soap = soap[soap["final_val_loss"].map(lambda v: v is not None and math.isfinite(float(v)))]
    with warnings.catch_warnings():  # 5 points for 3 parameters: scipy cannot estimate a covariance
        warnings.simplefilter("ignore")
        s = efficiency.savings(soap["steps_total"].astype(float), soap["final_val_loss"].astype(float), target,
                               full_steps)
    return s.steps_saved if math.isfinite(s.steps_needed) else -1.0


def efficiency_claims(df, f: int) -> List[Dict[str, Any]]:
    """Steps saved per seed against AdamW and Shampoo (the same seed's full-budget final loss)."""
    rows = []
    full = df[df["budget_fraction"] == 1.0]
    steps = int(full["steps_total"].max()) if len(full) else 0
    for base, claim, threshold in (("AdamW", "SOAP needs ≥ 40% fewer steps than AdamW (saved > 0.40)", ADAMW_SAVING),
                                   ("Shampoo", "SOAP needs fewer steps than Shampoo (saved > 0)", 0.0)):
        targets = _by_seed(df, base, None if base == "AdamW" else f)
        saved = {}
        for seed, target in targets.items():
            n_points = len(df[(df["label"] == "SOAP") & (df["seed"] == seed) & (df["f"] == f)]["budget_fraction"].unique())
            if target is not None and n_points >= 3:
                try:
                    saved[seed] = _saved(df, f, seed, target, steps)
                except (ValueError, RuntimeError):
                    continue
        if saved:
            row = _row(claim, saved, "greater", threshold, baseline=base)
            row["unreached"] = [s for s, v in saved.items() if v == -1.0]
            rows.append(row)
    return rows


def batch_claims(df, scale) -> List[Dict[str, Any]]:
    """SOAP − AdamW per seed at each batch size (SOAP at f = base_frequency·batch_size/b), and the difference
    between the largest and the smallest batch's."""
    def at(b):
        g = df[df["batch_size"] == b]
        f = max(1, round(scale.base_frequency * scale.batch_size / b))
        return stats.paired_differences(_by_seed(g, "SOAP", f), _by_seed(g, "AdamW"))

    rows, per_batch = [], {}
    for b in scale.batch_sizes:
        d = at(b)
        if d:
            per_batch[b] = d
            rows.append(_row(f"SOAP beats AdamW at batch {b} (SOAP − AdamW < 0)", d, "less", baseline=f"batch {b}"))
    if len(per_batch) >= 2:
        lo, hi = min(per_batch), max(per_batch)
        d = stats.paired_differences(per_batch[hi], per_batch[lo])
        if d:
            rows.append(_row(f"SOAP's advantage grows with batch size (d({hi}) − d({lo}) < 0, d = SOAP − AdamW)", d,
                             "less", baseline=f"batch {hi} vs {lo}"))
    return rows


def claims(df, scale) -> List[Dict[str, Any]]:
    """Every claim of this module on the frame of :func:`frame` (``scale.base_frequency``: the variants' and the
    efficiency protocol's f; all but the batch claims at the reference batch ``scale.batch_size``)."""
    ref = df[df["batch_size"] == scale.batch_size]
    return (qr_vs_eigh(ref) + variants(ref, scale.base_frequency) + efficiency_claims(ref, scale.base_frequency)
            + batch_claims(df, scale))


def markdown(rows: List[Dict[str, Any]]) -> str:
    """Rows of :func:`claims` or :func:`lr_check` as a Markdown table (every seed's value shown)."""
    out = ["| claim | f / baseline | mean | 95% CI | per seed | n | verdict |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        where = r.get("baseline") or f"f = {r.get('f')}"
        ci = f"[{r['low']:+.4f}, {r['high']:+.4f}]" if r["n"] > 1 else "—"
        seeds = ", ".join(f"{v:+.4f}" for v in r["values"])
        out.append(f"| {r['claim']} | {where} | {r['mean']:+.4f} | {ci} | {seeds} | {r['n']} | {r['verdict']} |")
    return "\n".join(out)


def report(scale, root=None) -> str:
    """The claims and the lr check as Markdown (what ``python -m soap_lab.freq_study --report`` prints last)."""
    return markdown(claims(frame(scale, root), scale)) + "\n\n" + markdown(lr_check(scale, root))
