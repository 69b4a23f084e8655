"""Claim 1 of the paper as plain functions (no optimizer state): Shampoo^½ = Adafactor in Shampoo's eigenbasis.

Paper §3 (after Morwani et al. 2024): with L = E[G Gᵀ], R = E[Gᵀ G] over gradient batches, the Kronecker
approximation of the second moment is Ĥ = L ⊗ R / Tr L, and Adagrad's Ĥ^-½ gives the *idealized Shampoo*
update √(Tr L)·L^-½ G R^-½. Rotating every gradient by the eigenvectors of L and R and running idealized
Adafactor there (row/column statistics of the rotated batch) gives A_i = λ_i, C_j = μ_j, 1ᵀA = Tr L, hence the
same update. Everything here runs in float64 (inputs are promoted) so the identity can be checked to ~1e-12.

The check is not vacuous: :func:`idealized_shampoo_update` with ``exponent=0.25`` or ``trace_scaling=False``,
and :func:`idealized_eigen_adafactor_update` in a *stale* basis (``basis=`` eigenvectors of older factors),
give visibly different updates (``tests/test_equivalence.py`` measures how different).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ..optim.linalg import eigh_descending

Tensor = torch.Tensor

__all__ = [
    "gradient_factors",
    "eigenbasis",
    "rotated_statistics",
    "idealized_shampoo_update",
    "idealized_eigen_adafactor_update",
    "relative_error",
]


def _f64(x: Tensor) -> Tensor:
    return x.to(torch.float64)


def gradient_factors(batch_grads: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """L = E[G Gᵀ] and R = E[Gᵀ G] over a batch of m×n gradients (float64)."""
    Gs = torch.stack([_f64(g) for g in batch_grads])
    return (Gs @ Gs.transpose(1, 2)).mean(0), (Gs.transpose(1, 2) @ Gs).mean(0)


def eigenbasis(L: Tensor, R: Tensor) -> Tuple[Tensor, Tensor]:
    """Eigenvectors Q_L, Q_R of the factors (columns by decreasing eigenvalue), via :func:`soap_lab.optim.linalg.eigh_descending`."""
    return eigh_descending(_f64(L)), eigh_descending(_f64(R))


def rotated_statistics(batch_grads: Sequence[Tensor], Q_L: Tensor, Q_R: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Adafactor's statistics of the rotated batch: row sums A, column sums C of V = E[G'⊙G'], and 1ᵀA.

    In the eigenbasis of L, R these are the eigenvalues: A = λ, C = μ, 1ᵀA = Tr L (the heart of Claim 1).
    """
    Gs = torch.stack([_f64(g) for g in batch_grads])
    rotated = Q_L.T @ Gs @ Q_R
    V = (rotated * rotated).mean(0)
    A = V.sum(1)
    return A, V.sum(0), A.sum()


def idealized_shampoo_update(
    G: Tensor, L: Tensor, R: Tensor, *, exponent: float = 0.5, trace_scaling: bool = True, eps: float = 0.0
) -> Tensor:
    """Idealized Shampoo: ``(Tr L)^½ · (L+εI)^-e G (R+εI)^-e`` (trace factor only with ``trace_scaling``).

    With e = ½ and the trace factor this is Ĥ^-½ g for Ĥ = L ⊗ R / Tr L (Claim 1's left-hand side).
    """
    G, L, R = _f64(G), _f64(L), _f64(R)
    lam, Q_L = eigh_descending(L, return_eigenvalues=True)
    mu, Q_R = eigh_descending(R, return_eigenvalues=True)
    L_root = Q_L @ torch.diag((lam.clamp_min(0) + eps).pow(-exponent)) @ Q_L.T
    R_root = Q_R @ torch.diag((mu.clamp_min(0) + eps).pow(-exponent)) @ Q_R.T
    update = L_root @ G @ R_root
    return update * torch.trace(L).sqrt() if trace_scaling else update


def idealized_eigen_adafactor_update(
    G: Tensor, batch_grads: Sequence[Tensor], *, basis: Optional[Tuple[Tensor, Tensor]] = None
) -> Tensor:
    """Idealized Adafactor in Shampoo's eigenbasis (Claim 1's right-hand side).

    Rotate by the eigenvectors of L = E[G Gᵀ], R = E[Gᵀ G] over ``batch_grads`` (or by a given, possibly
    stale, ``basis=(Q_L, Q_R)``), take Adafactor's statistics from the rotated batch, divide the rotated
    ``G`` by √V̂ with V̂ = A Cᵀ / 1ᵀA, rotate back.
    """
    if basis is None:
        basis = eigenbasis(*gradient_factors(batch_grads))
    Q_L, Q_R = (_f64(q) for q in basis)
    A, C, total = rotated_statistics(batch_grads, Q_L, Q_R)
    v_hat = torch.outer(A, C) / total
    return Q_L @ ((Q_L.T @ _f64(G) @ Q_R) / v_hat.sqrt()) @ Q_R.T


def relative_error(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / max(‖a‖, ‖b‖) in float64 (0 when both are 0)."""
    a, b = _f64(a.detach()), _f64(b.detach())
    denom = max(float(a.norm()), float(b.norm()))
    return 0.0 if denom == 0 else float((a - b).norm()) / denom
