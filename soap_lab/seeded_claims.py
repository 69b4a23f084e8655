"""The paper's other claims with seeds (scale ``cpu_freq``): QR vs eigh, the variants, the efficiency protocol.

Each claim is a difference computed seed by seed between two arms that share the seed's init and data order
(:mod:`soap_lab.stats`), summarised by its mean and 95% t-interval, and judged by the interval alone:

- Fig. 7 right, "QR refreshes are as good as eigh": SOAP (QR) − SOAP (eigh) at each f, |d| < 0.02;
- Fig. 6, "factorized SOAP costs almost nothing": SOAP factorized − SOAP, |d| < 0.02; "one-sided SOAP ≈ Shampoo":
  SOAP one-sided − Shampoo, |d| < 0.02; "factorized + one-sided beats AdamW": that − AdamW < 0;
- Fig. 4, "SOAP's advantage grows with batch size": d(b) = SOAP − AdamW at each batch b of ``scale.batch_sizes``
  (SOAP's f scaled with 1/b as in the paper), d(b) < 0 at each, and d(largest) − d(smallest) < 0; in the paper's
  form, steps saved against AdamW at each b by the efficiency protocol below, and their growth with b; Fig. 4
  right, SOAP against Shampoo in steps at the smallest batch;
- Figs. 1-3, the efficiency protocol per seed: SOAP's final losses at the budget fractions fitted with
  a + b·N^-β (:mod:`soap_lab.efficiency`) and solved for the same seed's AdamW (Shampoo) final loss; steps saved
  1 − N*/N. "≥ 40% fewer steps than AdamW": saved > 0.40; "fewer steps than Shampoo (≈ 20%)": saved > 0. A seed
  whose fit never reaches the target counts as no saving at all (saved = −1, stated in the row);
- Figs. 1-3, wall-clock: those steps saved times the time-per-step ratio of the side-by-side timing study
  (``soap_lab.overhead``), with a Bonferroni interval over seeds and timing rounds; "≥ 35% less than AdamW";
- Fig. 7 left, from the same timing study: the overhead's c + b/f fit per round, b > 0 and c > 0.

Input: the records of ``ablations.seeded_others`` (trained by ``python -m soap_lab.freq_study --arms others``);
nothing trains. :func:`lr_check` checks the seed-0 learning-rate tuning on every seed.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Mapping, Optional

from . import ablations, analysis, efficiency, stats

__all__ = ["CLOSE_MARGIN", "frame", "qr_vs_eigh", "variants", "savings", "efficiency_claims", "batch_claims",
           "time_ratios", "wallclock_claims", "overhead_claims", "claims", "timing", "lr_check", "markdown", "report"]

#: "As good as" / "costs almost nothing": |difference of final losses| below this (nats), as in freq_analysis.
CLOSE_MARGIN = 0.02
#: The efficiency claim against AdamW: at least this fraction of the steps saved.
ADAMW_SAVING = 0.40


def frame(scale, root=None):
    """One row per stored run of the frequency, variants, comparison and batch-size studies at ``scale`` (their
    tuned lrs): label, f, seed, batch size, budget_fraction, steps, final loss."""
    import pandas as pd

    studies = ("frequency", "variants", "comparison", "batch_size", "batch_efficiency")
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
            "values": iv.values, "seeds": list(values), "kind": kind, "margin": margin,
            "verdict": stats.verdict(iv, kind, margin)}


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


def savings(df, f: int, base: str) -> Dict[int, float]:
    """Steps saved by SOAP at ``f`` against ``base`` ("AdamW", or "Shampoo" at the same f), per seed: SOAP's final
    losses over its budget fractions fitted and solved for the same seed's ``base`` full-budget loss (−1 where the
    fit never reaches it). Seeds with fewer than 3 SOAP budgets are left out. ``df``: one batch size."""
    full = df[df["budget_fraction"] == 1.0]
    steps = int(full["steps_total"].max()) if len(full) else 0
    saved: Dict[int, float] = {}
    for seed, target in _by_seed(df, base, None if base == "AdamW" else f).items():
        soap = df[(df["label"] == "SOAP") & (df["seed"] == seed) & (df["f"] == f)]
        if target is not None and soap["budget_fraction"].nunique() >= 3:
            try:
                saved[seed] = _saved(df, f, seed, target, steps)
            except (ValueError, RuntimeError):
                continue
    return saved


def _saving_row(claim: str, saved: Dict[int, float], threshold: float, **keys) -> Dict[str, Any]:
    row = _row(claim, saved, "greater", threshold, **keys)
    row["unreached"] = [s for s, v in saved.items() if v == -1.0]
    return row


def efficiency_claims(df, f: int) -> List[Dict[str, Any]]:
    """Steps saved per seed against AdamW and Shampoo (the same seed's full-budget final loss)."""
    rows = []
    for base, claim, threshold in (("AdamW", "SOAP needs ≥ 40% fewer steps than AdamW (saved > 0.40)", ADAMW_SAVING),
                                   ("Shampoo", "SOAP needs fewer steps than Shampoo (saved > 0)", 0.0)):
        saved = savings(df, f, base)
        if saved:
            rows.append(_saving_row(claim, saved, threshold, baseline=base))
    return rows


def batch_claims(df, scale) -> List[Dict[str, Any]]:
    """Fig. 4 per seed, SOAP at f = ``ablations.batch_frequency`` at each batch b of ``scale.batch_sizes``.

    Final losses at equal steps: d(b) = SOAP − AdamW < 0 at each b, and d(largest) − d(smallest) < 0. The paper's
    form, where the budget fractions are stored (``ablations.batch_efficiency``): steps saved against AdamW at each b
    (> 0), their growth saved(largest) − saved(smallest) > 0, and at the smallest batch against Shampoo (> 0)."""
    def at(b):
        g = df[df["batch_size"] == b]
        return stats.paired_differences(_by_seed(g, "SOAP", ablations.batch_frequency(scale, b)), _by_seed(g, "AdamW"))

    def growth(per: Dict[int, Dict[int, float]], claim: str, kind: str, prefix: str) -> List[Dict[str, Any]]:
        """The largest batch's value minus the smallest's, paired by seed (nothing with fewer than 2 batches)."""
        if len(per) < 2:
            return []
        lo, hi = min(per), max(per)
        d = stats.paired_differences(per[hi], per[lo])
        return [_row(claim.format(hi=hi, lo=lo), d, kind, baseline=f"{prefix}batch {hi} vs {lo}")] if d else []

    rows: List[Dict[str, Any]] = []
    per_batch = {b: d for b in scale.batch_sizes if (d := at(b))}
    rows += [_row(f"SOAP beats AdamW at batch {b} (SOAP − AdamW < 0)", d, "less", baseline=f"batch {b}")
             for b, d in per_batch.items()]
    rows += growth(per_batch, "SOAP's advantage grows with batch size (d({hi}) − d({lo}) < 0, d = SOAP − AdamW)",
                   "less", "")
    saved = {b: s for b in scale.batch_sizes
             if (s := savings(df[df["batch_size"] == b], ablations.batch_frequency(scale, b), "AdamW"))}
    rows += [_saving_row(f"SOAP needs fewer steps than AdamW at batch {b} (saved > 0)", s, 0.0,
                         baseline=f"steps, batch {b}") for b, s in saved.items()]
    rows += growth(saved, "SOAP's step saving grows with batch size (saved({hi}) − saved({lo}) > 0)", "greater",
                   "steps, ")
    if scale.batch_sizes:
        b = min(scale.batch_sizes)
        s = savings(df[df["batch_size"] == b], ablations.batch_frequency(scale, b), "Shampoo")
        if s:
            rows.append(_saving_row(f"SOAP needs fewer steps than Shampoo at batch {b} (saved > 0)", s, 0.0,
                                    baseline=f"steps vs Shampoo, batch {b}"))
    return rows


def time_ratios(timing: Mapping[str, Any], f: int, base: str = "AdamW") -> List[float]:
    """SOAP's training-step time over ``base``'s ("AdamW", or "Shampoo" at the same f) in each round of a stored
    timing study (``soap_lab.overhead``, run with ``shampoo=True`` for Shampoo): (forward+backward + SOAP step) /
    (forward+backward + base step), every time from the same round. Empty where the study lacks the arms."""
    soap = (timing.get("soap_times") or {}).get(str(f))
    other = timing.get("adamw_times") if base == "AdamW" else (timing.get("shampoo_times") or {}).get(str(f))
    fb = timing.get("forward_backward_times")
    if not (soap and other and fb) or not len(soap) == len(other) == len(fb):
        return []
    return [(t_fb + t_s) / (t_fb + t_o) for t_fb, t_s, t_o in zip(fb, soap, other)]


def wallclock_claims(df, f: int, timing: Optional[Mapping[str, Any]], level: float = 0.95) -> List[Dict[str, Any]]:
    """Wall-clock saved = 1 − (1 − steps saved)·(time-per-step ratio), against AdamW (paper: ≥ 35%) and Shampoo.

    Steps saved come per seed from :func:`savings`; the ratio from the timing study's rounds
    (:func:`time_ratios`), which were not paired with the seeds. The interval is Bonferroni's: a t-interval at
    level 1 − (1 − ``level``)/2 over the seeds and one over the rounds; the saving is monotone in both, so their
    corners hold it with probability ≥ ``level``. Per-seed values use the mean ratio."""
    if not timing:
        return []
    each = 1 - (1 - level) / 2
    rows = []
    for base, claim, threshold in (("AdamW", "SOAP needs ≥ 35% less wall-clock than AdamW (saved > 0.35)", 0.35),
                                   ("Shampoo", "SOAP needs less wall-clock than Shampoo (saved > 0)", 0.0)):
        saved, ratios = savings(df, f, base), time_ratios(timing, f, base)
        if len(saved) < 2 or len(ratios) < 2:
            continue
        s_iv, r_iv = stats.mean_interval(list(saved.values()), each), stats.mean_interval(ratios, each)
        values = {seed: 1 - (1 - v) * r_iv.mean for seed, v in saved.items()}
        iv = stats.Interval(1 - (1 - s_iv.mean) * r_iv.mean, 1 - (1 - s_iv.low) * r_iv.high,
                            1 - (1 - s_iv.high) * r_iv.low, s_iv.n, level, list(values.values()), "bonferroni")
        rows.append({"claim": claim, "baseline": f"wall-clock, {base}", "n": iv.n, "mean": iv.mean, "low": iv.low,
                     "high": iv.high, "values": iv.values, "seeds": list(values),
                     "kind": "greater", "margin": threshold,
                     "verdict": stats.verdict(iv, "greater", threshold), "time_ratio": r_iv.mean,
                     "time_ratio_low": r_iv.low, "time_ratio_high": r_iv.high, "rounds": r_iv.n,
                     "unreached": [s for s, v in saved.items() if v == -1.0]})
    return rows


def overhead_claims(timing: Optional[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Fig. 7 left per round of the timing study: SOAP's extra time per training step over AdamW's, in % of an
    AdamW training step, fitted with c + b/f in each round (``overhead.fit_floor``); "falls with f": b > 0,
    "toward a nonzero floor": c > 0. Student t over the rounds (repeated measurements, not seeds)."""
    from . import overhead

    per = overhead.per_round(dict(timing)) if timing else None
    fits = dict(enumerate(overhead.round_fits(per["pct"]))) if per else {}
    if not fits:
        return []
    rows = []
    for key, claim in (("per_refresh_pct", "SOAP's overhead falls with f (b > 0 in c + b/f, % of a step)"),
                       ("floor_pct", "SOAP's overhead has a nonzero floor (c > 0 in c + b/f, % of a step)")):
        row = _row(claim, {r: fit[key] for r, fit in fits.items()}, "greater", 0.0, baseline="timing rounds")
        rows.append({**row, "seeds": [], "rounds": row["n"]})
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


def timing(scale) -> Optional[Dict[str, Any]]:
    """The stored timing study of ``scale`` (``data/overhead/overhead_<scale>.json``), or None."""
    from . import overhead
    from .records import store

    path = overhead.default_path(scale.name)
    return store.read_record(path) if path.is_file() else None


def report(scale, root=None) -> str:
    """The claims (with the wall-clock claims where the scale's timing study is stored) and the lr check as
    Markdown (what ``python -m soap_lab.freq_study --report`` prints last)."""
    df = frame(scale, root)
    ref = df[df["batch_size"] == scale.batch_size]
    t = timing(scale)
    rows = claims(df, scale) + wallclock_claims(ref, scale.base_frequency, t) + overhead_claims(t)
    return markdown(rows) + "\n\n" + markdown(lr_check(scale, root))
