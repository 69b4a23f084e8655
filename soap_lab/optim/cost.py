"""What one optimizer step costs per parameter, and a partition of parameters across ranks by that cost.

Under ZeRO-1 (:mod:`soap_lab.optim.zero`) each rank steps only its share of the parameters, and every step
ends with a broadcast of the updated parameters, so a step takes as long as the slowest rank's share. A
SOAP step on an m×n matrix costs ≈ 6·m·n·(m+n) matmul FLOPs (rotate the gradient in, the update back, update
both factors), plus a refresh every f steps (O(m³ + n³) plus the momentum's rotation): far from
proportional to the parameter count that torch's default partition balances. Here a step's cost is
estimated per parameter from its shape and the optimizer's config (:func:`config_of`; :mod:`.config`): its layout
options (:func:`soap_lab.optim.kron.make_layout`), ``precondition_frequency``, ``refresh``, ``momentum_space``,
``statistics`` and whether its rule keeps state in the basis (``rule().follows_basis``), in matmul FLOPs:

    state in the basis   step 6·N·s per rotated dimension of size s (N entries), (+4·N·s with momentum_space
    (SOAP, EigenAda.)    "original"; + 2·s³ with statistics="factors"); refresh every f steps: P·Q 2s³ +
                         orthonormalization QR·s³ (refresh="qr") or EIGH·s³ ("eigh"), and the momentum's
                         rotation into the new basis 4·N·s
    none (Shampoo)       step 6·N·s; refresh every f steps: eigh of each factor, EIGH·s³
    no config, no basis  elementwise only (AdamW, Muon, Adafactor, 1-D parameters of every optimizer)
    every optimizer      + ELEMENTWISE·N per step for the elementwise passes

The weights ``EIGH``, ``QR`` and ``ELEMENTWISE`` convert what is not a large matmul into matmul FLOPs; they were
measured on the lab's CPU with one thread (torch 2.13, against a 1024³ float32 matmul at 53 GFLOP/s): eigh
8.7–14.6·s³ for s = 1536…384, Householder QR 3.9–6.1·s³, an AdamW step 205 per entry. Only their ratios
matter, and only for parameters whose cost mixes kinds; on a GPU eigh is relatively slower still
(:class:`CostWeights` takes other values).

:func:`balanced_partition` assigns parameters greedily, most expensive first, to the rank that keeps the
estimated time of f synchronized steps (f − 1 ordinary steps and one refresh step, each as slow as its
slowest rank) lowest, then improves that by local search. Same-layout parameters stay together where balance
allows: each rank steps its share of a layout as one bucket, and a partition that gives whole layouts to ranks
wins over one that splits them when their estimated times are within 0.5%.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

from . import kron

__all__ = [
    "CostWeights",
    "StepCost",
    "config_of",
    "step_cost",
    "resolved_hparams",
    "balanced_partition",
    "numel_partition",
    "rank_loads",
    "imbalance",
    "BUCKET_TOLERANCE",
    "factor_refresh_flops",
    "factor_check_flops",
]


@dataclass(frozen=True)
class CostWeights:
    """Costs of the non-matmul parts, in matmul FLOPs (see the module docstring for where they come from)."""

    elementwise: float = 200.0
    """Per tensor entry per step: the elementwise passes of an Adam-like step."""
    eigh: float = 10.0
    """Per s³: a symmetric eigendecomposition with eigenvectors."""
    qr: float = 4.0
    """Per s³: the orthonormalization of a QR refresh (Householder or Cholesky-QR)."""


@dataclass(frozen=True)
class StepCost:
    """Estimated cost of one parameter's step: ``step`` every step, ``refresh`` more every ``every`` steps."""

    step: float
    refresh: float = 0.0
    every: int = 1

    @property
    def amortized(self) -> float:
        """Mean cost per step: ``step + refresh / every``."""
        return self.step + self.refresh / self.every


def resolved_hparams(optimizer_class: type, hparams: Mapping[str, Any]) -> Dict[str, Any]:
    """``hparams`` completed with the defaults of ``optimizer_class``'s constructor keywords."""
    out: Dict[str, Any] = {}
    try:
        params = inspect.signature(optimizer_class.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        params = {}
    for name, p in params.items():
        if p.default is not inspect.Parameter.empty:
            out[name] = p.default
    out.update(hparams)
    return out


def config_of(optimizer_class: type, hparams: Mapping[str, Any]) -> Optional[Any]:
    """The config (:mod:`.config`) ``optimizer_class`` builds from ``hparams`` (entries that are not its fields are
    ignored; its defaults fill the rest), or None for an optimizer without one (AdamW, Muon: elementwise)."""
    Config = getattr(optimizer_class, "Config", None)
    if Config is None:
        return None
    names = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in hparams.items() if k in names})


def step_cost(optimizer_class: type, shape: Sequence[int], hparams: Optional[Mapping[str, Any]] = None,
              weights: CostWeights = CostWeights()) -> StepCost:
    """Estimated cost of one step of ``optimizer_class`` (with keywords ``hparams``; its defaults fill the rest)
    on a parameter of ``shape``, in matmul FLOPs (see the module docstring for the model). Read off the optimizer's
    config: its layout options, ``precondition_frequency``, ``refresh``, ``momentum_space``, ``statistics``, and
    whether its rule keeps state in the basis (``config.rule().follows_basis``: SOAP's and EigenAdafactor's do,
    so a refresh sorts and carries; Shampoo's does not, and its step rotates the momentum, not the gradient)."""
    n = math.prod(int(s) for s in shape) if len(shape) else 1
    elementwise = weights.elementwise * n
    cfg = config_of(optimizer_class, hparams or {})
    if cfg is None:
        return StepCost(elementwise)
    layout = kron.make_layout(shape, max_precond_dim=cfg.max_precond_dim, merge_dims=cfg.merge_dims,
                              precondition_1d=cfg.precondition_1d, one_sided=cfg.one_sided)
    sizes = [s for s, p in zip(layout.shape, layout.precond) if p]
    if not sizes:  # no rotation: the optimizer's diagonal rule
        return StepCost(elementwise)
    follows = cfg.rule().follows_basis
    rotate = sum(2.0 * n * s for s in sizes)  # one rotation of an N-entry tensor along every rotated dimension
    cube = sum(float(s) ** 3 for s in sizes)
    step = elementwise + 3 * rotate  # rotate in, rotate back, factor update
    if follows and cfg.momentum_space == "original":
        step += 2 * rotate
    if getattr(cfg, "statistics", "running") == "factors":
        step += 2.0 * cube
    refresh = sum(factor_refresh_flops(s, n, cfg.refresh, follows, weights) for s in sizes)
    return StepCost(step, refresh, cfg.precondition_frequency)


def factor_refresh_flops(size: int, numel: int, method: str, carry: bool = True,
                         weights: CostWeights = CostWeights()) -> float:
    """Estimated cost of refreshing *one* factor (size s) of an N-entry tensor, the per-factor share of
    :func:`step_cost`'s ``refresh``: P·Q 2s³ (for the sort; skipped by an eigh refresh without ``carry``) + the
    orthonormalization QR·s³ (``method="qr"``) or EIGH·s³ (``"eigh"``) + the momentum's rotation into the new
    basis 4·N·s (``carry``). Shampoo's refresh is ``factor_refresh_flops(s, N, "eigh", carry=False)`` = EIGH·s³.
    Summed over a parameter's factors this is :func:`step_cost`'s refresh (tested); the refresh policies
    (:mod:`.refresh`) count it per factor refreshed."""
    s3 = float(size) ** 3
    if method == "eigh" and not carry:
        return weights.eigh * s3
    return 2.0 * s3 + (weights.qr if method == "qr" else weights.eigh) * s3 + 4.0 * numel * size


def factor_check_flops(size: int, direct: bool = False) -> float:
    """Estimated cost of the adaptive policy's staleness check of one factor of size s (:mod:`.refresh`): P·Q
    2s³ (reused by a QR refresh that follows), plus Qᵀ(P·Q) 2s³ when the off-diagonal mass is computed
    directly; the O(s²) reductions are left out."""
    return (4.0 if direct else 2.0) * float(size) ** 3


# ----------------------------------------------------------------------------------------------------------
# Partitions
# ----------------------------------------------------------------------------------------------------------
def _window(costs: Sequence[StepCost]) -> int:
    return max((c.every for c in costs if c.refresh > 0), default=1)


def rank_loads(costs: Sequence[StepCost], partition: Sequence[Sequence[int]]) -> List[Tuple[float, float]]:
    """Per rank: (cost of an ordinary step, cost of a refresh step) of the parameters ``partition[rank]``
    (indices into ``costs``); refreshes with other periods are scaled to the longest one."""
    F = _window(costs)
    return [(sum(costs[i].step for i in idx), sum(costs[i].step + costs[i].refresh * F / costs[i].every for i in idx))
            for idx in partition]


def _window_time(loads: Sequence[Tuple[float, float]], F: int) -> float:
    """Mean time per step over F synchronized steps (F − 1 ordinary, one refresh), each as slow as its slowest rank."""
    return ((F - 1) * max(o for o, _ in loads) + max(r for _, r in loads)) / F


def imbalance(costs: Sequence[StepCost], partition: Sequence[Sequence[int]]) -> float:
    """Estimated step time of ``partition`` over that of a perfect split (1.0 = perfectly balanced): mean time
    per step when every step waits for the slowest rank, over (total amortized cost) / (number of ranks)."""
    ideal = sum(c.amortized for c in costs) / len(partition)
    if ideal == 0:
        return 1.0
    return _window_time(rank_loads(costs, partition), _window(costs)) / ideal


#: Between partitions whose estimated step times are within this fraction of the best, the one with the fewest
#: (rank, layout) stacks wins: fewer, bigger stacks mean fewer kernels per step (see optim/stack.py), which
#: matters on a GPU; on the lab's CPU the difference was within run-to-run noise (benchmarks/README.md).
BUCKET_TOLERANCE = 0.005


def balanced_partition(costs: Sequence[StepCost], world_size: int, keys: Optional[Sequence[Hashable]] = None,
                       numels: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Indices of ``costs`` per rank, balancing the estimated step time (see the module docstring).

    Starts, each refined by local search (:func:`_refine`): two greedy ones — parameters one by one, and whole
    groups of equal ``keys`` (e.g. same layout) — most expensive first, each to the rank that minimizes the mean
    time per step over a refresh window (:func:`imbalance`'s numerator), ties to the rank with the least
    amortized load, then the lowest rank; and, given the parameters' entry counts ``numels``, torch's own
    partition (:func:`numel_partition`). The result is the refined start with the fewest (rank, key) buckets
    among those within :data:`BUCKET_TOLERANCE` of the best time. Deterministic: every rank computes the same.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    keys = list(keys) if keys is not None else list(range(len(costs)))
    if len(keys) != len(costs):
        raise ValueError(f"got {len(keys)} keys for {len(costs)} costs")
    F = _window(costs)
    first: Dict[Hashable, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    singles = [[i] for i in sorted(range(len(costs)), key=lambda i: (-costs[i].amortized, first[keys[i]], i))]
    groups: Dict[Hashable, List[int]] = {}
    for i in range(len(costs)):
        groups.setdefault(keys[i], []).append(i)
    whole = sorted(groups.values(), key=lambda g: (-sum(costs[i].amortized for i in g), g[0]))
    starts = [_greedy(costs, units, world_size, F) for units in (singles, whole)]
    if numels is not None:
        starts.append(numel_partition(numels, world_size))
    candidates = [_refine(costs, keys, start, F) for start in starts]
    times = [_window_time(rank_loads(costs, c), F) for c in candidates]
    best = min(times)
    buckets = [sum(len({keys[i] for i in p}) for p in c) for c in candidates]
    pick = min((buckets[j], times[j], j) for j in range(len(candidates)) if times[j] <= best * (1 + BUCKET_TOLERANCE))[2]
    return [sorted(p) for p in candidates[pick]]


def _greedy(costs: Sequence[StepCost], units: List[List[int]], world_size: int, F: int) -> List[List[int]]:
    """Each unit (a list of parameter indices, in the given order) to the rank that minimizes the window time."""
    loads = [[0.0, 0.0] for _ in range(world_size)]
    parts: List[List[int]] = [[] for _ in range(world_size)]
    for unit in units:
        add = (sum(costs[i].step for i in unit), sum(costs[i].step + costs[i].refresh * F / costs[i].every for i in unit))
        best, best_score = 0, None
        for r in range(world_size):
            trial = [(o + add[0], f + add[1]) if q == r else (o, f) for q, (o, f) in enumerate(loads)]
            score = (_window_time(trial, F), (loads[r][0] * (F - 1) + loads[r][1]) / F, r)
            if best_score is None or score < best_score:
                best, best_score = r, score
        loads[best][0] += add[0]
        loads[best][1] += add[1]
        parts[best].extend(unit)
    return parts


def _refine(costs: Sequence[StepCost], keys: Sequence[Hashable], parts: List[List[int]], F: int) -> List[List[int]]:
    """Local search after the greedy pass: move one parameter, or swap two of different keys, between two ranks
    while that lowers the mean time per step (then the spread of the amortized loads); parameters with equal
    keys are interchangeable, so it works on classes and stays small."""
    W = len(parts)
    classes: Dict[Hashable, Tuple[float, float]] = {}
    for i, k in enumerate(keys):
        c = costs[i]
        classes.setdefault(k, (c.step, c.step + c.refresh * F / c.every))
    members = [{k: [i for i in p if keys[i] == k] for k in classes} for p in parts]

    def score(loads):
        return _window_time(loads, F), sum(((o * (F - 1) + f) / F) ** 2 for o, f in loads)

    def loads_of():
        return [(sum(classes[k][0] * len(v) for k, v in m.items()), sum(classes[k][1] * len(v) for k, v in m.items()))
                for m in members]

    current = score(loads_of())
    for _ in range(10 * len(costs)):  # each accepted change strictly lowers the score; a cap all the same
        loads = loads_of()
        best = None
        for a in range(W):
            for b in range(W):
                if a == b:
                    continue
                for k in [k for k, v in members[a].items() if v]:
                    for l in [None] + [l for l, v in members[b].items() if v and l != k]:
                        trial = list(loads)
                        dk, dl = classes[k], classes[l] if l is not None else (0.0, 0.0)
                        trial[a] = (trial[a][0] - dk[0] + dl[0], trial[a][1] - dk[1] + dl[1])
                        trial[b] = (trial[b][0] + dk[0] - dl[0], trial[b][1] + dk[1] - dl[1])
                        s = score(trial)
                        if s < current and (best is None or s < best[0]):
                            best = (s, a, b, k, l)
        if best is None:
            break
        current, a, b, k, l = best
        members[b][k].append(members[a][k].pop())
        if l is not None:
            members[a][l].append(members[b][l].pop())
    return [sorted(i for v in m.values() for i in v) for m in members]


def numel_partition(numels: Sequence[int], world_size: int) -> List[List[int]]:
    """torch's ``ZeroRedundancyOptimizer`` default for one parameter group: largest first (stable), each to the
    rank with the fewest entries so far (the first such rank on ties)."""
    sizes = [0] * world_size
    parts: List[List[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(numels)), key=lambda i: -numels[i]):
        r = sizes.index(min(sizes))
        parts[r].append(i)
        sizes[r] += numels[i]
    return [sorted(p) for p in parts]
