"""The interactive Claim 1 widget of the equivalence notebook, and its parameters checked.

:func:`equivalence_params` and :func:`gap_shape` check the notebook's parameters (papermill passes lists as text)
and raise a one-line :class:`~soap_lab.studies.params.ParameterError`; :func:`claim1_widget` puts sliders over
:func:`~soap_lab.equivalence.experiments.claim1_study`, cached by :func:`claim1_cache` so that the exponent and
staleness sliders only redraw (:func:`soap_lab.studies.equivalence.draw_claim1`). ipywidgets is imported only by
:func:`claim1_widget`.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple

from ..studies import params as P
from ..studies.params import ParameterError
from . import experiments

__all__ = ["equivalence_params", "gap_shape", "EXPONENT_GRID", "claim1_cache", "claim1_widget", "ParameterError"]


def equivalence_params(m: int, n: int, condition: float, n_batches: int, exponent: float, staleness: int,
                       max_staleness: int, gap_frequencies: Sequence[int], gap_refreshes: Sequence[str],
                       gap_problems: Sequence[str], gap_steps: int, gpt_preset: str) -> Tuple[Any, ...]:
    """Check the equivalence notebook's parameters and return them coerced (papermill passes lists as text), in
    the order given; a bad one raises a one-line ParameterError."""
    from ..train.models import PRESETS

    m, n = P.integer("m", m, 2), P.integer("n", n, 2)
    condition = P.number("condition", condition, 1.0)
    n_batches = P.integer("n_batches (L and R are averages over gradient batches)", n_batches, 2)
    exponent = P.number("exponent", exponent, 0.0, 1.0, low_open=True)
    max_staleness = P.integer("max_staleness", max_staleness, 0)
    staleness = P.integer("staleness", staleness, 0)
    if staleness > max_staleness:
        raise ParameterError(f"need 0 <= staleness <= max_staleness, got staleness={staleness}, max_staleness={max_staleness}")
    gap_frequencies = P.integers("gap_frequencies", gap_frequencies, 1, example="[10, 50]")
    gap_refreshes = P.choices("gap_refreshes", gap_refreshes, ("qr", "eigh"))
    gap_problems = P.choices("gap_problems", gap_problems, ("teaching", "gpt"))
    gap_steps = P.integer("gap_steps", gap_steps, 2)
    if gpt_preset not in PRESETS:
        raise ParameterError(f"unknown gpt_preset {gpt_preset!r}; allowed: {', '.join(PRESETS)}")
    return (m, n, condition, n_batches, exponent, staleness, max_staleness, gap_frequencies, gap_refreshes,
            gap_problems, gap_steps, gpt_preset)


def gap_shape(gap_m: Any, gap_n: Any) -> Tuple[int, int]:
    """The equivalence notebook's ``gap_m``, ``gap_n`` (the gap study's teaching layer), checked and coerced."""
    return P.integer("gap_m", gap_m, 2), P.integer("gap_n", gap_n, 2)


#: The exponent slider's values: the widget's study computes all of them at once, so moving it only redraws.
EXPONENT_GRID = tuple(round(0.1 + 0.05 * i, 2) for i in range(19))


def claim1_cache(n_batches: int = 64, max_staleness: int = 40):
    """``study(m, n, condition, exponent)``: ``experiments.claim1_study`` on :data:`EXPONENT_GRID` (plus
    ``exponent`` if it is off the grid), cached: only a new shape or conditioning recomputes it; the exponent and
    staleness sliders then only redraw."""
    @functools.lru_cache(maxsize=32)
    def cached(m: int, n: int, condition: float, extra: Optional[float]):
        exps = sorted({*EXPONENT_GRID, *((extra,) if extra is not None else ())})
        return experiments.claim1_study(m=m, n=n, condition=condition, n_batches=n_batches, exponents=exps,
                                        max_staleness=max_staleness)

    def study(m: int, n: int, condition: float, exponent: float):
        e = round(float(exponent), 3)
        return cached(int(m), int(n), float(condition), None if e in EXPONENT_GRID else e)

    study.cache_info = cached.cache_info
    return study


def claim1_widget(m: int = 16, n: int = 12, condition: float = 100.0, exponent: float = 0.25, staleness: int = 10,
                  max_staleness: int = 40, n_batches: int = 64):
    """Sliders (ipywidgets) over Claim 1 on the teaching problem: shape, conditioning, exponent, staleness.

    A new shape or conditioning recomputes ``experiments.claim1_study`` (float64, about half a second at the
    defaults); the exponent and staleness sliders only redraw ``studies.equivalence.draw_claim1`` with the chosen
    values circled (:func:`claim1_cache`). Needs a live Jupyter kernel.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt

    from ..studies.equivalence import draw_claim1

    study = claim1_cache(n_batches, max_staleness)

    def update(m, n, condition, exponent, staleness):
        d = study(m, n, condition, exponent)
        draw_claim1(d, None, highlight={"exponent": exponent, "staleness": staleness})
        plt.show()
        err = next(r["error"] for r in d["exponent"] if abs(r["exponent"] - round(exponent, 3)) < 1e-9)
        print(f"exponent {exponent:.3f}: relative difference {err:.2e};  staleness {staleness}: "
              f"{d['staleness'][staleness]['error']:.3f};  without the trace factor: {d['no_trace_error']:.3f}")

    cu = dict(continuous_update=False)
    return w.interact(
        update,
        m=w.IntSlider(value=m, min=2, max=64, description="m (rows)", **cu),
        n=w.IntSlider(value=n, min=2, max=64, description="n (cols)", **cu),
        condition=w.FloatLogSlider(value=condition, base=10, min=0, max=6, description="condition", **cu),
        exponent=w.FloatSlider(value=exponent, min=0.1, max=1.0, step=0.05, description="exponent e", **cu),
        staleness=w.IntSlider(value=staleness, min=0, max=max_staleness, description="staleness", **cu),
    )
