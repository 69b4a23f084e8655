"""The registry: every study file of this package (each defines ``STUDY``), plus study files loaded from anywhere.

Adding a study is adding a file (``docs/adding-a-study.md``): :func:`studies` imports every module of
``soap_lab.studies`` that defines ``STUDY``; :func:`load_file` registers one from a path (the CLI's
``--study-file``). :func:`train` trains what a study still needs at a scale, :func:`data` reads back what is stored.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..records import store, sweep
from .base import MissingResults, Study, StudyData, lr_sweep_configs
from . import params as P
from .params import ParameterError
from .scales import SCALES, get_scale
from .scales import Scale

__all__ = ["studies", "get", "load_file", "figures", "data", "train", "scale_from", "ParameterError"]

_EXTRA: Dict[str, Study] = {}
_FOUND: Optional[Dict[str, Study]] = None


def studies() -> Dict[str, Study]:
    """Every registered study by name, in the results page's order."""
    global _FOUND
    if _FOUND is None:
        found = {}
        for mod in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
            m = importlib.import_module(f"{__package__}.{mod.name}")
            if isinstance(getattr(m, "STUDY", None), Study):
                found[m.STUDY.name] = m.STUDY
        _FOUND = found
    allx = {**_FOUND, **_EXTRA}
    return dict(sorted(allx.items(), key=lambda kv: (kv[1].order, kv[0])))


def get(name: str) -> Study:
    """The study called ``name`` (a one-line :class:`ParameterError` listing the others if there is none)."""
    s = studies()
    if name not in s:
        raise ParameterError(f"unknown study {name!r}; allowed: {', '.join(s)}")
    return s[name]


def load_file(path) -> Study:
    """Register the study defined (as ``STUDY``) in the Python file at ``path``; returns it."""
    p = Path(path)
    if not p.is_file():
        raise ParameterError(f"no study file {p}")
    spec = importlib.util.spec_from_file_location(f"soap_lab_study_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    study = getattr(module, "STUDY", None)
    if not isinstance(study, Study):
        raise ParameterError(f"{p} defines no STUDY = soap_lab.studies.Study(...)")
    _EXTRA[study.name] = study
    return study


def figures() -> Dict[str, Tuple[Study, Callable]]:
    """``{figure name: (its study, its draw function)}`` over every study."""
    return {name: (s, fn) for s in studies().values() for name, fn in s.figures.items()}


def data(study: Study, scale: Scale, root=None) -> StudyData:
    """The stored runs of ``study`` at ``scale`` (raises :class:`MissingResults` without the lr sweep it needs)."""
    return study.data(scale, root)


def train(study: Study, scale: Scale, root=None, shard: Optional[Tuple[int, int]] = None, log=print,
          wait_s: float = 6 * 3600, poll_s: float = 30) -> List[dict]:
    """Train the missing runs of ``study`` at ``scale`` (the lr sweep first when it uses tuned lrs), one progress
    line per run with an ETA over the grid; with ``shard=(i, n)`` only grid points i, i+n, ... (a shard whose
    study needs the other shards' part of the lr sweep waits for it, polling every ``poll_s``)."""
    if study.measure is not None:
        raise ParameterError(f"study {study.name!r} measures data rather than training runs: "
                             f"`python -m soap_lab study run {study.name} --scale {scale.registered_name}`")
    pick = (lambda cfgs: sweep.shard(cfgs, *shard)) if shard else (lambda cfgs: list(cfgs))
    done: List[dict] = []
    if study.tuned:
        done += sweep.run_sweep(pick(lr_sweep_configs(scale, root)), log=log)
    start, said = time.time(), None
    while True:
        try:
            cfgs = study.configs(scale, root)
            break
        except MissingResults as e:
            if shard is None or time.time() - start > wait_s:
                raise
            if log and str(e) != said:
                log(f"shard {shard[0]}/{shard[1]} waits for the other shards' lr sweep: {e}")
            said = str(e)
            time.sleep(poll_s)
    seen: set = set()
    while True:  # a study whose grid grows once its own sweep is stored (width, muon) is asked again
        todo = [c for c in pick(cfgs) if not store.has_record(c)]
        if log:
            log(f"{study.name} at {scale.name}: {len(todo)} of {len(cfgs)} runs to train"
                + (f" (shard {shard[0]}/{shard[1]})" if shard else ""))
        done += sweep.run_sweep(todo, log=log)
        seen |= {store.run_id(c) for c in cfgs}
        cfgs = study.configs(scale, root)
        if not {store.run_id(c) for c in cfgs} - seen:
            return done


def scale_from(name: str, sets: Optional[Mapping[str, Any]] = None, device: Optional[str] = None):
    """The scale ``name`` with ``sets`` applied: ``Scale`` fields (checked) and study parameters (any study's
    ``params`` key, coerced from text); renamed ``<name>-<hash>`` if anything changed. One-line errors."""
    if name not in SCALES:
        raise P.ParameterError(f"unknown scale {name!r}; allowed: {', '.join(SCALES)}")
    checks, over = P.field_checks(), {}
    known = sorted({k for s in studies().values() for d in s.params.values() for k in d})
    for k, v in P.mapping("set", dict(sets or {})).items():
        if k in checks:
            over[k] = checks[k](k, P.coerce(v))
        elif k in known:
            over[k] = P.coerce(v)
        else:
            raise P.ParameterError(f"unknown scale field or study parameter {k!r}; scale fields: "
                                 f"{', '.join(sorted(checks))}; study parameters: {', '.join(known)}")
    if "steps" in over and "eval_every" not in over:
        over["eval_every"] = max(1, min(SCALES[name].eval_every, over["steps"] // 4 or 1))
    if device is not None:
        over["device"] = P.device("device", device)
    return get_scale(name, **over)
