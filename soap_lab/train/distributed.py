"""The process group of a run under ``torchrun`` (WORLD_SIZE > 1): joining it, each rank's device, and the
collectives the training loop and the sweep engine need. Outside torchrun every function is the one-process identity.

The group is joined on first use and kept for the whole process (a sweep trains many runs in one group); whoever
owns the process (``python -m soap_lab``, or a script run under torchrun) ends it with :func:`destroy_distributed`
once its work is done. Leaving it to the interpreter's exit is not safe: a gloo worker thread may still be
releasing its last collective (tensors with Python references) while the interpreter finalizes; the thread then
dies taking the GIL, inside a ``noexcept`` destructor, and the rank aborts ("terminate called without an active
exception", SIGABRT) after all its work is done, so torchrun reports the run failed. Ending the group helps only
if it really goes, with its worker threads: nothing may still hold it (see :func:`_join`).
"""
from __future__ import annotations

import gc
import os
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["resolve_device", "init_distributed", "init_distributed_for", "destroy_distributed", "broadcast_from_rank0",
           "any_rank"]


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
    process and kept (a sweep trains many runs in one group); :func:`destroy_distributed` ends it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        _join(backend="nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def _join(**kwargs: Any) -> None:
    """``dist.init_process_group(**kwargs)``, after importing the torch modules that would otherwise keep the group.

    ``torch.distributed.nn.functional`` (imported by DistributedDataParallel) and ``torch.distributed.optim``
    (ZeRO) bind the default group as a default argument of some of their functions when they are first imported.
    Imported while the group exists, they keep it, and its gloo worker threads, after ``destroy_process_group``
    until the interpreter's exit, which is what :func:`destroy_distributed` must avoid; imported before, they bind
    None. (``torch.distributed.optim`` takes seconds to import: once per rank, under torchrun only.)
    """
    import torch.distributed.nn.functional  # noqa: F401
    import torch.distributed.optim  # noqa: F401

    dist.init_process_group(**kwargs)


def init_distributed_for(config: Optional[Any]) -> Tuple[int, int, int]:
    """``init_distributed`` for the device type a ``TrainConfig`` (or None: ``auto``) will use."""
    spec = config.device if config is not None else "auto"
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    return init_distributed(torch.device(spec).type)


def destroy_distributed() -> bool:
    """End this process's process group, if it has one (True if it had). Call it when the process's collectives
    are over, on every rank (see the module docstring for why the interpreter's exit must not do it).

    Not on an error path: a rank that leaves a collective half done (an exception raised mid-step) could wait
    here for a peer; let such a process die instead, which ends its peers' collectives with an error.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    gc.collect()  # a DDP model or ZeRO optimizer of a finished run, left in a reference cycle, holds the group
    dist.destroy_process_group()  # the group's last reference: its gloo worker threads are joined here
    return True


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
