"""Seeds → paired differences → mean and 95% interval → verdict.

A comparison between two arms (optimizers, frequencies) is made seed by seed: runs with the same seed share the
model init and the data order, so the difference of their final losses cancels what the seed alone moves.
Over the seeds, the mean difference gets a Student-t interval (:func:`mean_interval`; a percentile bootstrap is
available, :func:`bootstrap_interval`), and a claim about the sign (or smallness) of the difference gets a verdict
from the interval alone (:func:`verdict`):

- ``"reproduced"``: the whole interval lies where the claim says;
- ``"contradicted"``: the whole interval lies where the claim says it does not;
- ``"inconclusive at this power"``: the interval straddles the boundary (more seeds would be needed), or there
  are fewer than 2 seeds.

A study states each claim as a row (:func:`claim`: the per-seed values, mean, interval, n and verdict); a family
of claims tested together (the same claim at several f) gets Holm's step-down correction (:func:`holm`), and a
trend across a covariate (width) a per-seed slope (:func:`slope`).

scipy (a dependency) gives the t quantiles. Nothing here reads records or draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

__all__ = ["Interval", "paired_differences", "mean_interval", "bootstrap_interval", "verdict", "VERDICTS",
           "format_interval", "claim", "holm", "slope"]

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive at this power"
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE)
CLAIMS = ("less", "greater", "equal")


@dataclass(frozen=True)
class Interval:
    """Mean of per-seed values with a confidence interval ``[low, high]`` (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95
    values: List[float] = field(default_factory=list)
    method: str = "t"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def paired_differences(a: Mapping[int, Optional[float]], b: Mapping[int, Optional[float]]) -> Dict[int, float]:
    """``{seed: a[seed] − b[seed]}`` over the seeds both have with finite values (sorted by seed)."""
    out: Dict[int, float] = {}
    for s in sorted(set(a) & set(b)):
        x, y = a[s], b[s]
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
            out[s] = float(x) - float(y)
    return out


def _clean(values: Sequence[float]) -> List[float]:
    vals = [float(v) for v in values]
    if any(not math.isfinite(v) for v in vals):
        raise ValueError(f"values must be finite, got {vals}")
    return vals


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of ``values`` and its two-sided Student-t interval at ``level``: mean ± t_{(1+level)/2, n−1}·s/√n."""
    from scipy import stats as st

    vals = _clean(values)
    n = len(vals)
    if n == 0:
        raise ValueError("no values: a mean needs at least one seed")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    mean = sum(vals) / n
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n, level, vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(st.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level, vals)


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = 10000,
                       seed: int = 0) -> Interval:
    """Mean of ``values`` with a percentile-bootstrap interval (``resamples`` resamples, fixed ``seed``).

    With few seeds the bootstrap interval is too narrow (it cannot see beyond the observed values); prefer
    :func:`mean_interval` below ~10 seeds.
    """
    import numpy as np

    vals = _clean(values)
    n = len(vals)
    if n == 0:
        raise ValueError("no values: a mean needs at least one seed")
    mean = sum(vals) / n
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n, level, vals, "bootstrap")
    rng = np.random.default_rng(seed)
    means = np.asarray(vals)[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(mean, float(lo), float(hi), n, level, vals, "bootstrap")


def verdict(interval: Interval, claim: str = "less", margin: float = 0.0) -> str:
    """What the interval says about a claim on the difference d.

    ``claim="less"``: d < −margin (e.g. "SOAP rises less than Shampoo": d = rise_SOAP − rise_Shampoo < 0);
    ``"greater"``: d > margin; ``"equal"``: |d| < margin (needs margin > 0). Reproduced when the whole interval
    satisfies the claim, contradicted when the whole interval violates it, otherwise (or with n < 2)
    inconclusive at this power.
    """
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}; allowed: {', '.join(CLAIMS)}")
    if claim == "equal" and margin <= 0:
        raise ValueError("claim 'equal' needs a margin > 0 (the largest difference that counts as equal)")
    lo, hi = interval.low, interval.high
    if interval.n < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    if claim == "less":
        return REPRODUCED if hi < -margin else CONTRADICTED if lo >= -margin else INCONCLUSIVE
    if claim == "greater":
        return REPRODUCED if lo > margin else CONTRADICTED if hi <= margin else INCONCLUSIVE
    if -margin < lo and hi < margin:
        return REPRODUCED
    return CONTRADICTED if (lo >= margin or hi <= -margin) else INCONCLUSIVE


def format_interval(iv: Interval, digits: int = 3) -> str:
    """``+0.012 ± 0.034 (95% CI [−0.022, +0.046], n = 3)``; a single seed says so."""
    if iv.n < 2:
        return f"{iv.mean:+.{digits}f} (n = 1, no interval)"
    return (f"{iv.mean:+.{digits}f} ± {iv.half_width:.{digits}f} ({100 * iv.level:.0f}% CI "
            f"[{iv.low:+.{digits}f}, {iv.high:+.{digits}f}], n = {iv.n})")


def claim(text: str, values: Mapping[int, float], kind: str = "less", margin: float = 0.0, level: float = 0.95,
          **keys) -> Dict[str, object]:
    """One claim as a row: ``values`` ``{seed: per-seed difference}`` summarised by :func:`mean_interval`, judged by
    :func:`verdict` on ``kind`` ("less", "greater", "equal") and ``margin``; ``keys`` (e.g. ``f=10``,
    ``baseline="AdamW"``) are kept. Keys of a row: claim, mean, low, high, n, values, seeds, kind, margin, verdict."""
    iv = mean_interval(list(values.values()), level)
    return {"claim": text, **keys, "n": iv.n, "mean": iv.mean, "low": iv.low, "high": iv.high, "values": iv.values,
            "seeds": list(values), "kind": kind, "margin": margin, "verdict": verdict(iv, kind, margin)}


def _p_value(row: Mapping[str, object]) -> float:
    """Two-sided t-test p-value of the row's mean against its boundary (−margin for "less", +margin for "greater")."""
    from scipy import stats as st

    vals = [float(v) for v in row["values"]]  # type: ignore[union-attr]
    n = len(vals)
    if n < 2:
        return 1.0
    bound = -float(row["margin"]) if row["kind"] == "less" else float(row["margin"])  # type: ignore[arg-type]
    mean = sum(vals) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    if sd == 0:
        return 0.0 if mean != bound else 1.0
    return float(2 * st.t.sf(abs(mean - bound) / (sd / math.sqrt(n)), n - 1))


def holm(rows: Sequence[Mapping[str, object]], level: float = 0.95) -> List[Dict[str, object]]:
    """Holm's step-down correction over a family of "less"/"greater" claims: each row gets ``p`` (two-sided t-test
    against its boundary), ``holm_alpha`` (the level its p is compared with) and ``holm_verdict``: reproduced or
    contradicted (by the side of the mean) where Holm rejects the boundary, else inconclusive at this power.

    Without correction a row's verdict is the same test at α = 1 − ``level`` (its interval excludes the boundary
    exactly when p < α); Holm compares the k-th smallest of m p-values with α / (m − k + 1) and stops at the first
    that fails, so the family's chance of any false verdict stays ≤ α."""
    if any(r["kind"] not in ("less", "greater") for r in rows):
        raise ValueError("holm: only 'less' and 'greater' claims form a family here")
    alpha = 1 - level
    out = [dict(r) for r in rows]
    for r in out:
        r["p"] = _p_value(r)
    order = sorted(range(len(out)), key=lambda i: out[i]["p"])
    rejecting = True
    for k, i in enumerate(order):
        r = out[i]
        r["holm_alpha"] = alpha / (len(out) - k)
        rejecting = rejecting and r["n"] >= 2 and r["p"] < r["holm_alpha"]  # type: ignore[operator]
        if not rejecting:
            r["holm_verdict"] = INCONCLUSIVE
            continue
        bound = -float(r["margin"]) if r["kind"] == "less" else float(r["margin"])  # type: ignore[arg-type]
        on_side = r["mean"] < bound if r["kind"] == "less" else r["mean"] > bound  # type: ignore[operator]
        r["holm_verdict"] = REPRODUCED if on_side else CONTRADICTED
    return out


def slope(x: Sequence[float], per_seed: Mapping[int, Sequence[float]], level: float = 0.95) -> Interval:
    """The trend of a per-seed quantity across a covariate: each seed's least-squares slope of its values on ``x``
    (seeds missing a value are left out), then :func:`mean_interval` over the seeds' slopes."""
    xs = [float(v) for v in x]
    if len(xs) < 2:
        raise ValueError("slope: need at least two covariate values")
    mx = sum(xs) / len(xs)
    sxx = sum((v - mx) ** 2 for v in xs)
    slopes = []
    for s in sorted(per_seed):
        ys = [float(v) for v in per_seed[s]]
        if len(ys) != len(xs) or not all(math.isfinite(v) for v in ys):
            continue
        my = sum(ys) / len(ys)
        slopes.append(sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sxx)
    return mean_interval(slopes, level)
