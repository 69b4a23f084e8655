"""Step times from a whole run pool, with their spread, and a wall-clock saving that says when it is undecided.

One run's median step time on a shared CPU is not a measurement of the optimizer: runs of the same optimizer at
the same batch size moved between 0.29 and 1.32 s per step in the CPU pool. :func:`pool_step_times` takes the
median step time of *every* run of an optimizer (label) at a batch size in the pool and reports their median and
range; :func:`wallclock_saving` turns a step fraction and two such spreads into a saving with the range it could
take, and decides only when that whole range has one sign.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

__all__ = ["StepTimes", "WallclockSaving", "pool_step_times", "wallclock_saving"]


@dataclass(frozen=True)
class StepTimes:
    """Per-run median step times of one optimizer at one batch size: their median, min, max and count."""

    median: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class WallclockSaving:
    """1 − fraction·t_SOAP/t_base at the medians (``mid``) and at the extremes of the ranges (``low``, ``high``).

    ``decided`` when low and high have the same sign (SOAP surely faster, or surely slower, in wall-clock)."""

    mid: float
    low: float
    high: float
    decided: bool


def pool_step_times(sd, label: str, batch_size: int, frequency: Optional[int] = None) -> Optional[StepTimes]:
    """Step times of every run labelled ``label`` at ``batch_size`` (and, for optimizers that take one, at
    ``frequency``) in the pool of ``sd`` (an ``analysis.StudyData``), not only the study's runs; None when none."""
    from . import ablations
    from .records import store

    frame = store.load(sd.scale.experiment, sd.root)
    curves = store.curves(sd.scale.experiment, sd.root, which="train", with_config=False)
    if not len(frame) or not len(curves):
        return None
    refresh = frame["hparams.refresh"] if "hparams.refresh" in frame else [None] * len(frame)
    freqs = frame["precondition_frequency"] if "precondition_frequency" in frame else [None] * len(frame)
    ids = [rid for rid, o, r, b, f in zip(frame["run_id"], frame["optimizer"], refresh, frame["batch_size"], freqs)
           if int(b) == int(batch_size) and (frequency is None or f is None or f != f or int(f) == int(frequency))
           and ablations.label({"optimizer": o, "hparams": {"refresh": r} if isinstance(r, str) else {}}) == label]
    med = curves[curves["run_id"].isin(ids)].groupby("run_id")["step_time"].median()
    med = med[med.map(lambda x: math.isfinite(float(x)))]
    if not len(med):
        return None
    return StepTimes(float(med.median()), float(med.min()), float(med.max()), int(len(med)))


def wallclock_saving(step_fraction: float, soap: StepTimes, base: StepTimes) -> WallclockSaving:
    """The wall-clock saving of SOAP needing ``step_fraction`` of the baseline's steps, given both step-time spreads."""
    mid = 1.0 - step_fraction * soap.median / base.median
    low = 1.0 - step_fraction * soap.high / base.low
    high = 1.0 - step_fraction * soap.low / base.high
    return WallclockSaving(mid, low, high, (low > 0) == (high > 0) and low != 0)


def as_dict(s: Optional[Any]) -> Optional[Dict[str, Any]]:
    """A dataclass of this module as a plain dict (None stays None)."""
    import dataclasses

    return dataclasses.asdict(s) if s is not None else None
