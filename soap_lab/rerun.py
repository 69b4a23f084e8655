"""``make ablations``: rerun the paper's experiments, each study through its notebook.

Each study is a notebook (``notebooks/``) executed by papermill with the scale, device and shard as parameters;
executed copies go to ``notebooks/executed/`` (git-ignored). Finished runs are skipped by the sweep engine, so an
interrupted call resumes. Without papermill (the GPU machine), or with ``no_papermill``, the same studies run
through ``soap_lab`` directly (``ablations.run``, ``claim1``, ``overhead``) and the figures are drawn later by
``make figures``. papermill is imported only here, and only when executing notebooks; the command line is
``python -m soap_lab ablations`` (``soap_lab.cli``).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from . import ablations, overhead
from .equivalence import experiments
from .records import store, datasets
from .notebook import run_study
from .records.provenance import provenance

__all__ = ["NOTEBOOKS_DIR", "EXECUTED_DIR", "STUDY_NOTEBOOKS", "run_ablations"]

NOTEBOOKS_DIR = store.REPO_ROOT / "notebooks"
EXECUTED_DIR = NOTEBOOKS_DIR / "executed"

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


def _equivalence_direct(data_dir: Optional[Path], log) -> List[Path]:
    d = Path(data_dir) if data_dir is not None else datasets.EQUIVALENCE_DIR
    c = experiments.claim1_study()
    c["provenance"] = provenance()
    g = experiments.gap_trajectory()
    g["provenance"] = provenance()
    paths = [datasets.save_json(c, d / datasets.CLAIM1_FILE), datasets.save_json(g, d / datasets.GAP_FILE)]
    if log:
        log(f"equivalence: wrote {paths[0]} and {paths[1]}")
    return paths


def _run_direct(study: str, sc, root, shard, log) -> None:
    if study == "equivalence":
        _equivalence_direct(None, log)
    elif study == "overhead":
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


def run_ablations(sc, scale: str, studies: Optional[Sequence[str]] = None, device: Optional[str] = None,
                  shard: Optional[str] = None, runs_root=None, figures_dir=None, executed_dir=None,
                  scale_overrides: Optional[Dict[str, Any]] = None, torch_threads: Optional[int] = None,
                  no_papermill: bool = False) -> int:
    """Run ``studies`` (default all of :data:`STUDY_NOTEBOOKS`, in that order) at the checked scale ``sc``, made from
    the registered scale ``scale`` with ``device`` and ``scale_overrides`` (passed on to the notebooks as their
    parameters). With ``shard="i/N"`` each study trains its grid points i, i+N, ...; the scale-independent studies
    (equivalence, overhead) are left to shard 0. Returns 0, or 1 when a study failed (one line each on stderr)."""
    chosen = [s for s in STUDY_NOTEBOOKS if s in (studies or STUDY_NOTEBOOKS)]
    first_shard = not shard or shard.split("/")[0] == "0"
    pm = None if no_papermill else _papermill()
    if pm is None and not no_papermill:
        print("papermill is not installed: running the studies directly (figures: `make figures` later)", file=sys.stderr)
    executed = Path(executed_dir) if executed_dir else EXECUTED_DIR
    status = 0
    for study in chosen:
        if study in ("equivalence", "overhead") and not first_shard:
            print(f"{study}: left to shard 0")
            continue
        if study == "equivalence" and scale != "cpu" and not studies:
            print("equivalence: scale-independent (CPU, float64); run it with --scale cpu")
            continue
        t0 = time.perf_counter()
        print(f"== {study} (scale {sc.name}, device {sc.device}{', shard ' + shard if shard else ''})", flush=True)
        if pm is None:
            try:
                _run_direct(study, sc, runs_root, shard, print)
            except (ablations.MissingResults, ValueError) as e:
                print(f"{study} failed: {e}", file=sys.stderr)
                status = 1
            continue
        nb = NOTEBOOKS_DIR / STUDY_NOTEBOOKS[study]
        tag = f"_{shard.replace('/', 'of')}" if shard else ""
        out = executed / f"{nb.stem}_{sc.name}{tag}.ipynb"
        out.parent.mkdir(parents=True, exist_ok=True)
        declared = pm.inspect_notebook(str(nb))
        params = {"scale": scale, "device": device, "shard": shard, "train": True, "store": True,
                  "results_root": runs_root, "figures_dir": figures_dir,
                  "scale_overrides": scale_overrides or {}, "torch_threads": torch_threads}
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
