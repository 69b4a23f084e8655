"""Checkpoints within a run: an interrupted run resumes where it stopped and ends with the record it would
have written without the interruption (bit for bit on CPU).

``train()`` writes ``<runs-root>/<experiment>/<run_id>.ckpt.pt`` every ``TrainConfig.checkpoint_every`` steps and
when the process receives SIGINT (Ctrl-C) or SIGTERM (a cluster's pre-emption), then stops with
:class:`RunInterrupted`. Running the same command again (same config, so the same run id) loads it and goes on;
the checkpoint is deleted once the run's record is written. A checkpoint holds what the rest of the run depends
on: the step, the model, the optimizer's ``state_dict`` (consolidated under ZeRO), the data position, the RNG
states and the metrics so far.

A second Ctrl-C while the checkpoint is being written interrupts at once (nothing is lost: the previous
checkpoint stays, files are replaced atomically). An unreadable checkpoint is set aside (renamed
``*.ckpt.pt.corrupt``) with a one-line warning, and the run starts over.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Optional

import torch

__all__ = ["RunInterrupted", "InterruptFlag", "checkpoint_path", "save", "load", "rng_state", "set_rng_state",
           "DEFAULT_EVERY"]

#: Steps between checkpoints when ``TrainConfig.checkpoint_every`` is None.
DEFAULT_EVERY = 100


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on SIGINT/SIGTERM after writing its checkpoint; the message says how to resume."""


def checkpoint_path(record_path: Path) -> Path:
    """Where the checkpoint of the run whose record goes to ``record_path`` lives (beside it)."""
    return record_path.with_name(record_path.stem + ".ckpt.pt")


class InterruptFlag:
    """Context manager: SIGINT/SIGTERM set a flag instead of killing the process (the training loop checks
    it once per step); a second signal raises KeyboardInterrupt at once. Outside the main thread (where
    handlers cannot be installed) it does nothing and the signals keep their usual effect."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self) -> "InterruptFlag":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old.clear()


def rng_state() -> Dict[str, Any]:
    """The RNG states a run can consume (torch's CPU generator, and CUDA's where present)."""
    state: Dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: Dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (a temporary file, then a rename): a kill mid-write leaves the
    previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(path: Path, run_id: str) -> Optional[Dict[str, Any]]:
    """The checkpoint at ``path`` if there is a usable one for ``run_id``, else None (an unreadable file or one
    of another run is renamed ``.corrupt`` with a one-line warning, so nothing is silently overwritten)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or state.get("run_id") != run_id:
            raise ValueError(f"holds run {state.get('run_id') if isinstance(state, dict) else '?'!r}, not {run_id!r}")
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is set aside the same way
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        print(f"soap_lab: warning: {path}: unusable checkpoint ({str(e).splitlines()[0][:200]}); "
              f"moved to {aside.name}, starting the run over", file=sys.stderr)
        return None
    return state
