"""Every figure, drawn from stored results only: the registry of figures and ``make figures``.

:func:`draw` redraws one figure into ``figures/`` (PNG + PDF) from run records under ``data/runs/paper_<scale>/``,
``data/equivalence/*.json`` and ``data/overhead/overhead_<scale>.json``: no training, no notebook. A scale
without results is named on each figure; a figure with no results at all raises ``ablations.MissingResults``
naming the command that produces them. :func:`draw_all` is ``make figures`` (``python -m soap_lab figures``):
every figure, about a minute, skipping (and naming) those without store.

The paper figures are drawn by default for :data:`FIGURE_SCALES`: the paper's scales and the seeded scale
``cpu_freq`` (3 seeds), one row of panels each; every seed is shown, with the mean and its 95% interval, and
each figure says n (``soap_lab.seedwise``).

Notebooks draw through :func:`draw_study_figure` and :func:`show`. Nothing heavy is imported at module import:
matplotlib/seaborn only when drawing.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from . import ablations, analysis
from .records import store, datasets
from .params import ParameterError

__all__ = [
    "FIGURE_SCALES",
    "FIGURES",
    "FIGURES_DIR",
    "default_figures_dir",
    "draw",
    "draw_all",
    "draw_study_figure",
    "show",
]

FIGURES_DIR = store.REPO_ROOT / "figures"
#: The scales the paper figures are drawn for by default (one row of panels each where it has results): the
#: paper's scales (``ablations.PAPER_SCALES``, which ``make ablations`` trains) and the seeded scale ``cpu_freq``,
#: whose runs ``python -m soap_lab.freq_study`` trains (never the notebooks).
FIGURE_SCALES = (*ablations.PAPER_SCALES, "cpu_freq")

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
    "claims_seeded": None,  # the paper's other claims with seeds (soap_lab.plot_claims), scale cpu_freq
}


# ============================================================================================ drawing
def default_figures_dir(scales: Iterable[Any] = ()) -> Path:
    """``figures/`` when every scale is a registered one; else ``out/figures/<scale names>/`` (git-ignored), so a
    smoke run with overridden scales never replaces the committed figures."""
    odd = sorted(sc.name for sc in scales if not ablations.is_registered(sc))
    return FIGURES_DIR if not odd else store.REPO_ROOT / "out" / "figures" / "+".join(odd)


def _default_scales(scales: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    out = {k: ablations.get_scale(k) for k in FIGURE_SCALES}
    out.update(dict(scales or {}))
    return out


def _study_datas(study: str, scales: Mapping[str, Any], root, cache: Dict) -> Dict[str, Any]:
    """``{key: StudyData of study at that scale, or None}``. The lr sweep is read on every seed of the scale (a
    scale tuned on fewer seeds, as ``cpu_freq`` on seed 0, may have the same sweep on its other seeds); its
    StudyData keeps the scale itself, so ``scale.lr_seeds`` still names the tuning seeds."""
    out: Dict[str, Any] = {}
    for name, sc in scales.items():
        key = (sc.experiment, str(root))
        if key not in cache:
            cache[key] = store.load(sc.experiment, root)
        try:
            wide = sc
            if study == "lr_sweep" and set(sc.seeds) - set(sc.lr_seeds):
                wide = dataclasses.replace(sc, tune_seeds=tuple(sorted(set(sc.lr_seeds) | set(sc.seeds))))
            sd = analysis.study_data(study, wide, root, frame=cache[key])
            sd.scale = sc
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
    return {k: (store.read_record(p) if p.is_file() else None) for k, p in paths.items()}


def draw(name: str, results_root=None, figures_dir=None, scales: Optional[Mapping[str, Any]] = None,
         equivalence_dir=None, overhead_dir=None, _cache: Optional[Dict] = None, only_scales: bool = False) -> List[Path]:
    """Draw figure ``name`` (one of :data:`FIGURES`) from stored results into ``figures_dir`` (PNG + PDF).

    ``scales``: ``{name: Scale}`` overriding the default scales (a notebook passes its own); with
    ``only_scales`` no other scale is looked at. Raises ``ablations.MissingResults`` (one line, naming the
    command) when no scale has the figure's store.
    """
    from . import plot_efficiency, plot_equivalence, plot_overhead, plot_studies, plot_wallclock, plotting

    if name not in FIGURES:
        raise ParameterError(f"unknown figure {name!r}; allowed: {', '.join(FIGURES)}")
    root = Path(results_root) if results_root is not None else None
    scs = dict(scales) if (only_scales and scales) else _default_scales(scales)
    out = Path(figures_dir) if figures_dir is not None else default_figures_dir(scs.values())
    if name == "frequency_seeded":
        from . import plot_seeds

        return plot_seeds.draw(root, out, scs)
    if name == "claims_seeded":
        from . import plot_claims

        return plot_claims.draw(root, out, scs)
    cache = _cache if _cache is not None else {}
    study = FIGURES[name]
    if study is not None:
        datas = _study_datas(study, scs, root, cache)
        fn = {"lr_sweep": plot_studies.plot_lr_sweep, "frequency": plot_studies.plot_frequency,
              "comparison": plot_wallclock.plot_comparison, "efficiency": plot_efficiency.plot_efficiency,
              "batch_size": plot_studies.plot_batch_size, "variants": plot_studies.plot_variants}[name]
        if not any(v is not None for v in datas.values()):
            raise ablations.MissingResults(
                f"{name}: no {study} results under {store.runs_root(root)}: run "
                + " or ".join(f"`{plotting.missing_hint(k)}`" for k in scs))
        if name == "efficiency":
            return fn(datas, out, name=name, overhead=_overhead_data(scs, overhead_dir))
        return fn(datas, out, name=name)
    if name == "overhead":
        odir = Path(overhead_dir) if overhead_dir is not None else datasets.OVERHEAD_DIR
        if odir.suffix == ".json" and scales:  # one study file: it belongs to the scales the caller named only
            scs = dict(scales)
        datas = _overhead_data(scs, odir)
        if not any(v is not None for v in datas.values()):
            raise ablations.MissingResults(f"overhead: no timing study under {odir}: run "
                                           "`make ablations SCALE=cpu` (or `python -m soap_lab ablations --scale cpu --study overhead`)")
        runs = _study_datas("frequency", {k: scs[k] for k, v in datas.items() if v is not None}, root, cache)
        return plot_overhead.plot_overhead(datas, out, name=name, runs=runs)
    edir = Path(equivalence_dir) if equivalence_dir is not None else datasets.EQUIVALENCE_DIR
    hint = "make ablations SCALE=cpu` (or `python -m soap_lab ablations --scale cpu --study equivalence`"
    if name == "equivalence_claim1":
        return plot_equivalence.plot_claim1(datasets.load_json(edir / datasets.CLAIM1_FILE, "Claim 1 data", hint), out, name=name)
    return plot_equivalence.plot_gap(datasets.load_json(edir / datasets.GAP_FILE, "gap-trajectory data", hint), out, name=name)


def draw_all(scales: Mapping[str, Any], names: Optional[Sequence[str]] = None, results_root=None, figures_dir=None,
             equivalence_dir=None, overhead_dir=None, log=print) -> List[str]:
    """``make figures``: draw every figure of ``names`` (default all of :data:`FIGURES`) for exactly ``scales``,
    one line each; a figure without results (or with a corrupt one) is skipped with one line on stderr naming
    the command that produces them. Returns the names of the skipped figures."""
    t0 = time.perf_counter()
    cache: Dict = {}
    failed = []
    names = list(names or FIGURES)
    for name in names:
        t = time.perf_counter()
        try:
            paths = draw(name, results_root, figures_dir, scales=scales, equivalence_dir=equivalence_dir,
                         overhead_dir=overhead_dir, _cache=cache, only_scales=True)
        except (ablations.MissingResults, store.CorruptRecord) as e:
            print(f"skipped {name}: {e}", file=sys.stderr)
            failed.append(name)
            continue
        log(f"{paths[0]} (+ .pdf)  [{time.perf_counter() - t:.1f}s]")
    log(f"{len(names) - len(failed)} figures in {time.perf_counter() - t0:.1f}s"
        + (f"; missing results for: {', '.join(failed)}" if failed else ""))
    return failed


# ====================================================================================== in notebooks
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
