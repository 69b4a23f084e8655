"""The process group of a run under ``torchrun`` (WORLD_SIZE > 1): joining it, each rank's device, and the
collectives the training loop and the sweep engine need. Outside torchrun every function is the one-process identity.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["resolve_device", "init_distributed", "init_distributed_for", "broadcast_from_rank0", "any_rank"]


def resolve_device(spec: str, local_rank: int) -> torch.device:
    """The torch device of ``spec`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); under torchrun ``cuda`` is ``cuda:LOCAL_RANK``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        spec = f"cuda:{local_rank}"
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for but CUDA is not available; allowed here: auto, cpu")
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device_type: str = "cpu") -> Tuple[int, int, int]:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA).

    Returns ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` outside torchrun. The group is created once per
    process and kept (a sweep trains many runs in one group).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def init_distributed_for(config: Optional[Any]) -> Tuple[int, int, int]:
    """``init_distributed`` for the device type a ``TrainConfig`` (or None: ``auto``) will use."""
    spec = config.device if config is not None else "auto"
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    return init_distributed(torch.device(spec).type)


def broadcast_from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (identity outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, device: torch.device, world: int) -> bool:
    """True on every rank if it is True on any (a signal may reach the ranks at different steps)."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
