"""ZeRO-1 for the lab's optimizers: torch's ``ZeroRedundancyOptimizer``, partitioned by SOAP's step cost.

Under data parallelism every rank holds the all-reduced gradient of every parameter. Without ZeRO each rank
also keeps the whole optimizer state and repeats every rotation and refresh. With ZeRO-1 each parameter
belongs to one rank: that rank keeps its state and steps it, then broadcasts the updated parameter to the
others (:class:`torch.distributed.optim.ZeroRedundancyOptimizer`, which runs any optimizer class on each
rank's share; nothing here talks to the process group itself).

What this module adds to torch's class (:class:`ZeroOptimizer`):

- the partition: torch packs parameters by entry count; ``balance="cost"`` (default) assigns them by the
  estimated step cost of :mod:`soap_lab.optim.cost` (one SOAP step costs ≈ m·n·(m+n) on an m×n matrix plus
  its refresh), for every parameter group;
- non-finite gradients: every rank checks *all* gradients (each holds them all), so every rank raises, or
  skips the step (``on_nonfinite="skip"``), together — no rank is left waiting in a broadcast;
- ``load_state_dict`` leaves the caller's dict untouched and keeps no second copy of the loaded state.

Checkpoints: :func:`consolidated_state_dict` gathers the full state on one rank in the format of the plain
optimizer (global parameter indices), so a single process loads it with ``load_state_dict``; a ZeroOptimizer
loads a single process's ``state_dict`` the same way (each rank takes its share).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer

from . import cost

__all__ = ["BALANCES", "ZeroOptimizer", "build_zero_optimizer", "consolidated_state_dict", "local_optimizer"]

#: Partitions: ``"cost"`` (:func:`soap_lab.optim.cost.balanced_partition`) or ``"numel"`` (torch's default).
BALANCES = ("cost", "numel")


def _require_process_group() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("ZeRO needs an initialized torch.distributed process group "
                         "(run under torchrun with more than one process)")


class ZeroOptimizer(ZeroRedundancyOptimizer):
    """``ZeroRedundancyOptimizer`` over ``optimizer_class`` with a cost-balanced partition.

    Args:
        params: parameters or parameter groups (all ranks pass the same, in the same order).
        optimizer_class: the optimizer each rank runs on its share (e.g. :class:`soap_lab.SOAP`).
        balance ("cost"): ``"cost"`` partitions by estimated step cost, ``"numel"`` keeps torch's partition.
        weights: the cost model's weights (:class:`soap_lab.optim.cost.CostWeights`).
        process_group: as torch's (default: the world).
        **defaults: the optimizer's keywords.

    Attributes:
        partition: per rank, the global indices (in ``param_groups`` order) of the parameters it steps.
        costs: the estimated :class:`~soap_lab.optim.cost.StepCost` of every parameter, in global order.
    """

    def __init__(self, params: Iterable[Any], optimizer_class: type, *, balance: str = "cost",
                 weights: cost.CostWeights = cost.CostWeights(), process_group: Any = None, **defaults: Any):
        if balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}, got {balance!r}")
        _require_process_group()
        self._balance = balance
        self._weights = weights
        self._optimizer_class = optimizer_class
        super().__init__(params, optimizer_class=optimizer_class, process_group=process_group, **defaults)
        index = self._param_to_index
        self.partition: List[List[int]] = [
            sorted(index[p] for g in groups for p in g["params"]) for groups in self._partition_parameters()
        ]
        self.costs: List[cost.StepCost] = self._estimate_costs()

    def _estimate_costs(self) -> List[cost.StepCost]:
        out = []
        for group in self.param_groups:
            hp = {k: v for k, v in group.items() if k != "params"}
            hp = {**self._optim_defaults, **hp}
            out += [cost.step_cost(self._optimizer_class, tuple(p.shape), hp, self._weights) for p in group["params"]]
        return out

    def _partition_parameters(self, params_per_rank: Optional[List[List[torch.Tensor]]] = None) -> List[List[dict]]:
        """torch's hook for the partition (computed once, then cached): the cost-balanced one, over all groups."""
        if self._balance == "numel" or params_per_rank is not None or self._partition_parameters_cache:
            return super()._partition_parameters(params_per_rank)
        params = [p for g in self.param_groups for p in g["params"]]
        costs = self._estimate_costs()
        keys = [(gi, tuple(p.shape), p.dtype) for gi, g in enumerate(self.param_groups) for p in g["params"]]
        parts = cost.balanced_partition(costs, self.world_size, keys, numels=[p.numel() for p in params])
        owner = {i: r for r, idx in enumerate(parts) for i in idx}
        self._partition_parameters_cache = [[] for _ in range(self.world_size)]
        start = 0
        for group in self.param_groups:
            per_rank: List[List[torch.Tensor]] = [[] for _ in range(self.world_size)]
            for i in range(start, start + len(group["params"])):
                per_rank[owner[i]].append(params[i])
            start += len(group["params"])
            self._partition_param_group(group, per_rank)
        return self._partition_parameters_cache

    def estimated_imbalance(self) -> float:
        """The partition's estimated step time over a perfect split's (:func:`soap_lab.optim.cost.imbalance`)."""
        return cost.imbalance(self.costs, self.partition)

    def step(self, closure: Any = None, **kwargs: Any) -> Any:
        """One step: this rank's share, then the broadcast of every share. Non-finite gradients are detected
        on all parameters by every rank, so all ranks raise or skip together (see the module docstring)."""
        with_grad = [(i, p) for i, p in enumerate(self._index_to_param) if p.grad is not None]
        policy = getattr(self.optim, "on_nonfinite", None)
        if closure is None and with_grad and policy in ("raise", "skip"):
            finite = self.optim._finite_flags([p.grad for _, p in with_grad])
            if not bool(finite.all()):
                if policy == "skip":
                    self.optim.skipped_steps += 1
                    return None
                i, p = with_grad[int((~finite).nonzero()[0, 0])]
                raise FloatingPointError(
                    f"{type(self.optim).__name__} under ZeRO: non-finite gradient (NaN or Inf) in parameter {i} "
                    f"(shape {tuple(p.shape)}, rank {self._param_to_rank[p]}'s share); optimizer state left "
                    f"untouched on every rank. Pass on_nonfinite='skip' to skip such steps instead.")
        return super().step(closure=closure, **kwargs)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a full state dict (a single process's, or :func:`consolidated_state_dict`'s): each rank keeps its
        parameters' state. The caller's dict is not modified."""
        super().load_state_dict({**state_dict, "state": dict(state_dict["state"])})
        self.state = defaultdict(dict)  # torch's wrapper also kept a copy of this rank's state; it is not read


def build_zero_optimizer(name: str, params: Iterable[Any], *, balance: str = "cost", **hparams: Any) -> ZeroOptimizer:
    """:func:`soap_lab.optim.build_optimizer`'s optimizer ``name`` under ZeRO-1 (needs a process group)."""
    from . import OPTIMIZERS, _registry

    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    cls, variant = _registry()[name]
    if getattr(cls, "takes_named_parameters", False):
        raise ValueError(f"optimizer {name!r} is a composite of two torch optimizers and has no ZeRO-1 form here; "
                         "run it without zero")
    return ZeroOptimizer(params, cls, balance=balance, **variant, **hparams)


def local_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds this rank's state: ZeRO's per-rank optimizer, or ``optimizer`` itself."""
    return optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer


def consolidated_state_dict(optimizer: torch.optim.Optimizer, to: int = 0) -> Optional[Dict[str, Any]]:
    """The full ``state_dict`` of ``optimizer``, loadable by a single process's optimizer of the same class.

    Under ZeRO this is a collective (call it on every rank); rank ``to`` gets the dict (on the CPU, a snapshot:
    no tensor in it is the live state), the others None. Any other optimizer returns its own ``state_dict()``.
    """
    if not isinstance(optimizer, ZeroRedundancyOptimizer):
        return optimizer.state_dict()
    optimizer.consolidate_state_dict(to=to)
    if optimizer.rank != to:
        return None
    sd = optimizer.state_dict()
    optimizer._all_state_dicts = []  # the gathered copy is the caller's now
    # On a CPU, torch's consolidation keeps this rank's own entries as the live state tensors (``.to(cpu)`` of a
    # CPU tensor is no copy), which later steps update in place: copy them, so the dict is a snapshot.
    return _snapshot(sd)


def _snapshot(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v) for v in value)
    return value
