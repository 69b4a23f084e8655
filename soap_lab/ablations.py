"""The paper's experiments as grids of training runs, at CPU and GPU scale (paper §3, Figs. 1-4, 6, 7).

Every experiment of one scale shares one run pool, ``data/runs/paper_<scale>/``: a run needed by several
figures (e.g. SOAP at f=10 and the tuned learning rate is in the frequency ablation, the comparison, the
variants and the batch-size study) is trained once. Each function returns the configs of one study; the
sweep engine (:func:`soap_lab.records.sweep.run_sweep`) skips runs whose record exists, so every study resumes.

Protocol (as the paper, scaled down): the learning rate of each optimizer is tuned by a small sweep at f=10
(``lr_sweep``); every other study uses the tuned value. β1 = β2 = 0.95. Shampoo is the paper's baseline
(exponent 1/2.5, ε 1e-12, Adam grafting, preconditioning from step f).

The seeded frequency study (scale ``cpu_freq``; trained by :mod:`soap_lab.freq_study`) measures the rise of SOAP's
and Shampoo's final loss with f per seed, in three arms: ``frequency_seeded`` (the main arm), ``frequency_batch``
(more tokens per step) and ``frequency_long`` (more steps).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .records import store, sweep
from .optim import takes_frequency
from .train.config import TrainConfig

#: The studies of the paper's figures (each has a notebook).
STUDIES = ("lr_sweep", "frequency", "comparison", "batch_size", "variants")
#: The seeded frequency study's arms (trained by ``soap_lab.freq_study``), at scale ``cpu_freq``.
SEEDED_STUDIES = ("frequency_seeded", "frequency_batch", "frequency_long")
#: The paper's other claims with seeds at the same scale (:func:`seeded_others`, ``soap_lab.seeded_claims``), and
#: the part of it that gives the batch-size claim the paper's form (:func:`batch_efficiency`).
OTHER_SEEDED_STUDIES = ("seeded_others", "batch_efficiency")
#: Scales the paper-figure studies are drawn for (``make figures``); ``cpu_freq`` has its own figure.
PAPER_SCALES = ("cpu", "gpu")

#: The paper's Shampoo baseline (DistributedShampoo with root 2.5, ε 1e-12, Adam grafting).
SHAMPOO_BASELINE = {"exponent": 0.4, "eps": 1e-12, "grafting": "adam"}
SOAP_VARIANTS = ("soap", "soap_factorized", "soap_one_sided", "soap_factorized_one_sided")
#: The two optimizers whose rise with f the seeded frequency study compares.
PRECONDITIONED = ("soap", "shampoo")


class MissingResults(RuntimeError):
    """A study needs results that are not stored yet (message says which command produces them)."""


class CorruptResults(MissingResults):
    """A record a study needs is stored but corrupt or incomplete (message names the file)."""


@dataclass(frozen=True)
class Scale:
    """Sizes of one scale of the study. Defaults: the CPU scale (a run ≈ 1-2 min on 2 cores)."""

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
    frequencies: Tuple[int, ...] = (1, 3, 10, 30, 100)
    batch_sizes: Tuple[int, ...] = (8, 32, 128)
    budget_fractions: Tuple[float, ...] = (0.5, 0.625, 0.75, 0.875, 1.0)
    base_frequency: int = 10
    seeds: Tuple[int, ...] = (0,)
    tune_seeds: Optional[Tuple[int, ...]] = None
    """Seeds of the learning-rate sweep (the tuned lr has the lowest mean over them); ``None``: ``seeds``."""
    batch_multipliers: Tuple[int, ...] = (4, 16)
    """Batch arm of the seeded frequency study: batch_size × these (tokens per step × these)."""
    arm_frequencies: Tuple[int, ...] = (1, 30)
    """Frequencies of the batch arm."""
    long_steps: Optional[int] = None
    """Long arm of the seeded frequency study: steps (``None``: no long arm)."""
    long_frequencies: Tuple[int, ...] = (2, 100)
    long_seeds: Tuple[int, ...] = (0, 1)

    @property
    def experiment(self) -> str:
        return f"paper_{self.name}"

    @property
    def lr_seeds(self) -> Tuple[int, ...]:
        """The seeds of the learning-rate sweep."""
        return tuple(self.tune_seeds) if self.tune_seeds is not None else tuple(self.seeds)


SCALES: Dict[str, Scale] = {
    "cpu": Scale(),
    # One H100/H200: a 25M-parameter GPT (plus embeddings) on BPE tokens, 64×512 tokens per step.
    "gpu": Scale(name="gpu", preset="gpu", tokenizer="bpe", batch_size=64, steps=1000, eval_every=50,
                 eval_batches=16, device="cuda",
                 lrs={"adamw": (1e-3, 3e-3, 1e-2), "soap": (1e-3, 3e-3, 1e-2), "shampoo": (1e-3, 3e-3, 1e-2)},
                 batch_sizes=(16, 64, 256)),
    # The seeded frequency study (issue 11): a 0.1M-parameter GPT, 1000 steps of 16×64 characters, 3 seeds;
    # ≈ 0.03 s (AdamW) to 0.10 s (SOAP f=1) per step on one thread.
    "cpu_freq": Scale(name="cpu_freq", preset="mini", batch_size=16, steps=1000, eval_every=100, eval_batches=32,
                      frequencies=(1, 3, 10, 30), seeds=(0, 1, 2), tune_seeds=(0,), batch_multipliers=(4, 16),
                      arm_frequencies=(1, 30), long_steps=3000, long_frequencies=(2, 100), long_seeds=(0, 1)),
}


def scale_hash(scale: Scale, length: int = 6) -> str:
    """Short sha256 of every field of ``scale`` but its name."""
    d = {k: v for k, v in dataclasses.asdict(scale).items() if k != "name"}
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def is_registered(scale: Scale) -> bool:
    """True for a scale of :data:`SCALES` exactly as registered (its results are the committed ones)."""
    return SCALES.get(scale.name) == scale


def get_scale(name: str, **overrides: Any) -> Scale:
    """The scale called ``name`` (a key of :data:`SCALES`), with fields overridden (e.g. ``steps=20`` for a smoke run).

    A scale that differs from the registered one in any field is renamed ``<name>-<hash of all its fields>``, so
    its run pool (``data/runs/paper_<name>-<hash>/``) and every file derived from it are its own: a smoke run
    never writes into the committed results of the registered scale.
    """
    if name not in SCALES:
        raise ValueError(f"unknown scale {name!r}; allowed: {', '.join(SCALES)}")
    overrides.pop("name", None)
    sc = dataclasses.replace(SCALES[name], **overrides) if overrides else SCALES[name]
    if sc != SCALES[name]:
        sc = dataclasses.replace(sc, name=f"{name}-{scale_hash(sc)}")
    return sc


def _base(scale: Scale, root: Optional[str]) -> TrainConfig:
    return TrainConfig(
        experiment=scale.experiment, preset=scale.preset, tokenizer=scale.tokenizer,
        batch_size=scale.batch_size, steps=scale.steps, eval_every=scale.eval_every,
        eval_batches=scale.eval_batches, device=scale.device, betas=(0.95, 0.95), out_dir=root, progress=False,
    )


def _config(scale: Scale, root: Optional[str], optimizer: str, lr: float, **fields: Any):
    hparams = dict(fields.pop("hparams", {}))
    if optimizer == "shampoo":
        hparams = {**SHAMPOO_BASELINE, **hparams}
    f = fields.pop("precondition_frequency", scale.base_frequency)
    return dataclasses.replace(
        _base(scale, root), optimizer=optimizer, lr=float(lr), hparams=hparams,
        precondition_frequency=f if takes_frequency(optimizer) else None, **fields)


def label(config: Any) -> str:
    """Name of a run's optimizer for legends: ``SOAP (eigh)``, ``Shampoo``, ``AdamW``, ``SOAP factorized``..."""
    d = store.config_dict(config)
    name = d["optimizer"]
    pretty = {"adamw": "AdamW", "shampoo": "Shampoo", "adafactor": "Adafactor", "eigen_adafactor": "EigenAdafactor",
              "soap": "SOAP", "soap_factorized": "SOAP factorized", "soap_one_sided": "SOAP one-sided",
              "soap_factorized_one_sided": "SOAP factorized + one-sided"}.get(name, name)
    if name.startswith("soap") and (d.get("hparams") or {}).get("refresh") == "eigh":
        pretty += " (eigh)"
    return pretty


# ------------------------------------------------------------------------------------------ studies
def lr_sweep(scale: Scale, root: Optional[str] = None) -> List[Any]:
    """Each tuned optimizer over its learning-rate grid, at f = base_frequency and the reference batch,
    for every seed of ``scale.lr_seeds``."""
    return [_config(scale, root, opt, lr, seed=s) for opt, lrs in scale.lrs.items() for lr in lrs
            for s in scale.lr_seeds]


def tuned_lr(optimizer: str, scale: Scale, root: Optional[str] = None) -> float:
    """The lr of ``lr_sweep`` with the lowest mean final validation loss over the sweep's seeds for ``optimizer``
    (SOAP variants: SOAP's); an lr where any seed diverged is out. A missing, corrupt or incomplete record of
    the sweep raises :class:`MissingResults` naming the file (the tuned value is never chosen without it)."""
    tuned = "soap" if optimizer.startswith("soap") else optimizer
    if tuned not in scale.lrs:
        raise ValueError(f"no learning-rate grid for {optimizer!r} at scale {scale.name!r}; tuned: {list(scale.lrs)}")
    losses: Dict[float, List[Optional[float]]] = {}
    for cfg in lr_sweep(scale, root):
        if cfg.optimizer != tuned:
            continue
        path = store.record_path(cfg)
        if not path.exists():
            raise MissingResults(
                f"the learning-rate sweep for {tuned} at scale {scale.name!r} is not finished ({path.name} missing): "
                f"run `python -m soap_lab ablations --scale {scale.name} --study lr_sweep` (or `make ablations SCALE={scale.name}`)")
        try:
            rec = store.read_complete_record(path)
        except store.CorruptRecord as e:
            raise CorruptResults(f"cannot tune the lr of {tuned} at scale {scale.name!r}: {e} "
                                 f"(delete it and rerun the lr_sweep study)") from None
        losses.setdefault(cfg.lr, []).append(rec["summary"].get("final_val_loss"))
    best: Optional[Tuple[float, float]] = None
    for lr, ls in losses.items():
        if not all(x is not None and math.isfinite(x) for x in ls):
            continue
        mean = sum(ls) / len(ls)
        if best is None or mean < best[0]:
            best = (mean, lr)
    if best is None:
        raise MissingResults(f"every {tuned} run of the learning-rate sweep diverged at scale {scale.name!r}")
    return best[1]


def seeded(scale: Scale, cfgs: List[Any], seeds: Optional[Sequence[int]] = None) -> List[Any]:
    """Every config of ``cfgs`` once per seed of ``seeds`` (default ``scale.seeds``), seed-major order kept per config."""
    return [dataclasses.replace(c, seed=int(s)) for c in cfgs for s in (scale.seeds if seeds is None else seeds)]


def frequency(scale: Scale, root: Optional[str] = None) -> List[Any]:
    """Fig. 1 right / Fig. 7 right: final loss vs f for Shampoo, SOAP (QR) and SOAP (eigh); AdamW as a line."""
    out = [_config(scale, root, "adamw", tuned_lr("adamw", scale, root))]
    for f in scale.frequencies:
        out.append(_config(scale, root, "shampoo", tuned_lr("shampoo", scale, root), precondition_frequency=f))
        out.append(_config(scale, root, "soap", tuned_lr("soap", scale, root), precondition_frequency=f))
        out.append(_config(scale, root, "soap", tuned_lr("soap", scale, root), precondition_frequency=f,
                           hparams={"refresh": "eigh"}))
    return seeded(scale, out)


def comparison(scale: Scale, root: Optional[str] = None) -> List[Any]:
    """Figs. 1-3: AdamW, Shampoo at the full budget; SOAP at every budget fraction (the efficiency fit)."""
    out = [_config(scale, root, "adamw", tuned_lr("adamw", scale, root)),
           _config(scale, root, "shampoo", tuned_lr("shampoo", scale, root))]
    out += [_config(scale, root, "soap", tuned_lr("soap", scale, root), budget_fraction=b) for b in scale.budget_fractions]
    return seeded(scale, out)


def batch_frequency(scale: Scale, batch_size: int) -> int:
    """SOAP's f at ``batch_size``: ``base_frequency`` at the reference batch, scaled with 1/batch as in the paper
    (f = 10 at 2M tokens, 80 at 256k), at least 1."""
    return max(1, round(scale.base_frequency * scale.batch_size / batch_size))


def batch_size(scale: Scale, root: Optional[str] = None) -> List[Any]:
    """Fig. 4: AdamW and SOAP at several batch sizes, f scaled with 1/batch as in the paper."""
    out = []
    for b in scale.batch_sizes:
        f = batch_frequency(scale, b)
        out.append(_config(scale, root, "adamw", tuned_lr("adamw", scale, root), batch_size=b))
        out.append(_config(scale, root, "soap", tuned_lr("soap", scale, root), batch_size=b, precondition_frequency=f))
    return seeded(scale, out)


def batch_efficiency(scale: Scale, root: Optional[str] = None) -> List[Any]:
    """Fig. 4 in the paper's form: SOAP at every budget fraction below 1 at each batch of ``scale.batch_sizes``
    (with :func:`batch_size`'s full-budget runs, the efficiency fit per batch: steps to AdamW's loss), and
    Shampoo at the smallest batch (Fig. 4 right: SOAP against Shampoo at small batch); f as in :func:`batch_size`."""
    lr, out = tuned_lr("soap", scale, root), []
    for b in scale.batch_sizes:
        f = batch_frequency(scale, b)
        out += [_config(scale, root, "soap", lr, batch_size=b, precondition_frequency=f, budget_fraction=frac)
                for frac in scale.budget_fractions if frac < 1.0]
    b = min(scale.batch_sizes)
    out.append(_config(scale, root, "shampoo", tuned_lr("shampoo", scale, root), batch_size=b,
                       precondition_frequency=batch_frequency(scale, b)))
    return seeded(scale, out)


def variants(scale: Scale, root: Optional[str] = None) -> List[Any]:
    """Fig. 6: SOAP and its factorized / one-sided variants, with Shampoo and AdamW."""
    out = [_config(scale, root, "adamw", tuned_lr("adamw", scale, root)),
           _config(scale, root, "shampoo", tuned_lr("shampoo", scale, root))]
    out += [_config(scale, root, v, tuned_lr(v, scale, root)) for v in SOAP_VARIANTS]
    return seeded(scale, out)


# ------------------------------------------------------------------------- the seeded frequency study
def _freq_grid(scale: Scale, root: Optional[str], frequencies: Sequence[int], seeds: Sequence[int], adamw: bool,
               **fields: Any) -> List[Any]:
    lrs = {o: tuned_lr(o, scale, root) for o in (*PRECONDITIONED, *(("adamw",) if adamw else ()))}
    out = [_config(scale, root, "adamw", lrs["adamw"], seed=int(s), **fields) for s in seeds] if adamw else []
    for f in frequencies:
        for opt in PRECONDITIONED:
            out += [_config(scale, root, opt, lrs[opt], precondition_frequency=int(f), seed=int(s), **fields)
                    for s in seeds]
    return out


def frequency_seeded(scale: Scale, root: Optional[str] = None) -> List[Any]:
    """The main arm: AdamW, then SOAP (QR refresh) and the paper's Shampoo baseline at every f of
    ``scale.frequencies``, each at its tuned lr, for every seed of ``scale.seeds``."""
    return _freq_grid(scale, root, scale.frequencies, scale.seeds, adamw=True)


def frequency_batch(scale: Scale, root: Optional[str] = None) -> List[Any]:
    """The batch arm: SOAP and Shampoo at ``scale.arm_frequencies`` with batch_size × each of
    ``scale.batch_multipliers`` (more tokens per step, same steps, the reference batch's tuned lrs), every seed."""
    out: List[Any] = []
    for m in scale.batch_multipliers:
        out += _freq_grid(scale, root, scale.arm_frequencies, scale.seeds, adamw=False,
                          batch_size=scale.batch_size * int(m))
    return out


def frequency_long(scale: Scale, root: Optional[str] = None) -> List[Any]:
    """The long arm: AdamW, SOAP and Shampoo at ``scale.long_frequencies`` for ``scale.long_steps`` steps
    (``scale.long_seeds``); empty when the scale has no ``long_steps``."""
    if not scale.long_steps:
        return []
    return _freq_grid(scale, root, scale.long_frequencies, scale.long_seeds, adamw=True, steps=int(scale.long_steps))


def seeded_others(scale: Scale, root: Optional[str] = None) -> List[Any]:
    """The paper's other claims with the scale's seeds (issue 11): the variants, SOAP with eigh refreshes at every
    f (QR vs eigh), the efficiency protocol's budget fractions, the lr sweep at every seed — a check of the
    tuning, which stays on ``scale.lr_seeds`` (:func:`tuned_lr`) — and the batch sizes with their budget fractions
    (:func:`batch_efficiency`, last: the costliest runs). Runs shared with other studies appear once."""
    lr_check = lr_sweep(dataclasses.replace(scale, tune_seeds=tuple(scale.seeds)), root)
    out, seen = [], set()
    for c in (variants(scale, root) + frequency(scale, root) + comparison(scale, root) + lr_check
              + batch_size(scale, root) + batch_efficiency(scale, root)):
        rid = store.run_id(c)
        if rid not in seen:
            seen.add(rid)
            out.append(c)
    return out


def configs(study: str, scale: Scale, root: Optional[str] = None) -> List[Any]:
    """The configs of ``study`` (one of :data:`STUDIES`, :data:`SEEDED_STUDIES`, :data:`OTHER_SEEDED_STUDIES`)."""
    known = STUDIES + SEEDED_STUDIES + OTHER_SEEDED_STUDIES
    if study not in known:
        raise ValueError(f"unknown study {study!r}; allowed: {', '.join(known)}")
    return globals()[study](scale, root)


def run(study: str, scale: Scale, root: Optional[str] = None, shard: Optional[Tuple[int, int]] = None,
        log=print) -> List[Dict[str, Any]]:
    """Train the missing runs of ``study`` (``lr_sweep`` first if the study needs tuned learning rates)."""
    if study != "lr_sweep":
        try:
            configs(study, scale, root)
        except MissingResults:
            run("lr_sweep", scale, root, shard=shard, log=log)
            # with shards, the other shards' part of the lr sweep may still be running: say so
            configs(study, scale, root)
    todo = configs(study, scale, root)
    if shard is not None:
        todo = sweep.shard(todo, *shard)
    return sweep.run_sweep(todo, log=log)
