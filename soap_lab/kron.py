"""Kronecker factors and their eigenbasis: the machinery Shampoo, Adafactor-in-eigenbasis and SOAP share.

Paper: Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam", §2-§4 and Algorithms 3-4.

For a layer W (m×n) with gradient G, Shampoo keeps one factor per tensor dimension,
``GG[0] = L ≈ E[G Gᵀ]`` (m×m) and ``GG[1] = R ≈ E[Gᵀ G]`` (n×n), and the eigenbasis ``Q[d]`` of each factor.
The three optimizers of the lab differ only in what they do *inside* that basis:

    G' = project(G, Q)               # Q_Lᵀ G Q_R
    N' = inner_rule(G')              # Adam (SOAP), Adafactor (EigenAdafactor), (λ_i μ_j)^-e (Shampoo)
    N  = project_back(N', Q)         # Q_L N' Q_Rᵀ

Everything here works for tensors of any rank: dimension ``d`` of a tensor carries a factor
``GG[d]`` (n_d × n_d) and a basis ``Q[d]``, or ``None`` where the dimension is left in the identity basis
(it is larger than ``max_precond_dim``, it is a 1-D parameter without ``precondition_1d``, or it is the
larger side of a ``one_sided`` layer). State names ``GG`` and ``Q`` follow the reference ``soap.py``.

Linear-algebra dtypes are explicit: factors and bases are kept in the dtype the caller chooses
(``float32``, or ``float64`` for float64 parameters; never bf16/fp16); ``eigh`` falls back to float64 and then
to growing diagonal jitter (see :func:`eigh_descending`); QR runs in the factor's dtype.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

Tensor = torch.Tensor
Bases = List[Optional[Tensor]]

__all__ = [
    "KronLayout",
    "make_layout",
    "merged_shape",
    "init_factors",
    "update_factors_",
    "eigh_descending",
    "init_bases",
    "refresh_bases",
    "project",
    "project_back",
    "permute_",
    "state_dtype_for",
]


def state_dtype_for(param_dtype: torch.dtype) -> torch.dtype:
    """Dtype of optimizer state and linear algebra for a parameter dtype: float64 stays float64, everything
    else (float32, bf16, fp16) uses float32 — low-precision factors make eigh/QR meaningless."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------------------
# Which dimensions carry a factor
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KronLayout:
    """How a parameter's tensor is seen by the Kronecker machinery.

    Attributes:
        shape: the shape the factors act on (the parameter's shape, or its merged shape with ``merge_dims``;
            a 0-d parameter is seen as shape ``(1,)``).
        precond: one flag per dimension of ``shape``: True where the dimension has a factor ``GG[d]`` and a
            basis ``Q[d]``, False where it stays in the identity basis.
    """

    shape: Tuple[int, ...]
    precond: Tuple[bool, ...]

    @property
    def n_precond(self) -> int:
        """Number of preconditioned dimensions (0: the optimizer degenerates to its diagonal rule)."""
        return sum(self.precond)


def merged_shape(shape: Sequence[int], max_precond_dim: int) -> Tuple[int, ...]:
    """Merge consecutive dimensions, left to right, while their product stays ≤ ``max_precond_dim``.

    This is the reference ``merge_dims`` rule, kept as is for drop-in parity: a conv kernel (128, 64, 3, 3)
    with max 10000 becomes (8192, 9), (32, 16, 3, 3) becomes (4608,)
    and (4, 4, 4) with max 100 becomes (64,).
    """
    out: List[int] = []
    current = 1
    for size in shape:
        if current * size > max_precond_dim:
            if current > 1:
                out.append(current)
                current = size
            else:
                out.append(size)
                current = 1
        else:
            current *= size
    if current > 1 or not out:
        out.append(current)
    return tuple(out)


def make_layout(
    shape: Sequence[int],
    *,
    max_precond_dim: int = 10000,
    merge_dims: bool = False,
    precondition_1d: bool = False,
    one_sided: bool = False,
) -> KronLayout:
    """The layout rules of the reference SOAP, plus one-sided SOAP (paper §7).

    - 1-D parameters get a factor only with ``precondition_1d`` (and size ≤ ``max_precond_dim``);
      otherwise the optimizer runs its diagonal rule (AdamW for SOAP).
    - ``merge_dims`` merges dimensions of ≥2-D tensors (see :func:`merged_shape`).
    - A dimension larger than ``max_precond_dim`` gets the identity (e.g. the vocabulary side of embeddings);
      ``max_precond_dim=0`` therefore turns every rotation off.
    - ``one_sided`` keeps only the factor of the smallest preconditioned dimension (the first one on ties):
      memory 2·min(m,n)² instead of 2m² + 2n².
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return KronLayout((1,), (False,))
    if len(shape) == 1:
        return KronLayout(shape, (bool(precondition_1d and shape[0] <= max_precond_dim),))
    if merge_dims:
        shape = merged_shape(shape, max_precond_dim)
    precond = [s <= max_precond_dim for s in shape]
    if one_sided and sum(precond) > 1:
        keep = min((s, d) for d, s in enumerate(shape) if precond[d])[1]
        precond = [d == keep for d in range(len(shape))]
    return KronLayout(shape, tuple(precond))


# ----------------------------------------------------------------------------------------------------------
# Factors
# ----------------------------------------------------------------------------------------------------------
def init_factors(layout: KronLayout, *, dtype: torch.dtype, device: torch.device) -> Bases:
    """Zero factors ``GG[d]`` (n_d × n_d) for the preconditioned dimensions, ``None`` elsewhere."""
    return [torch.zeros(s, s, dtype=dtype, device=device) if p else None for s, p in zip(layout.shape, layout.precond)]


def _unfold(x: Tensor, d: int) -> Tensor:
    """Mode-d unfolding: dimension d first, all others flattened (n_d × prod(others))."""
    return x.movedim(d, 0).reshape(x.shape[d], -1)


def update_factors_(GG: Bases, g: Tensor, beta: float) -> None:
    """EMA update of the factors in place: ``GG[d] ← β·GG[d] + (1−β)·G_(d) G_(d)ᵀ``.

    ``G_(d)`` is the mode-d unfolding, so for a matrix ``GG[0] += G Gᵀ`` and ``GG[1] += Gᵀ G``.
    ``g`` must already be in the layout's shape and the factors' dtype.
    """
    for d, P in enumerate(GG):
        if P is None:
            continue
        flat = _unfold(g, d)
        P.lerp_(flat @ flat.T, 1.0 - beta)


# ----------------------------------------------------------------------------------------------------------
# Eigenbasis
# ----------------------------------------------------------------------------------------------------------
#: Relative jitter tried, in order, when eigh fails even in float64 (scaled by the factor's mean diagonal).
EIGH_JITTERS = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4)


def eigh_descending(P: Tensor, *, return_eigenvalues: bool = False):
    """Eigenvectors of the symmetric factor ``P``, columns sorted by decreasing eigenvalue.

    Fallback chain (documented; never raises on a singular or all-zero factor):
      1. ``torch.linalg.eigh`` in P's dtype;
      2. the same in float64;
      3. float64 with diagonal jitter ``j·(mean diag(P) or 1)·I`` for ``j`` in :data:`EIGH_JITTERS`;
      4. the identity (with a warning) — the basis is then left unrotated for this refresh.
    Results are returned in P's dtype. An all-zero factor is a valid input (eigh returns an orthonormal basis).
    """
    dtype = P.dtype
    attempts = [(P, 0.0)]
    if dtype != torch.float64:
        attempts.append((P.double(), 0.0))
    P64 = P.double()
    scale = float(P64.diagonal().abs().mean()) if P.numel() else 1.0
    scale = scale if math.isfinite(scale) and scale > 0 else 1.0
    eye = torch.eye(P.shape[0], dtype=torch.float64, device=P.device)
    attempts += [(P64 + (j * scale) * eye, j) for j in EIGH_JITTERS]
    for M, _ in attempts:
        try:
            evals, evecs = torch.linalg.eigh(M)
        except RuntimeError:  # LAPACK did not converge
            continue
        if not (torch.isfinite(evecs).all() and torch.isfinite(evals).all()):
            continue
        evals, evecs = evals.flip(0).to(dtype), evecs.flip(1).to(dtype)
        return (evals, evecs) if return_eigenvalues else evecs
    warnings.warn("eigh failed on a Kronecker factor even with jitter; keeping the identity basis", RuntimeWarning)
    eye = torch.eye(P.shape[0], dtype=dtype, device=P.device)
    return (P.diagonal().clone(), eye) if return_eigenvalues else eye


def init_bases(GG: Bases) -> Bases:
    """First basis from a full eigendecomposition of each factor (reference: at the first call)."""
    return [None if P is None else eigh_descending(P) for P in GG]


def refresh_bases(GG: Bases, Q: Bases, method: str = "qr") -> Tuple[Bases, List[Optional[Tensor]]]:
    """Refresh each basis; return the new bases and, per dimension, the permutation applied to its slots.

    The current basis columns are sorted by their estimated eigenvalues ``diag(Qᵀ P Q)`` (descending), and the
    caller must reorder its per-coordinate state (Adam's V, Adafactor's row/column statistics) along that
    dimension with the same permutation (:func:`permute_`), so that slot i keeps tracking the i-th direction.

    ``method="qr"`` (paper Algorithm 4): one power-iteration step ``Q ← qr(P Q[:, order]).Q``; the product
    ``P Q`` is computed once and reused for the eigenvalue estimate.
    ``method="eigh"``: a full eigendecomposition (paper Fig. 7 right); slot i is matched to the i-th largest
    eigenvalue, which is what the sort of the old basis lines up with.
    """
    if method not in ("qr", "eigh"):
        raise ValueError(f"refresh method must be 'qr' or 'eigh', got {method!r}")
    new_Q: Bases = []
    perms: List[Optional[Tensor]] = []
    for P, q in zip(GG, Q):
        if P is None:
            new_Q.append(None)
            perms.append(None)
            continue
        PQ = P @ q
        est_eig = (q * PQ).sum(0)  # diag(Qᵀ P Q)
        order = torch.argsort(est_eig, descending=True)
        if method == "qr":
            new_Q.append(torch.linalg.qr(PQ[:, order]).Q)
        else:
            new_Q.append(eigh_descending(P))
        perms.append(order)
    return new_Q, perms


def permute_(x: Tensor, perms: Sequence[Optional[Tensor]]) -> Tensor:
    """Reorder ``x`` (layout-shaped, per-coordinate state) along each dimension by ``perms[d]``, in place."""
    y = x
    for d, order in enumerate(perms):
        if order is not None:
            y = y.index_select(d, order)
    if y is not x:
        x.copy_(y)
    return x


# ----------------------------------------------------------------------------------------------------------
# Projections
# ----------------------------------------------------------------------------------------------------------
def _mode_product(x: Tensor, M: Tensor, d: int) -> Tensor:
    """``x ×_d Mᵀ``: new[..., j, ...] = Σ_i x[..., i, ...] M[i, j] along dimension d."""
    if x.dim() == 2:
        return M.T @ x if d == 0 else x @ M
    return (x.movedim(d, -1) @ M).movedim(-1, d)


def project(x: Tensor, Q: Bases) -> Tensor:
    """Rotate ``x`` into the eigenbasis: ``Q_Lᵀ X Q_R`` for a matrix, one mode product per dimension for nD."""
    for d, q in enumerate(Q):
        if q is not None:
            x = _mode_product(x, q, d)
    return x


def project_back(x: Tensor, Q: Bases) -> Tensor:
    """Rotate ``x`` back to the parameter's space: ``Q_L X' Q_Rᵀ`` (inverse of :func:`project`)."""
    for d, q in enumerate(Q):
        if q is not None:
            x = _mode_product(x, q.T, d)
    return x
