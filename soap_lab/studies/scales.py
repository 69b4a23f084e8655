"""Scales: the base setting every study of one size shares (model, data, steps, seeds, lr grids, device).

A study's own grid (its frequencies, batch sizes, budget fractions...) is declared in the study's file per scale;
a scale only holds what all of them share, plus ``params``: overrides of those study grids. Every study of a
scale writes into one pool of run records, ``data/runs/paper_<scale>/``, so a run needed by several studies
(SOAP at f = 10 and its tuned lr) is trained once.

Registered scales (:data:`SCALES`):

- ``cpu``: a 0.46M-parameter GPT (preset ``cpu``) on Austen characters, 300 steps of 32×128 tokens, one seed
  (n = 1: the figures say so and decide nothing);
- ``cpu_freq``: a 0.11M-parameter GPT (preset ``mini``), 1000 steps of 16×64 tokens, 3 seeds by default (the
  frequency study 10): cheap enough to give every claim seeds and an interval on a 2-core CPU;
- ``gpu``: one H100/H200, a 25M-parameter GPT on BPE tokens, 64×512 tokens per step (not run yet).

A scale with any field or study parameter overridden (a smoke run, another grid) is renamed
``<name>-<hash of every field>`` (:func:`get_scale`): its runs, figures and data sets go elsewhere, so nothing
overwrites the committed results of a registered scale by accident.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["Scale", "SCALES", "get_scale", "is_registered", "scale_hash"]


@dataclass(frozen=True)
class Scale:
    """What every study of one scale shares. Defaults: the one-seed CPU scale ``cpu`` (a run ≈ 1-2 min on 2 cores)."""

    name: str = "cpu"
    preset: str = "cpu"
    """Model preset (``soap_lab.train.models.PRESETS``)."""
    tokenizer: str = "char"
    batch_size: int = 32
    """Sequences per step at the reference batch (the preset's seq_len tokens each)."""
    steps: int = 300
    eval_every: int = 25
    eval_batches: int = 8
    device: str = "cpu"
    lrs: Dict[str, Tuple[float, ...]] = field(default_factory=lambda: {
        "adamw": (3e-3, 1e-2, 3e-2), "soap": (3e-3, 1e-2, 3e-2), "shampoo": (3e-3, 1e-2, 3e-2)})
    """Learning-rate grid per tuned optimizer (SOAP's variants use SOAP's tuned value)."""
    base_frequency: int = 10
    """f of every run that does not vary it (the lr sweep, the variants, the efficiency protocol)."""
    seeds: Tuple[int, ...] = (0,)
    """Seeds of every study that does not set its own (a study's ``seeds`` parameter)."""
    tune_seeds: Optional[Tuple[int, ...]] = None
    """Seeds of the learning-rate sweep (the tuned lr has the lowest mean over them); ``None``: ``seeds``."""
    params: Tuple[Tuple[str, Any], ...] = ()
    """Overrides of the studies' own grid parameters, as sorted ``(name, value)`` pairs (:func:`get_scale`)."""

    @property
    def experiment(self) -> str:
        """The run pool's folder under ``data/runs/``."""
        return f"paper_{self.name}"

    @property
    def registered_name(self) -> str:
        """The registered scale this one was made from (``cpu_freq`` for ``cpu_freq-1a2b3c``)."""
        return self.name.split("-")[0]

    @property
    def lr_seeds(self) -> Tuple[int, ...]:
        """The seeds of the learning-rate sweep."""
        return tuple(self.tune_seeds) if self.tune_seeds is not None else tuple(self.seeds)

    def param(self, study_defaults: Mapping[str, Mapping[str, Any]], key: str) -> Any:
        """A study's grid parameter ``key`` at this scale: the override in ``params`` if any, else the study's
        value for this (registered) scale, else its ``"*"`` value; ``None`` (or no value) for a key that is also a
        field (``seeds``) means the scale's own."""
        over = dict(self.params)
        value = over[key] if key in over else None
        if key not in over:
            for k in (self.registered_name, "*"):
                if key in study_defaults.get(k, {}):
                    value = study_defaults[k][key]
                    break
            else:
                if not hasattr(self, key):
                    raise KeyError(f"study parameter {key!r} has no value at scale {self.name!r}")
        return getattr(self, key) if value is None and hasattr(self, key) else value


SCALES: Dict[str, Scale] = {
    "cpu": Scale(),
    "gpu": Scale(name="gpu", preset="gpu", tokenizer="bpe", batch_size=64, steps=1000, eval_every=50,
                 eval_batches=16, device="cuda",
                 lrs={"adamw": (1e-3, 3e-3, 1e-2), "soap": (1e-3, 3e-3, 1e-2), "shampoo": (1e-3, 3e-3, 1e-2)}),
    # ≈ 0.03 s (AdamW) to 0.10 s (SOAP f=1) per step on one thread.
    "cpu_freq": Scale(name="cpu_freq", preset="mini", batch_size=16, steps=1000, eval_every=100, eval_batches=32,
                      seeds=(0, 1, 2), tune_seeds=(0,)),
}


def scale_hash(scale: Scale, length: int = 6) -> str:
    """Short sha256 of every field of ``scale`` but its name."""
    d = {k: v for k, v in dataclasses.asdict(scale).items() if k != "name"}
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def is_registered(scale: Scale) -> bool:
    """True for a scale of :data:`SCALES` exactly as registered (its results are the committed ones)."""
    return SCALES.get(scale.name) == scale


def _frozen(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _frozen(x)) for k, x in v.items()))
    return v


def get_scale(name: str, **overrides: Any) -> Scale:
    """The scale called ``name`` with fields overridden (``steps=20``) and study parameters set
    (``frequencies=(1, 10)``: any keyword that is not a field); renamed ``<name>-<hash>`` if anything changed."""
    if name not in SCALES:
        raise ValueError(f"unknown scale {name!r}; allowed: {', '.join(SCALES)}")
    overrides.pop("name", None)
    fields = {f.name for f in dataclasses.fields(Scale)}
    base = SCALES[name]
    # every override is also a study parameter: --set seeds=[0, 1] reaches a study that sets its own seeds
    params = {**dict(base.params), **{k: _frozen(v) for k, v in overrides.items() if k != "params"}}
    sc = dataclasses.replace(base, **{k: v for k, v in overrides.items() if k in fields and k != "params"},
                             params=tuple(sorted(params.items())))
    if sc != base:
        sc = dataclasses.replace(sc, name=f"{name}-{scale_hash(sc)}")
    return sc
