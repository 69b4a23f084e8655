"""The paper's efficiency protocol (§3, Fig. 2): how many fewer steps (and how much less wall-clock) SOAP needs.

A cosine run cannot be cut short, so the optimizer is run at several fractions of the step budget, each with
its own full schedule; the final losses are fitted with L(N) = a + b·N^(−β), and the fit is solved for the
number of steps N* at which it reaches a baseline's final loss (AdamW's or Shampoo's at the full budget).
Steps saved: 1 − N*/N_full. Wall-clock saved: 1 − N*·t_step / (N_full·t_step_baseline).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class PowerLawFit:
    """L(N) = a + b·N^(−β) fitted to (steps, final loss) points."""

    a: float
    b: float
    beta: float

    def __call__(self, steps) -> np.ndarray:
        return self.a + self.b * np.asarray(steps, dtype=float) ** (-self.beta)

    def steps_to_reach(self, loss: float) -> float:
        """N with L(N) = loss; ``inf`` when ``loss`` is at or below the fitted asymptote ``a``."""
        if loss <= self.a:
            return float("inf")
        return float((self.b / (loss - self.a)) ** (1.0 / self.beta))


def fit_power_law(steps: Sequence[float], losses: Sequence[float]) -> PowerLawFit:
    """Least-squares fit of a + b·N^(−β) (a ≥ 0, b ≥ 0, 0 < β ≤ 5). Needs ≥ 3 points with distinct N."""
    from scipy.optimize import curve_fit

    N = np.asarray(steps, dtype=float)
    L = np.asarray(losses, dtype=float)
    if N.shape != L.shape or len(np.unique(N)) < 3:
        raise ValueError(f"need at least 3 (steps, loss) points with distinct steps, got {len(np.unique(N))}")
    if not np.all(np.isfinite(L)) or np.any(N <= 0):
        raise ValueError("steps must be positive and losses finite")
    scale = float(N.max())

    def model(n, a, b, beta):
        return a + b * (n / scale) ** (-beta)

    span = float(L.max() - L.min()) or 1.0
    p0 = (max(float(L.min()) - span, 0.0), span, 1.0)
    (a, b, beta), _ = curve_fit(model, N, L, p0=p0, bounds=([0.0, 0.0, 1e-3], [np.inf, np.inf, 5.0]), maxfev=20000)
    return PowerLawFit(a=float(a), b=float(b) * scale**beta, beta=float(beta))


@dataclass(frozen=True)
class Savings:
    """Result of :func:`savings` (fractions in [0, 1) when SOAP is better; negative when it is worse)."""

    steps_needed: float       # N* (inf if the fit never reaches the target)
    full_steps: float         # the baseline's budget N_full
    step_fraction: float      # N*/N_full
    steps_saved: float        # 1 − N*/N_full
    wallclock_saved: Optional[float]  # 1 − N*·t / (N_full·t_base), when step times are given
    target_loss: float
    fit: PowerLawFit


def savings(steps: Sequence[float], losses: Sequence[float], target_loss: float, full_steps: float,
            step_time: Optional[float] = None, baseline_step_time: Optional[float] = None) -> Savings:
    """Fit SOAP's (steps, final loss) points and solve for the baseline's final loss ``target_loss``."""
    fit = fit_power_law(steps, losses)
    n_star = fit.steps_to_reach(target_loss)
    frac = n_star / float(full_steps)
    wall = None
    if step_time is not None and baseline_step_time is not None:
        wall = 1.0 - (n_star * step_time) / (float(full_steps) * baseline_step_time)
    return Savings(n_star, float(full_steps), frac, 1.0 - frac, wall, float(target_loss), fit)
