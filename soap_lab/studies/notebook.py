"""What the study notebook calls (``notebooks/study.ipynb``): its parameters checked, the study trained or read
back, its claims printed and its figures drawn — any registered study at any scale.

Figures go to ``out/notebook-figures/<scale>/`` unless ``figures_dir`` says otherwise: the committed ``figures/``
are ``make figures``' alone, so a notebook never rewrites them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Tuple

from ..records import store
from . import params as P
from .base import Study
from .registry import get, load_file, scale_from
from .report import claim_rows, terminal
from .scales import Scale

__all__ = ["setup", "run", "claims", "draw", "show"]


def setup(study: str, scale: str, sets: Any = None, device: Optional[str] = None, threads: Any = None,
          study_file: Optional[str] = None) -> Tuple[Study, Scale]:
    """The notebook's study and scale from its parameters; a bad one prints one line and raises ParameterError."""
    try:
        if study_file:
            load_file(study_file)
        s = get(study)
        sc = scale_from(scale, P.mapping("set", sets), device)
        if threads is not None:
            import torch

            torch.set_num_threads(P.integer("threads", threads, 1))
        if str(sc.device).startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise P.ParameterError(f"scale {sc.name!r} trains on {sc.device!r} but CUDA is not available here; "
                                       "set device='cpu', or train=False to report stored results")
    except (P.ParameterError, ValueError) as e:
        print(f"parameter error: {e}")
        raise P.ParameterError(str(e)) from None
    return s, sc


def run(s: Study, sc: Scale, train: bool = False, shard: Optional[str] = None, root=None, force: bool = False) -> None:
    """Train what the study still needs (``train``), or say how much of it is stored."""
    from ..records import sweep
    from .registry import train as train_study

    if train and s.measure is not None:
        print(f"{s.name}: wrote {s.measure(sc, force=force)}")
    elif train:
        train_study(s, sc, root, sweep.parse_shard(shard) if shard else None, log=print)
    elif s.grid is not None:
        cfgs = s.configs(sc, root)
        done = sum(store.has_record(c) for c in cfgs)
        print(f"{s.name} at {sc.name}: {done} of {len(cfgs)} runs stored (train=True trains the rest)")


def claims(s: Study, sc: Scale, root=None) -> str:
    """The study's claims, verdicts first."""
    return terminal(*claim_rows(sc, [s.name], root))


def draw(s: Study, sc: Scale, figures_dir=None, root=None, display: bool = True) -> List[Path]:
    """Draw the study's figures from stored results into ``figures_dir`` (default ``out/notebook-figures/<scale>``)."""
    out = Path(figures_dir) if figures_dir else store.REPO_ROOT / "out" / "notebook-figures" / sc.name
    paths: List[Path] = []
    for name, fn in s.figures.items():
        try:
            sd = s.data(sc, root)
        except store.MissingResults:
            sd = None
        got = fn({sc.registered_name: sd}, out)
        paths += got
        if display:
            show(got[0])
    return paths


def show(path: Path) -> None:
    """Display a drawn PNG in a notebook (and print where it is)."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display

        if get_ipython() is not None:
            display(Image(filename=str(path)))
    except ImportError:
        pass
    print(f"saved: {path}")
