"""Kronecker factors and their eigenbasis: the machinery Shampoo, Adafactor-in-eigenbasis and SOAP share.

Paper: Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam", §2-§4 and Algorithms 2-4.

For a layer W (m×n) with gradient G, Shampoo keeps one factor per tensor dimension,
``GG[0] = L ≈ E[G Gᵀ]`` (m×m) and ``GG[1] = R ≈ E[Gᵀ G]`` (n×n), and the eigenbasis ``Q[d]`` of each factor.
The optimizers of the lab differ only in what they do *inside* that basis (:mod:`soap_lab.optim.rules`):

    G' = project(G, Q)                     Q_Lᵀ G Q_R
    N' = inner_rule(G')                    Adam (SOAP), Adafactor (EigenAdafactor), (λ_i μ_j)^-e (Shampoo)
    N  = project(N', Q, back=True)         Q_L N' Q_Rᵀ

Paper line → function:
    L ← βL + (1−β) G Gᵀ, R ← βR + (1−β) Gᵀ G      :func:`update_factors_`
    Q_L, Q_R ← eigenvectors of L, R (first call)   :func:`init_bases`
    Algorithm 4: sort by diag(Qᵀ P Q), Q ← qr(P Q)  :func:`refresh_bases` (and :func:`permute_` for the state
                                                    that follows the sorted slots)
    G' = Q_Lᵀ G Q_R and its inverse                :func:`project`

Tensors of any rank: dimension ``d`` carries a factor ``GG[d]`` (n_d × n_d) and a basis ``Q[d]``, or ``None``
where it stays in the identity basis (:func:`make_layout` decides which). State names ``GG`` and ``Q`` follow
the reference ``soap.py``. Every function takes an optional leading batch dimension (``batched=True`` where
the rank alone cannot tell): the optimizers step a *stack* of same-layout parameters with one call.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .linalg import DEFAULT_ORTHO, eigh_descending, orthonormalize, syrk_

Tensor = torch.Tensor
Bases = List[Optional[Tensor]]

__all__ = ["KronLayout", "make_layout", "merged_shape", "MERGE_WARN_DIM", "state_dtype_for", "init_factors",
           "update_factors_", "init_bases", "refresh_bases", "rotated_diagonal", "permute_", "permute_state_",
           "project", "project_back"]


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


#: ``merge_dims`` warns when merging creates a preconditioned dimension larger than this.
MERGE_WARN_DIM = 2048


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
    - ``merge_dims`` merges dimensions of ≥2-D tensors (see :func:`merged_shape`). It can build factors far
      larger than any of the tensor's own dimensions: the reference rule turns a 16×16×3×3 conv into one
      2304×2304 factor: each refresh then costs O(2304³) (QR or eigh of the factor) instead of O(16³) per
      factor without merging, and each step O(2304²); it warns above :data:`MERGE_WARN_DIM`.
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
        original, shape = shape, merged_shape(shape, max_precond_dim)
        big = max((s for s in shape if s <= max_precond_dim), default=0)
        if big > MERGE_WARN_DIM:
            warnings.warn(
                f"merge_dims turns a {original} parameter into {shape}: a {big}×{big} factor, O({big}³) per "
                f"refresh and per step's projections; lower max_precond_dim or set merge_dims=False",
                RuntimeWarning, stacklevel=2)
    precond = [s <= max_precond_dim for s in shape]
    if one_sided and sum(precond) > 1:
        keep = min((s, d) for d, s in enumerate(shape) if precond[d])[1]
        precond = [d == keep for d in range(len(shape))]
    return KronLayout(shape, tuple(precond))


# ----------------------------------------------------------------------------------------------------------
# Factors
# ----------------------------------------------------------------------------------------------------------
def init_factors(layout: KronLayout, *, dtype: torch.dtype, device: torch.device, batch: Tuple[int, ...] = ()) -> Bases:
    """Zero factors ``GG[d]`` (n_d × n_d, after an optional ``batch`` shape) where the layout preconditions,
    ``None`` elsewhere."""
    return [torch.zeros(*batch, s, s, dtype=dtype, device=device) if p else None
            for s, p in zip(layout.shape, layout.precond)]


def _unfold(x: Tensor, d: int, batched: bool) -> Tensor:
    """Mode-d unfolding: dimension d, then all others flattened (after the batch dimension, if any)."""
    if batched:
        if x.dim() == 3:  # a stack of matrices: G itself, or its transpose as a view
            return x if d == 0 else x.mT
        return x.movedim(d + 1, 1).reshape(x.shape[0], x.shape[d + 1], -1)
    if x.dim() == 2:
        return x if d == 0 else x.T
    return x.movedim(d, 0).reshape(x.shape[d], -1)


def update_factors_(GG: Bases, g: Tensor, beta: float, *, batched: bool = False) -> None:
    """EMA update of the factors in place: ``GG[d] ← β·GG[d] + (1−β)·G_(d) G_(d)ᵀ``.

    ``G_(d)`` is the mode-d unfolding, so for a matrix ``GG[0] += G Gᵀ`` and ``GG[1] += Gᵀ G``. ``g`` is in the
    layout's shape (after a batch dimension with ``batched``) and the factors' dtype. The product is
    accumulated in place by :func:`~soap_lab.optim.linalg.syrk_`. A 1-D parameter's factor is an outer product
    with no sum in it: it is formed and blended as the reference does (``lerp_``), which reproduces the
    reference's rounding bit for bit — that matters there because a rank-1 factor's null space, and so the basis
    eigh picks for it, is decided by round-off.
    """
    for d, P in enumerate(GG):
        if P is None:
            continue
        flat = _unfold(g, d, batched)
        if flat.shape[-1] == 1:
            P.lerp_(flat @ flat.mT, 1.0 - beta)
        else:
            syrk_(P, flat, beta, 1.0 - beta)


# ----------------------------------------------------------------------------------------------------------
# Eigenbasis
# ----------------------------------------------------------------------------------------------------------
def init_bases(GG: Bases) -> Tuple[Bases, Bases]:
    """First basis from a full eigendecomposition of each factor (reference: at the first call), and the
    eigenvalues (descending): ``(Q, evals)``."""
    eig = [None if P is None else eigh_descending(P, return_eigenvalues=True) for P in GG]
    return [None if e is None else e[1] for e in eig], [None if e is None else e[0] for e in eig]


def rotated_diagonal(q: Tensor, PQ: Tensor, work: Optional[Tensor] = None) -> Tensor:
    """``diag(Qᵀ P Q)`` from Q and the product P·Q (batched; ``work``, shaped like Q, avoids a temporary): the
    factor's eigenvalue estimates in basis Q (paper Algorithm 4's sort), and Adafactor's row/column statistics
    read off Shampoo's factors (EigenAdafactor's ``statistics="factors"``, Claim 1)."""
    return torch.mul(q, PQ, out=work).sum(-2)


def refresh_bases(
    GG: Bases, Q: Bases, method: str = "qr", qr_method: str = DEFAULT_ORTHO, *, follow: bool = True,
    out: Optional[Bases] = None, work: Optional[Callable[[Tensor, int], List[Tensor]]] = None,
    pq: Optional[Sequence[Optional[Tensor]]] = None,
) -> Tuple[Bases, List[Optional[Tensor]], Bases]:
    """Refresh each basis; return ``(new bases, permutations, eigenvalues)`` per dimension.

    The current basis columns are sorted by their estimated eigenvalues ``diag(Qᵀ P Q)`` (descending); the
    caller reorders its per-coordinate state (Adam's V, Adafactor's row/column statistics) along that
    dimension with the same permutation (:func:`permute_`), so that slot i keeps tracking the i-th direction.
    ``follow=False`` (state that nothing has to carry over, as Shampoo's) skips the sort with ``"eigh"``:
    the permutations are then None.

    ``method="qr"`` (paper Algorithm 4): one power-iteration step ``Q ← qr(P Q[:, order]).Q``; the product
    ``P Q`` is computed once and reused for the estimate; the eigenvalues returned are the sorted estimates.
    ``qr_method`` picks the orthonormalization (:func:`~soap_lab.optim.linalg.orthonormalize`; same Q up to
    round-off and column signs, which the optimizers' updates do not depend on).
    ``method="eigh"``: a full eigendecomposition (paper Fig. 7 right) and its eigenvalues; slot i is matched to
    the i-th largest eigenvalue, which is what the sort of the old basis lines up with.

    Batched: with a leading batch dimension each matrix is refreshed on its own; permutations are (batch, n_d).
    Buffers (optional; same numbers either way): ``out[d]`` receives the new basis in place and may be ``Q[d]``
    itself (read before it is written); ``work(like, 2)`` returns two scratch tensors shaped like ``GG[d]`` for
    P·Q, its sorted copy and the Gram matrix, so that a QR refresh allocates nothing of size n².
    ``pq[d]`` (optional): P·Q already computed (by the adaptive refresh policy's staleness check,
    :mod:`.refresh`) — used instead of computing it again; it must not alias ``out[d]`` or the work buffers.
    """
    if method not in ("qr", "eigh"):
        raise ValueError(f"refresh method must be 'qr' or 'eigh', got {method!r}")
    new_Q: Bases = []
    perms: List[Optional[Tensor]] = []
    evals: Bases = []
    for d, (P, q) in enumerate(zip(GG, Q)):
        if P is None:
            new_Q.append(None), perms.append(None), evals.append(None)
            continue
        target = None if out is None else out[d]
        order = None
        if method == "qr" or follow:
            A, B = work(P, 2) if work is not None else (torch.empty_like(P), torch.empty_like(P))
            PQ = torch.matmul(P, q, out=A) if pq is None or pq[d] is None else pq[d]
            est = rotated_diagonal(q, PQ, work=B)
            order = torch.argsort(est, dim=-1, descending=True, stable=True)
        if method == "qr":
            lam = torch.gather(est, -1, order)
            X = torch.gather(PQ, -1, order.unsqueeze(-2).expand_as(PQ), out=B)
            new = orthonormalize(X, qr_method, out=target, work=A)  # A (P·Q) is free once gathered
        else:
            lam, new = eigh_descending(P, return_eigenvalues=True)
            if target is not None:
                new = target.copy_(new)
        new_Q.append(new), perms.append(order), evals.append(lam)
    return new_Q, perms, evals


def permute_(x: Tensor, perms: Sequence[Optional[Tensor]], work: Optional[Tensor] = None) -> Tensor:
    """Reorder ``x`` (layout-shaped, per-coordinate state) along each dimension by ``perms[d]``, in place.

    Batched: with (batch, n_d) permutations, ``x`` is (batch, *layout) and matrix b follows ``perms[d][b]``.
    ``work`` (shaped like x, optional): scratch space; the gathers then alternate between it and x.
    """
    y = x
    for d, order in enumerate(perms):
        if order is None:
            continue
        dst = None if work is None else (work if y is x else x)
        if order.dim() == 1:
            y = torch.index_select(y, d, order, out=dst) if dst is not None else y.index_select(d, order)
        else:
            shape = [1] * y.dim()
            shape[0], shape[d + 1] = order.shape
            index = order.reshape(shape).expand(y.shape)
            y = torch.gather(y, d + 1, index, out=dst) if dst is not None else y.gather(d + 1, index)
    if y is not x:
        x.copy_(y)
    return x


def permute_state_(state: Dict[str, Any], names: Sequence[str], perms: Sequence[Optional[Tensor]],
                   work: Optional[Tensor] = None) -> None:
    """A rule's per-coordinate state after a refresh sorted the basis slots by ``perms`` ((batch, n_d) per
    dimension): tensors are permuted along every dimension (``work``, shaped like them, is scratch), lists of
    per-dimension vectors along their own."""
    for name in names:
        x = state.get(name)
        if isinstance(x, Tensor):
            permute_(x, perms, work=work)
        elif x is not None:
            for r, order in zip(x, perms):
                if r is not None and order is not None:
                    r.copy_(r.gather(-1, order))


# ----------------------------------------------------------------------------------------------------------
# Projections
# ----------------------------------------------------------------------------------------------------------
def project(x: Tensor, Q: Bases, *, back: bool = False, batched: bool = False, out: Optional[Tensor] = None,
            tmp: Optional[Tensor] = None) -> Tensor:
    """Rotate ``x`` into the eigenbasis, ``Q_Lᵀ X Q_R`` (one mode product per dimension for nD), or back with
    ``back`` (``Q_L X Q_Rᵀ``, the inverse).

    Batched (a stack of same-layout tensors, one basis per member): matrices and vectors take batched GEMMs
    written into ``out`` (``tmp`` holds a matrix's intermediate product; neither may alias ``x``; both shaped
    like x). Returns ``x`` itself when no dimension is rotated, else the result (``out`` where given).
    """
    if all(q is None for q in Q):
        return x
    off = 1 if batched else 0
    mm = torch.bmm if batched else torch.mm  # the same products as matmul, with less dispatch per call
    if x.dim() - off == 2:
        qL, qR = Q
        if qL is not None:
            x = mm(qL if back else qL.mT, x, out=tmp if qR is not None and out is not None else out)
        if qR is not None:
            x = mm(x, qR.mT if back else qR, out=out)
        return x
    if x.dim() - off == 1:
        y = mm(x.unsqueeze(-2), Q[0].mT if back else Q[0], out=None if out is None else out.unsqueeze(-2))
        return y.squeeze(-2)
    for d, q in enumerate(Q):
        if q is not None:  # x ×_d M: new[..., j, ...] = Σ_i x[..., i, ...] M[i, j] along dimension d
            M = q.mT if back else q
            if batched:
                M = M.reshape(M.shape[:1] + (1,) * (x.dim() - 3) + M.shape[1:])
            x = (x.movedim(d + off, -1) @ M).movedim(-1, d + off)
    return x if out is None else out.copy_(x)


def project_back(x: Tensor, Q: Bases, **kw) -> Tensor:
    """``project(x, Q, back=True)``: from the eigenbasis to the parameter's space."""
    return project(x, Q, back=True, **kw)
