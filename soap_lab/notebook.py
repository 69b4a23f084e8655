"""What the notebooks call besides the tables and figures: their parameters checked and turned into a ``Scale``,
the study trained (or checked to be stored), and the interactive Claim 1 widget.

:func:`notebook_scale` validates a notebook's parameters cell (papermill passes lists and mappings as text) and
raises a one-line :class:`~soap_lab.params.ParameterError`; :func:`equivalence_params` does the same for the
equivalence notebook. :func:`run_study` trains the missing runs of a study, or checks they exist, and returns
its ``analysis.StudyData``. :func:`claim1_widget` puts sliders over ``experiments.claim1_study``.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from . import ablations, analysis
from .equivalence import experiments
from .records import store, sweep
from . import params as P
from .params import ParameterError

__all__ = ["notebook_scale", "check_device", "run_study", "equivalence_params", "EXPONENT_GRID", "claim1_cache",
           "claim1_widget"]


def _scale_field_checks() -> Dict[str, Callable[[str, Any], Any]]:
    """How each ``Scale`` field given in ``scale_overrides`` is checked (and coerced from papermill's text)."""
    from .train.data import TOKENIZERS
    from .train.models import PRESETS

    def one_of(allowed):
        def check(name, v):
            if v not in allowed:
                raise ParameterError(f"{name}: unknown {v!r}; allowed: {', '.join(allowed)}")
            return v
        return check

    pos = lambda n, v: P.integer(n, v, 1)  # noqa: E731
    pos_list = lambda n, v: P.integers(n, v, 1)  # noqa: E731
    seeds = lambda n, v: P.integers(n, v, 0, example="[0, 1, 2]")  # noqa: E731
    return {
        "preset": one_of(tuple(PRESETS)), "tokenizer": one_of(TOKENIZERS), "device": lambda n, v: _device(v),
        "batch_size": pos, "steps": pos, "eval_every": pos, "eval_batches": pos, "base_frequency": pos,
        "frequencies": pos_list, "batch_sizes": pos_list, "batch_multipliers": pos_list, "arm_frequencies": pos_list,
        "long_frequencies": pos_list, "seeds": seeds, "long_seeds": seeds,
        "tune_seeds": lambda n, v: None if v is None else seeds(n, v),
        "long_steps": lambda n, v: None if v is None else pos(n, v),
        "budget_fractions": lambda n, v: P.numbers(n, v, 0.0, 1.0, low_open=True, example="[0.5, 1.0]"),
        "lrs": lambda n, v: _lr_grids(n, v, {}),
    }


def _device(device: Any) -> str:
    if not isinstance(device, str) or not (device in ("cpu", "cuda") or device.startswith("cuda:")):
        raise ParameterError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N (or None for the scale's)")
    return device


def _lr_grids(name: str, value: Any, base: Mapping[str, Any]) -> Dict[str, Tuple[float, ...]]:
    """``base`` with the grids of the optimizers named in ``value`` replaced (only adamw, soap, shampoo are tuned)."""
    from .optim import OPTIMIZERS

    grids = dict(base)
    for opt, grid in P.mapping(name, value).items():
        if opt not in OPTIMIZERS:
            raise ParameterError(f"unknown optimizer {opt!r} in {name}; allowed: {', '.join(OPTIMIZERS)}")
        if opt not in ("adamw", "soap", "shampoo"):
            raise ParameterError(f"{name}[{opt!r}]: only adamw, soap and shampoo are tuned (SOAP's variants use SOAP's lr)")
        grids[opt] = P.numbers(f"{name}[{opt!r}]", grid, 0.0, None, low_open=True, example="[3e-3, 1e-2]")
    return grids


def notebook_scale(scale: str = "cpu", device: Optional[str] = None, steps: Optional[int] = None,
                   seeds: Optional[Sequence[int]] = None, lrs: Optional[Mapping[str, Sequence[float]]] = None,
                   frequencies: Optional[Sequence[int]] = None, batch_sizes: Optional[Sequence[int]] = None,
                   overrides: Optional[Mapping[str, Any]] = None, torch_threads: Optional[int] = None):
    """The ``Scale`` a notebook runs at, from its parameters; a bad parameter raises a one-line ParameterError.

    ``lrs`` replaces the learning-rate grid of the optimizers it names (others keep the scale's grid);
    ``overrides`` sets any other ``Scale`` field (e.g. ``{"preset": "tiny", "eval_every": 2}``).
    """
    if scale not in ablations.SCALES:
        raise ParameterError(f"unknown scale {scale!r}; allowed: {', '.join(ablations.SCALES)}")
    checks = _scale_field_checks()
    over: Dict[str, Any] = {}
    for k, v in P.mapping("scale_overrides", overrides, '{"preset": "tiny"}').items():
        if k not in checks:
            raise ParameterError(f"unknown scale field {k!r} in scale_overrides; allowed: {', '.join(sorted(checks))}")
        over[k] = checks[k](f"scale_overrides[{k!r}]", P.coerce(v))
    if device is not None:
        over["device"] = _device(device)
    if steps is not None:
        over["steps"] = P.integer("steps", steps, 1)
        if "eval_every" not in over:
            over["eval_every"] = max(1, min(ablations.SCALES[scale].eval_every, over["steps"] // 4 or 1))
    if seeds is not None:
        over["seeds"] = P.integers("seeds", seeds, 0, example="[0, 1, 2]")
    if frequencies is not None:
        over["frequencies"] = P.integers("frequencies", frequencies, 1, example="[1, 10, 100]")
    if batch_sizes is not None:
        over["batch_sizes"] = P.integers("batch_sizes", batch_sizes, 1, example="[8, 32, 128]")
    if lrs is not None:
        over["lrs"] = _lr_grids("lrs", lrs, over.get("lrs", ablations.SCALES[scale].lrs))
    if torch_threads:
        import torch

        torch.set_num_threads(P.integer("torch_threads", torch_threads, 1))
    try:
        return ablations.get_scale(scale, **over)
    except (TypeError, ValueError) as e:
        raise ParameterError(str(e)) from None


def check_device(sc) -> None:
    """A one-line ParameterError when the scale trains on CUDA and this machine has none."""
    if str(sc.device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ParameterError(f"scale {sc.name!r} trains on {sc.device!r} but CUDA is not available here; "
                                 "set device = 'cpu', or train=False to plot stored results")


def run_study(study: str, sc, results_root=None, shard: Optional[str] = None, train: bool = True,
              wait_s: float = 6 * 3600, poll_s: float = 30, log: Optional[Callable[[str], None]] = print):
    """Train the missing runs of ``study`` at scale ``sc`` (``train=True``) or check they are stored; return the
    study's ``analysis.StudyData``.

    With ``shard="i/N"`` only this shard's runs are trained; when the study needs the learning-rate sweep and
    another shard has not finished its part yet, this waits (polling every ``poll_s``) up to ``wait_s``.
    Without training and without records: ``ablations.MissingResults`` naming ``make ablations``.
    """
    if study not in ablations.STUDIES:
        raise ParameterError(f"unknown study {study!r}; allowed: {', '.join(ablations.STUDIES)}")
    root = Path(results_root) if results_root is not None else None
    shard_t = None
    if shard:
        try:
            shard_t = sweep.parse_shard(shard)
        except ValueError as e:
            raise ParameterError(str(e)) from None
    if train:
        check_device(sc)
        start = time.time()
        last = None
        while True:
            try:
                ablations.run(study, sc, root, shard=shard_t, log=log)
                break
            except ablations.MissingResults as e:
                if shard_t is None:
                    raise
                waited = time.time() - start
                if waited > wait_s:
                    raise ablations.MissingResults(
                        f"gave up after {waited / 60:.0f} min waiting for the other shards of {shard!r}: {e}") from None
                if log and str(e) != last:  # say it once per change, not every poll
                    until = time.strftime("%H:%M", time.localtime(start + wait_s))
                    log(f"shard {shard} waits for the other shards (checking every {poll_s:.0f} s, "
                        f"giving up at {until}): {e}")
                last = str(e)
                time.sleep(poll_s)
    try:
        sd = analysis.study_data(study, sc, root)
    except ablations.MissingResults as e:
        raise ablations.MissingResults(f"{e} [results root: {store.runs_root(root)}]") from None
    if not len(sd.runs):
        raise ablations.MissingResults(
            f"no results for study {study!r} at scale {sc.name!r} under {store.runs_root(root) / sc.experiment}: "
            f"run `make ablations SCALE={sc.name}` (or set train=True)")
    if sd.missing and log:
        log(f"{study}: {len(sd.missing)} of {len(sd.expected)} runs not stored yet"
            + (" (other shards)" if shard_t else "") + "; figures show the stored ones")
    return sd


def equivalence_params(m: int, n: int, condition: float, n_batches: int, exponent: float, staleness: int,
                       max_staleness: int, gap_frequencies: Sequence[int], gap_refreshes: Sequence[str],
                       gap_problems: Sequence[str], gap_steps: int, gpt_preset: str) -> Tuple[Any, ...]:
    """Check the equivalence notebook's parameters and return them coerced (papermill passes lists as text), in
    the order given; a bad one raises a one-line ParameterError."""
    from .train.models import PRESETS

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
    defaults); the exponent and staleness sliders only redraw ``plot_equivalence.plot_claim1`` with the chosen values
    circled (:func:`claim1_cache`). Needs a live Jupyter kernel.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt

    from . import plot_equivalence

    study = claim1_cache(n_batches, max_staleness)

    def update(m, n, condition, exponent, staleness):
        d = study(m, n, condition, exponent)
        plot_equivalence.plot_claim1(d, None, highlight={"exponent": exponent, "staleness": staleness})
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
