"""The paper's learning-rate schedule, as a pure function of the step.

Linear warmup from ``init_ratio * peak_lr`` to ``peak_lr`` over ``warmup_steps`` steps, then cosine decay
to ``final_ratio * peak_lr`` at the last step (``total_steps - 1``). Vyas et al. use 0.1 for both ratios.
"""
from __future__ import annotations

import math

__all__ = ["lr_at", "warmup_steps_for"]


def lr_at(
    step: int,
    total_steps: int,
    peak_lr: float,
    warmup_steps: int,
    init_ratio: float = 0.1,
    final_ratio: float = 0.1,
) -> float:
    """Learning rate used by optimizer step ``step`` (0-based) of a run of ``total_steps`` steps.

    - ``step < warmup_steps``: ``peak_lr * (init_ratio + (1 - init_ratio) * step / warmup_steps)``, so step 0
      uses ``init_ratio * peak_lr`` and the schedule reaches ``peak_lr`` at ``step == warmup_steps``.
    - afterwards: cosine from ``peak_lr`` (at ``warmup_steps``) to ``final_ratio * peak_lr`` (at the last step,
      ``total_steps - 1``). Steps past the end stay at ``final_ratio * peak_lr``.
    A run with no room for decay (``warmup_steps >= total_steps - 1``) stays at ``peak_lr`` after warmup.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < warmup_steps:
        return peak_lr * (init_ratio + (1.0 - init_ratio) * step / warmup_steps)
    decay_steps = total_steps - 1 - warmup_steps
    if decay_steps <= 0:
        return peak_lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    low = final_ratio * peak_lr
    return low + (peak_lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_for(total_steps: int, warmup_fraction: float) -> int:
    """Warmup length for a run of ``total_steps``: ``round(warmup_fraction * total_steps)`` (halves round up)."""
    if not 0.0 <= warmup_fraction <= 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1], got {warmup_fraction}")
    return int(math.floor(warmup_fraction * total_steps + 0.5))
