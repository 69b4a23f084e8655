"""Sweeps: a grid of training runs, shards of it, and the resumable engine that trains what is not stored yet.

A sweep is a grid (optimizers x frequencies x lrs x seeds x budget fractions, on top of one base config);
``shard(grid, i, n)`` hands grid point ``k`` to shard ``k % n``, so ``n`` processes, GPUs or cluster array
jobs split one grid without talking to each other. ``run_sweep`` skips every config whose record exists
(``soap_lab.records.store.has_record``), so rerunning an interrupted sweep resumes it.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..train import loop as train_mod
from ..train.distributed import broadcast_from_rank0, init_distributed_for
from ..optim import takes_frequency
from .store import has_record, record_path, run_id

__all__ = ["grid", "parse_shard", "shard", "run_sweep"]


def grid(
    base: Any,
    optimizers: Optional[Sequence[str]] = None,
    frequencies: Optional[Sequence[Optional[int]]] = None,
    lrs: Optional[Sequence[float]] = None,
    seeds: Optional[Sequence[int]] = None,
    budget_fractions: Optional[Sequence[float]] = None,
    optimizer_hparams: Optional[Mapping[str, Mapping[str, Any]]] = None,
    **fixed: Any,
) -> List[Any]:
    """The configs of a sweep, in a fixed order (optimizer, then frequency, lr, seed, budget fraction).

    ``base`` is a ``TrainConfig``; ``fixed`` overrides its fields for every point (e.g. ``batch_size=64``).
    An axis left as ``None`` keeps the base value. Frequencies apply only to optimizers that take a
    ``precondition_frequency`` (``soap_lab.optim.takes_frequency``); the others get ``None`` once, not once per
    frequency. ``optimizer_hparams[name]`` is merged over ``base.hparams`` for optimizer ``name`` only
    (e.g. Shampoo's ``exponent``). Points are unique by run id.
    """
    base = dataclasses.replace(base, **fixed)
    opts = list(optimizers) if optimizers else [base.optimizer]
    freqs = list(frequencies) if frequencies else [base.precondition_frequency]
    out: List[Any] = []
    seen = set()
    per_opt = dict(optimizer_hparams or {})
    for opt in opts:
        opt_freqs = freqs if takes_frequency(opt) else [None]
        hparams = {**base.hparams, **per_opt.get(opt, {})}
        for f in opt_freqs:
            for lr in (lrs or [base.lr]):
                for seed in (seeds or [base.seed]):
                    for bf in (budget_fractions or [base.budget_fraction]):
                        cfg = dataclasses.replace(
                            base, optimizer=opt, precondition_frequency=f, lr=float(lr),
                            seed=int(seed), budget_fraction=float(bf), hparams=dict(hparams),
                        )
                        rid = run_id(cfg)
                        if rid not in seen:
                            seen.add(rid)
                            out.append(cfg)
    return out


def parse_shard(spec: str) -> Tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N`` (0-based, as SLURM_ARRAY_TASK_ID=0..N-1)."""
    try:
        i_s, n_s = str(spec).split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"bad shard spec {spec!r}: expected i/N with integers 0 <= i < N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"bad shard spec {spec!r}: expected i/N with 0 <= i < N (allowed i: 0..{max(n, 1) - 1})")
    return i, n


def shard(items: Sequence[Any], index: int, count: int) -> List[Any]:
    """Grid point ``k`` belongs to shard ``k % count``: the shards partition the grid, sizes differ by <= 1."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index must satisfy 0 <= index < count, got {index}/{count}")
    return list(items[index::count])


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def run_sweep(
    configs: Sequence[Any],
    train_fn: Optional[Callable[[Any], Any]] = None,
    skip_existing: bool = True,
    after_run: Optional[Callable[[Any, Any], None]] = None,
    log: Optional[Callable[[str], None]] = print,
) -> List[Dict[str, Any]]:
    """Train every config whose record does not exist yet; returns ``[{"run_id", "status", "path"}]``.

    ``status`` is ``"skipped"`` (record found) or ``"done"``. Exceptions propagate (the sweep stops; rerun
    it to resume). ``after_run(config, result)`` is called after each run that trained. Under torchrun
    (WORLD_SIZE > 1) rank 0 decides what to skip and tells the others, so all ranks train the same runs.
    """
    train_fn = train_fn or train_mod.train
    rank, _world, _local = init_distributed_for(configs[0] if configs else None)
    out: List[Dict[str, Any]] = []
    to_train = sum(1 for c in configs if not (skip_existing and has_record(c))) if log else 0
    trained, spent = 0, 0.0
    for n, cfg in enumerate(configs, 1):
        rid = run_id(cfg)
        path = record_path(cfg)
        skip = skip_existing and has_record(cfg)
        skip = broadcast_from_rank0(skip)
        if skip:
            if log and rank == 0:
                log(f"[{n}/{len(configs)}] skip {rid} (record exists)")
            out.append({"run_id": rid, "status": "skipped", "path": str(path)})
            continue
        if log and rank == 0:
            eta = (f"ETA {_duration(spent / trained * (to_train - trained))}" if trained
                   else "ETA after the first run")
            log(f"[{n}/{len(configs)}] run  {rid}  ({trained} of {to_train} to train done, {eta})")
        t0 = time.perf_counter()
        result = train_fn(cfg)
        trained, spent = trained + 1, spent + time.perf_counter() - t0
        out.append({"run_id": rid, "status": "done", "path": str(path)})
        if after_run is not None:
            after_run(cfg, result)
    return out
