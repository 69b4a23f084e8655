"""Second-moment estimates used inside a basis: Adam's full V and Adafactor's factored V̂.

Paper §2: Adafactor keeps, for an m×n matrix, the row statistics A = V·1 and column statistics C = Vᵀ·1 of
Adam's second moment V and uses the rank-1 estimate V̂ = A Cᵀ / (1ᵀA). Here the statistics are kept as
*means* (A/n and C/m), which gives the same V̂ and keeps magnitudes independent of the layer's size, and the
estimate is generalised to rank-k tensors: one statistic per dimension,
V̂ = Π_d r_d / mean(V)^(k-1), which is exact whenever V is a rank-1 outer product.

Both estimates are per-coordinate state of the basis they live in: when a basis is refreshed its slots are
permuted (:func:`soap_lab.optim.kron.refresh_bases`) and :func:`permute_` reorders this state to follow.
Every function takes a leading batch dimension with ``batched=True`` (a stack of same-shape layers; the
statistics and means stay per layer).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from . import kron

Tensor = torch.Tensor


def init(shape: Sequence[int], *, factored: bool, dtype: torch.dtype, device: torch.device) -> Dict[str, object]:
    """State for a tensor of ``shape``: ``{"exp_avg_sq": V}`` or ``{"exp_avg_sq_factors": [r_0, r_1, ...]}``.

    Tensors of rank < 2 are never factored (Adafactor's rule for 1-D parameters).
    """
    if factored and len(shape) >= 2:
        return {"exp_avg_sq_factors": [torch.zeros(s, dtype=dtype, device=device) for s in shape]}
    return {"exp_avg_sq": torch.zeros(tuple(shape), dtype=dtype, device=device)}


def update_(state: Dict[str, object], g: Tensor, beta2: float, *, batched: bool = False,
            work: Optional[Tensor] = None) -> None:
    """EMA of g⊙g with rate ``beta2``: the full V, or the mean of g² over all dimensions but d for each d
    (``work``, shaped like g, avoids a temporary)."""
    if "exp_avg_sq" in state:
        V: Tensor = state["exp_avg_sq"]  # type: ignore[assignment]
        V.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        return
    g2 = torch.mul(g, g, out=work)
    off = 1 if batched else 0
    dims = range(off, g.dim())
    for d, r in enumerate(state["exp_avg_sq_factors"]):  # type: ignore[arg-type]
        other = [e for e in dims if e != d + off]
        r.mul_(beta2).add_(g2.mean(dim=other), alpha=1.0 - beta2)


def estimate(state: Dict[str, object], *, batched: bool = False, out: Optional[Tensor] = None) -> Tensor:
    """The second-moment estimate the inner rule divides by: V itself, or Adafactor's V̂ (into ``out``)."""
    if "exp_avg_sq" in state:
        return state["exp_avg_sq"]  # type: ignore[return-value]
    factors: List[Tensor] = state["exp_avg_sq_factors"]  # type: ignore[assignment]
    return rank_one(factors, factors[0].mean(-1) if batched else factors[0].mean(), out=out)  # mean(V) = mean r_d


def rank_one(stats: Sequence[Tensor], total: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """Adafactor's estimate from per-dimension statistics: ``Π_d stats[d] / total^(k-1)`` (broadcast outer
    product). For a matrix with row sums A, column sums C and ``total = 1ᵀA`` this is A Cᵀ / 1ᵀA; means
    (with ``total`` the overall mean) give the same V̂. A zero ``total`` gives V̂ = 0, not NaN.

    Stacks: with ``stats[d]`` of shape (batch, n_d) and ``total`` of shape (batch,), one estimate per layer.
    ``out`` receives the result without a temporary for a matrix."""
    k = len(stats)
    lead = tuple(total.shape)
    col = lambda d: stats[d].reshape(lead + (1,) * d + (-1,) + (1,) * (k - d - 1))  # noqa: E731
    if out is not None and k == 2:
        v_hat = torch.mul(col(0), col(1), out=out)
    else:
        v_hat = col(0)
        for d in range(1, k):
            v_hat = v_hat * col(d)
    denom = total.pow(k - 1).clamp_min(torch.finfo(total.dtype).tiny).reshape(lead + (1,) * k)
    return v_hat.div_(denom) if v_hat is out else v_hat / denom


def permute_(state: Dict[str, object], perms: Sequence[Optional[Tensor]], work: Optional[Tensor] = None) -> None:
    """Follow a basis refresh: reorder the per-coordinate statistics along each permuted dimension (batched
    when the permutations are (batch, n_d)); :func:`.kron.permute_state_` on these entries."""
    kron.permute_state_(state, ("exp_avg_sq", "exp_avg_sq_factors"), perms, work=work)
