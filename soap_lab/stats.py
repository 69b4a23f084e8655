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

scipy (a dependency) gives the t quantiles. Nothing here reads records or draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

__all__ = ["Interval", "paired_differences", "mean_interval", "bootstrap_interval", "verdict", "VERDICTS",
           "format_interval"]

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
