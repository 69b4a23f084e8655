"""Batches of a token stream: :class:`BatchSampler` draws reproducible random windows (DDP-aware, resumable from
``(seed, step)``), :func:`eval_batches` the fixed validation windows every run is evaluated on.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["BatchSampler", "eval_batches"]


def _check_stream(tokens: torch.Tensor, seq_len: int) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
        raise ValueError("tokens must be a 1-D tensor")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if tokens.numel() < seq_len + 1:
        raise ValueError(f"token stream of {tokens.numel()} tokens is shorter than seq_len + 1 = {seq_len + 1}")


def _windows(tokens: torch.Tensor, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.from_numpy(starts.astype(np.int64))[:, None] + torch.arange(seq_len + 1)
    w = tokens[idx].long()
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


class BatchSampler:
    """Random contiguous windows of a token stream, reproducible and DDP-aware.

    Step ``t`` draws ``batch_size * world_size`` window starts uniformly from ``[0, len - seq_len - 1]``
    with ``numpy.random.default_rng([seed, t])`` — the *global* batch, the same on every rank — and rank
    ``r`` takes rows ``r*batch_size : (r+1)*batch_size`` of it. Hence N ranks at batch B/N together see
    exactly the batch a single process at batch B sees, and the state is just ``(seed, step)``.
    ``next()`` returns ``x, y`` of shape ``(batch_size, seq_len)`` with ``y`` = ``x`` shifted by one token.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        _check_stream(tokens, seq_len)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.tokens = tokens
        self.batch_size, self.seq_len = int(batch_size), int(seq_len)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.step = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def global_starts(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, self.tokens.numel() - self.seq_len, size=self.global_batch_size)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.global_starts(self.step)
        self.step += 1
        mine = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return _windows(self.tokens, mine, self.seq_len)

    __next__ = next

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {"seed": self.seed, "step": self.step, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "world_size": self.world_size, "num_tokens": int(self.tokens.numel())}

    def load_state_dict(self, sd: dict) -> None:
        """Resume at ``sd["step"]`` with ``sd["seed"]``. The global batch, sequence length and stream
        length must match (the rank count may change as long as the global batch is the same)."""
        gb = sd.get("batch_size", self.batch_size) * sd.get("world_size", self.world_size)
        if (gb, sd.get("seq_len", self.seq_len)) != (self.global_batch_size, self.seq_len):
            raise ValueError(f"sampler state is for global batch {gb} x seq {sd.get('seq_len')}, this sampler is "
                             f"{self.global_batch_size} x {self.seq_len}")
        if sd.get("num_tokens", self.tokens.numel()) != self.tokens.numel():
            raise ValueError("sampler state was saved for a token stream of a different length")
        self.seed, self.step = int(sd["seed"]), int(sd["step"])


def eval_batches(tokens: torch.Tensor, batch_size: int, seq_len: int, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` fixed validation batches: ``n_batches * batch_size`` windows whose starts are spread
    evenly over the whole stream (first window at 0, last ending at the stream's end); no randomness, so
    every run and every optimizer is evaluated on the same tokens."""
    _check_stream(tokens, seq_len)
    n = n_batches * batch_size
    if n < 1:
        raise ValueError("need n_batches * batch_size >= 1")
    last = tokens.numel() - seq_len - 1
    starts = np.floor(np.linspace(0, last, n)).astype(np.int64) if n > 1 else np.zeros(1, np.int64)
    x, y = _windows(tokens, starts, seq_len)
    return [(x[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size]) for i in range(n_batches)]
