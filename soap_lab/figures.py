"""Entry points of ``make figures`` and ``make ablations``, and the helpers the notebooks call.

``main_figures(argv)`` redraws every figure into ``figures/`` from stored results only (run records under
``data/runs/paper_<scale>/``, ``data/equivalence/*.json``, ``data/overhead/overhead_<scale>.json``): no
training, no notebook, a few seconds. A scale without results is named on each figure; a figure with no
results at all is skipped with a one-line message naming the command that produces them.

``main_ablations(argv)`` reruns the experiments: each study is a notebook (``notebooks/``) executed by
papermill with the scale, device and shard as parameters; executed copies go to ``notebooks/executed/``
(git-ignored). Finished runs are skipped by the sweep engine, so an interrupted call resumes. Without
papermill (the GPU machine), or with ``--no-papermill``, the same studies run through ``soap_lab`` directly
(``ablations.run``, ``claim1``, ``overhead``) and the figures are drawn later by ``make figures``.

Notebook helpers: :func:`notebook_scale` (validates the parameters cell, one-line :class:`ParameterError`),
:func:`run_study` (train the missing runs, or check they exist) and :func:`draw` (one figure).

Nothing heavy is imported at module import: matplotlib/seaborn only when drawing, papermill only when
executing notebooks, torch only when training.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import ablations, analysis, claim1, results, stored, sweep
from . import params as P
from .params import ParameterError
from .provenance import provenance

__all__ = [
    "ParameterError",
    "FIGURES",
    "STUDY_NOTEBOOKS",
    "FIGURES_DIR",
    "NOTEBOOKS_DIR",
    "notebook_scale",
    "run_study",
    "draw",
    "main_figures",
    "main_ablations",
]

FIGURES_DIR = results.REPO_ROOT / "figures"
NOTEBOOKS_DIR = results.REPO_ROOT / "notebooks"
EXECUTED_DIR = NOTEBOOKS_DIR / "executed"

#: figure name -> the study whose runs it draws (None: a stored data set, not run records)
FIGURES: Dict[str, Optional[str]] = {
    "lr_sweep": "lr_sweep",
    "frequency": "frequency",
    "comparison": "comparison",
    "efficiency": "comparison",
    "batch_size": "batch_size",
    "variants": "variants",
    "overhead": None,
    "equivalence_claim1": None,
    "equivalence_gap": None,
    "frequency_seeded": None,  # the seeded frequency study (soap_lab.plot_seeds), scale cpu_freq
}

#: study -> notebook that runs it (in the order ``make ablations`` runs them)
STUDY_NOTEBOOKS: Dict[str, str] = {
    "equivalence": "equivalence.ipynb",
    "lr_sweep": "lr_sweep.ipynb",
    "frequency": "precondition_frequency.ipynb",
    "comparison": "comparison.ipynb",
    "variants": "variants.ipynb",
    "batch_size": "batch_size.ipynb",
    "overhead": "overhead.ipynb",
}

#: figure name -> the study (of STUDY_NOTEBOOKS) that produces its data
FIGURE_STUDY = {"overhead": "overhead", "equivalence_claim1": "equivalence", "equivalence_gap": "equivalence",
                **{k: v for k, v in FIGURES.items() if v}}

CLAIM1_FILE = "claim1.json"
GAP_FILE = "gap_trajectory.json"


def _scale_field_checks() -> Dict[str, Callable[[str, Any], Any]]:
    """How each ``Scale`` field given in ``scale_overrides`` is checked (and coerced from papermill's text)."""
    from .data import TOKENIZERS
    from .models import PRESETS

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


# =================================================================================== notebook helpers
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


def _check_device(sc) -> None:
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
        _check_device(sc)
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
        raise ablations.MissingResults(f"{e} [results root: {results.runs_root(root)}]") from None
    if not len(sd.runs):
        raise ablations.MissingResults(
            f"no results for study {study!r} at scale {sc.name!r} under {results.runs_root(root) / sc.experiment}: "
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
    from .models import PRESETS

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


def show(paths: Optional[Sequence[Path]]) -> None:
    """Display a drawn figure's PNG in the notebook (prints the paths elsewhere)."""
    if not paths:
        return
    try:
        from IPython import get_ipython
        from IPython.display import Image, display

        if get_ipython() is not None:
            display(Image(filename=str(paths[0])))
    except ImportError:
        pass
    print("saved: " + ", ".join(str(p) for p in paths))


def draw_study_figure(name: str, sd, results_root=None, figures_dir=None, shard: Optional[str] = None):
    """A notebook's figure: drawn (and shown) from the stored runs, unless this is one shard of an unfinished
    sweep (the last shard to finish draws it; ``make figures`` always can)."""
    if shard and sd.missing:
        print(f"{name}: not drawn yet, {len(sd.missing)} runs of other shards missing (`make figures` draws it later)")
        return None
    paths = draw(name, results_root, figures_dir, scales={sd.scale.name.split("-")[0]: sd.scale})
    show(paths)
    return paths


#: The exponent slider's values: the widget's study computes all of them at once, so moving it only redraws.
EXPONENT_GRID = tuple(round(0.1 + 0.05 * i, 2) for i in range(19))


def claim1_cache(n_batches: int = 64, max_staleness: int = 40):
    """``study(m, n, condition, exponent)``: ``claim1.claim1_study`` on :data:`EXPONENT_GRID` (plus
    ``exponent`` if it is off the grid), cached: only a new shape or conditioning recomputes it; the exponent and
    staleness sliders then only redraw."""
    import functools

    @functools.lru_cache(maxsize=32)
    def cached(m: int, n: int, condition: float, extra: Optional[float]):
        exps = sorted({*EXPONENT_GRID, *((extra,) if extra is not None else ())})
        return claim1.claim1_study(m=m, n=n, condition=condition, n_batches=n_batches, exponents=exps,
                                     max_staleness=max_staleness)

    def study(m: int, n: int, condition: float, exponent: float):
        e = round(float(exponent), 3)
        return cached(int(m), int(n), float(condition), None if e in EXPONENT_GRID else e)

    study.cache_info = cached.cache_info
    return study


def claim1_widget(m: int = 16, n: int = 12, condition: float = 100.0, exponent: float = 0.25, staleness: int = 10,
                  max_staleness: int = 40, n_batches: int = 64):
    """Sliders (ipywidgets) over Claim 1 on the teaching problem: shape, conditioning, exponent, staleness.

    A new shape or conditioning recomputes ``claim1.claim1_study`` (float64, about half a second at the
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


# ============================================================================================ drawing
def default_figures_dir(scales: Iterable[Any] = ()) -> Path:
    """``figures/`` when every scale is a registered one; else ``out/figures/<scale names>/`` (git-ignored), so a
    smoke run with overridden scales never replaces the committed figures."""
    odd = sorted(sc.name for sc in scales if not ablations.is_registered(sc))
    return FIGURES_DIR if not odd else results.REPO_ROOT / "out" / "figures" / "+".join(odd)


def _default_scales(scales: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    out = {k: ablations.get_scale(k) for k in ablations.PAPER_SCALES}
    out.update(dict(scales or {}))
    return out


def _study_datas(study: str, scales: Mapping[str, Any], root, cache: Dict) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for name, sc in scales.items():
        key = (sc.experiment, str(root))
        if key not in cache:
            cache[key] = results.load(sc.experiment, root)
        try:
            sd = analysis.study_data(study, sc, root, frame=cache[key])
        except ablations.CorruptResults:
            raise  # the figure cannot be drawn right without that record: say which
        except ablations.MissingResults:
            sd = None
        out[name] = sd if sd is not None and len(sd.runs) else None
    return out


def _overhead_data(scales: Mapping[str, Any], overhead_dir=None) -> Dict[str, Optional[Dict[str, Any]]]:
    """``{key: stored timing study of that scale, by the scale's own name, or None}``; ``overhead_dir`` may also
    name one study file (the overhead notebook's ``output``)."""
    from .overhead import default_path

    def path(sc) -> Path:
        if overhead_dir is None:
            return default_path(sc.name)
        o = Path(overhead_dir)
        return o if o.suffix == ".json" else o / default_path(sc.name).name

    paths = {k: path(sc) for k, sc in scales.items()}
    return {k: (results.read_record(p) if p.is_file() else None) for k, p in paths.items()}


def draw(name: str, results_root=None, figures_dir=None, scales: Optional[Mapping[str, Any]] = None,
         equivalence_dir=None, overhead_dir=None, _cache: Optional[Dict] = None, only_scales: bool = False) -> List[Path]:
    """Draw figure ``name`` (one of :data:`FIGURES`) from stored results into ``figures_dir`` (PNG + PDF).

    ``scales``: ``{name: Scale}`` overriding the default scales (a notebook passes its own); with
    ``only_scales`` no other scale is looked at. Raises ``ablations.MissingResults`` (one line, naming the
    command) when no scale has the figure's results.
    """
    from . import plot_equivalence, plot_studies, plot_wallclock, plotting

    if name not in FIGURES:
        raise ParameterError(f"unknown figure {name!r}; allowed: {', '.join(FIGURES)}")
    root = Path(results_root) if results_root is not None else None
    scs = dict(scales) if (only_scales and scales) else _default_scales(scales)
    out = Path(figures_dir) if figures_dir is not None else default_figures_dir(scs.values())
    if name == "frequency_seeded":
        from . import plot_seeds

        return plot_seeds.draw(root, out, scs)
    cache = _cache if _cache is not None else {}
    study = FIGURES[name]
    if study is not None:
        datas = _study_datas(study, scs, root, cache)
        fn = {"lr_sweep": plot_studies.plot_lr_sweep, "frequency": plot_studies.plot_frequency,
              "comparison": plot_wallclock.plot_comparison, "efficiency": plot_wallclock.plot_efficiency,
              "batch_size": plot_studies.plot_batch_size, "variants": plot_studies.plot_variants}[name]
        if not any(v is not None for v in datas.values()):
            raise ablations.MissingResults(
                f"{name}: no {study} results under {results.runs_root(root)}: run "
                + " or ".join(f"`{plotting.missing_hint(k)}`" for k in scs))
        if name == "efficiency":
            return fn(datas, out, name=name, overhead=_overhead_data(scs, overhead_dir))
        return fn(datas, out, name=name)
    if name == "overhead":
        odir = Path(overhead_dir) if overhead_dir is not None else stored.OVERHEAD_DIR
        datas = _overhead_data(scs, odir)
        if not any(v is not None for v in datas.values()):
            raise ablations.MissingResults(f"overhead: no timing study under {odir}: run "
                                           "`make ablations SCALE=cpu` (or `python -m soap_lab ablations --scale cpu --study overhead`)")
        runs = _study_datas("frequency", {k: scs[k] for k, v in datas.items() if v is not None}, root, cache)
        return plot_wallclock.plot_overhead(datas, out, name=name, runs=runs)
    edir = Path(equivalence_dir) if equivalence_dir is not None else stored.EQUIVALENCE_DIR
    hint = "make ablations SCALE=cpu` (or `python -m soap_lab ablations --scale cpu --study equivalence`"
    if name == "equivalence_claim1":
        return plot_equivalence.plot_claim1(stored.load_json(edir / CLAIM1_FILE, "Claim 1 data", hint), out, name=name)
    return plot_equivalence.plot_gap(stored.load_json(edir / GAP_FILE, "gap-trajectory data", hint), out, name=name)


def main_figures(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m soap_lab figures``: redraw every figure from stored results. Exit 1 if any had no results."""
    p = argparse.ArgumentParser(prog="python -m soap_lab figures",
                                description="Redraw figures/ from stored results (no training).")
    p.add_argument("--runs-root", default=None, help="root of the run records (default <repo>/data/runs)")
    p.add_argument("--figures-dir", default=None, help="output folder (default <repo>/figures)")
    p.add_argument("--equivalence-dir", default=None, help="default <repo>/data/equivalence")
    p.add_argument("--overhead-dir", default=None, help="default <repo>/data/overhead")
    p.add_argument("--only", nargs="+", choices=list(FIGURES), metavar="NAME", help=f"any of: {', '.join(FIGURES)}")
    p.add_argument("--scales", nargs="+", choices=list(ablations.SCALES), default=list(ablations.PAPER_SCALES),
                   help="scales to look for (default all; a scale without results is named on the figures)")
    p.add_argument("--scale-overrides", type=json.loads, default=None, metavar="JSON",
                   help="Scale fields overridden for every scale in --scales (to draw a smoke sweep's results)")
    args = p.parse_args(list(argv) if argv is not None else None)
    try:
        scales = {k: notebook_scale(k, overrides=args.scale_overrides) for k in args.scales}
    except ParameterError as e:
        p.error(str(e))
    t0 = time.perf_counter()
    cache: Dict = {}
    failed = []
    for name in args.only or list(FIGURES):
        t = time.perf_counter()
        try:
            paths = draw(name, args.runs_root, args.figures_dir, scales=scales, equivalence_dir=args.equivalence_dir,
                         overhead_dir=args.overhead_dir, _cache=cache, only_scales=True)
        except (ablations.MissingResults, results.CorruptRecord) as e:
            print(f"skipped {name}: {e}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"{paths[0]} (+ .pdf)  [{time.perf_counter() - t:.1f}s]")
    print(f"{len(args.only or FIGURES) - len(failed)} figures in {time.perf_counter() - t0:.1f}s"
          + (f"; missing results for: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


# ========================================================================================== ablations
def _equivalence_direct(data_dir: Optional[Path], log) -> List[Path]:
    d = Path(data_dir) if data_dir is not None else stored.EQUIVALENCE_DIR
    c = claim1.claim1_study()
    c["provenance"] = provenance()
    g = claim1.gap_trajectory()
    g["provenance"] = provenance()
    paths = [stored.save_json(c, d / CLAIM1_FILE), stored.save_json(g, d / GAP_FILE)]
    if log:
        log(f"equivalence: wrote {paths[0]} and {paths[1]}")
    return paths


def _run_direct(study: str, sc, root, shard, log) -> None:
    if study == "equivalence":
        _equivalence_direct(None, log)
    elif study == "overhead":
        from . import overhead

        path = overhead.run(sc, log=log)
        if log:
            log(f"overhead: wrote {path}")
    else:
        run_study(study, sc, root, shard=shard, train=True, log=log)


def _papermill():
    try:
        import papermill  # noqa: F401

        return papermill
    except ImportError:
        return None


def main_ablations(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m soap_lab ablations --scale S --device D [--study X ...] [--shard i/N]``: rerun the experiments."""
    studies = list(STUDY_NOTEBOOKS)
    p = argparse.ArgumentParser(prog="python -m soap_lab ablations",
                                description="Rerun the paper's experiments through the notebooks (resumable).")
    p.add_argument("--scale", default="cpu", choices=list(ablations.SCALES))
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the scale's)")
    p.add_argument("--study", action="append", choices=studies, metavar="NAME",
                   help=f"repeatable; default all, in this order: {', '.join(studies)}")
    p.add_argument("--shard", default=None, help="i/N: train grid points i, i+N, ... of each study")
    p.add_argument("--runs-root", default=None, help="root of the run records (default <repo>/data/runs)")
    p.add_argument("--figures-dir", default=None, help="default <repo>/figures")
    p.add_argument("--executed-dir", default=None, help="executed notebooks (default <repo>/notebooks/executed)")
    p.add_argument("--scale-overrides", type=json.loads, default=None, metavar="JSON",
                   help='Scale fields to override, e.g. \'{"steps": 20, "preset": "tiny"}\' (smoke runs)')
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--no-papermill", action="store_true",
                   help="run the studies through soap_lab directly (no notebooks, no figures); automatic without papermill")
    args = p.parse_args(list(argv) if argv is not None else None)
    try:
        sc = notebook_scale(args.scale, device=args.device, overrides=args.scale_overrides,
                            torch_threads=args.torch_threads)
        if args.shard:
            sweep.parse_shard(args.shard)
    except ValueError as e:
        p.error(str(e))
    chosen = [s for s in studies if s in (args.study or studies)]
    first_shard = not args.shard or args.shard.split("/")[0] == "0"
    pm = None if args.no_papermill else _papermill()
    if pm is None and not args.no_papermill:
        print("papermill is not installed: running the studies directly (figures: `make figures` later)", file=sys.stderr)
    executed = Path(args.executed_dir) if args.executed_dir else EXECUTED_DIR
    status = 0
    for study in chosen:
        if study in ("equivalence", "overhead") and not first_shard:
            print(f"{study}: left to shard 0")
            continue
        if study == "equivalence" and args.scale != "cpu" and not args.study:
            print("equivalence: scale-independent (CPU, float64); run it with --scale cpu")
            continue
        t0 = time.perf_counter()
        print(f"== {study} (scale {sc.name}, device {sc.device}{', shard ' + args.shard if args.shard else ''})", flush=True)
        if pm is None:
            try:
                _run_direct(study, sc, args.runs_root, args.shard, print)
            except (ablations.MissingResults, ValueError) as e:
                print(f"{study} failed: {e}", file=sys.stderr)
                status = 1
            continue
        nb = NOTEBOOKS_DIR / STUDY_NOTEBOOKS[study]
        tag = f"_{args.shard.replace('/', 'of')}" if args.shard else ""
        out = executed / f"{nb.stem}_{sc.name}{tag}.ipynb"
        out.parent.mkdir(parents=True, exist_ok=True)
        declared = pm.inspect_notebook(str(nb))
        params = {"scale": args.scale, "device": args.device, "shard": args.shard, "train": True, "store": True,
                  "results_root": args.runs_root, "figures_dir": args.figures_dir,
                  "scale_overrides": args.scale_overrides or {}, "torch_threads": args.torch_threads}
        params = {k: v for k, v in params.items() if k in declared and v is not None}  # None: the notebook's default
        try:
            pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name="python3", cwd=str(NOTEBOOKS_DIR),
                                progress_bar=False)
        except pm.PapermillExecutionError as e:
            print(f"{study} failed ({out}): {e.ename}: {e.evalue}", file=sys.stderr)
            status = 1
            continue
        print(f"{study}: done in {time.perf_counter() - t0:.0f}s -> {out}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main_figures())
