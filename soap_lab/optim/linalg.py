"""The dense linear algebra under the eigenbasis machinery: symmetric rank-k updates, eigendecompositions with a
fallback chain, and the orthonormalization (QR) of a refresh. Dtypes are explicit: everything runs in the dtype it
is given (float32 or float64; never bf16/fp16), except ``eigh``'s documented float64 fallback.

Paper map: Algorithm 4's ``qr(P Q)`` is :func:`orthonormalize`; the "eigh" refresh of Fig. 7 (right) and
Shampoo's inverse roots use :func:`eigh_descending`; the factor update L ← βL + (1−β)GGᵀ runs on :func:`syrk_`.
Every function accepts a leading batch dimension (a stack of same-shape matrices).
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Optional, Tuple

import torch

Tensor = torch.Tensor

__all__ = ["syrk_", "SYRK_BLOCK_MIN", "eigh_descending", "EIGH_JITTERS", "orthonormalize", "householder_q",
           "ORTHO_METHODS", "DEFAULT_ORTHO", "ORTHO_STATS", "CHOLESKY_QR_TOL"]


# ----------------------------------------------------------------------------------------------------------
# Symmetric rank-k update
# ----------------------------------------------------------------------------------------------------------
#: syrk_ splits a product into 2×2 blocks while its size is at least this (below, one GEMM is as fast;
#: the measurement is in benchmarks/README.md).
SYRK_BLOCK_MIN = 1024


def syrk_(C: Tensor, A: Tensor, beta: float = 0.0, alpha: float = 1.0, *, mirror: bool = True) -> Tensor:
    """``C ← β·C + α·A Aᵀ`` in place, for ``A`` n×k (or batched b×n×k); returns ``C``.

    The product is symmetric, so above :data:`SYRK_BLOCK_MIN` only its lower 2×2 blocks are computed
    (recursively: ``C11 ← A1A1ᵀ``, ``C22 ← A2A2ᵀ``, ``C21 ← A2A1ᵀ``) and ``C12`` is copied from ``C21ᵀ``: 3/4 of
    the GEMM FLOPs per level (a BLAS ``syrk``, which torch does not expose); the mirrored blocks are exact
    transposes, the diagonal blocks symmetric to round-off, as a single GEMM's result is.
    With ``beta=0`` the previous content of ``C`` is ignored (NaN included), as in BLAS. ``mirror=False``
    leaves the strictly-upper blocks undefined, for consumers that read the lower triangle only (Cholesky).
    """
    n = C.shape[-1]
    if n < SYRK_BLOCK_MIN:
        if C.dim() == 2:
            return C.addmm_(A, A.mT, beta=beta, alpha=alpha)
        return C.baddbmm_(A, A.mT, beta=beta, alpha=alpha)
    k = n // 2
    A1, A2 = A[..., :k, :], A[..., k:, :]
    syrk_(C[..., :k, :k], A1, beta, alpha, mirror=mirror)
    syrk_(C[..., k:, k:], A2, beta, alpha, mirror=mirror)
    C21 = C[..., k:, :k]
    if C.dim() == 2:
        C21.addmm_(A2, A1.mT, beta=beta, alpha=alpha)
    else:
        C21.baddbmm_(A2, A1.mT, beta=beta, alpha=alpha)
    if mirror:
        C[..., :k, k:].copy_(C21.mT)
    return C


# ----------------------------------------------------------------------------------------------------------
# Eigenbasis
# ----------------------------------------------------------------------------------------------------------
#: Relative jitter tried, in order, when eigh fails even in float64 (scaled by the factor's mean diagonal).
EIGH_JITTERS = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4)


def eigh_descending(P: Tensor, *, return_eigenvalues: bool = False):
    """Eigenvectors of the symmetric factor ``P``, columns sorted by decreasing eigenvalue (batched).

    Fallback chain (documented; never raises on a singular or all-zero factor):
      1. ``torch.linalg.eigh`` in P's dtype;
      2. the same in float64;
      3. float64 with diagonal jitter ``j·(mean diag(P) or 1)·I`` for ``j`` in :data:`EIGH_JITTERS`;
      4. the identity (with a warning) — the basis is then left unrotated for this refresh.
    Results are returned in P's dtype. An all-zero factor is a valid input (eigh returns an orthonormal basis).

    A stack (batch, n, n) takes one batched ``torch.linalg.eigh`` call (on CPU the same LAPACK routine per
    matrix; on a GPU one launch for the bucket); matrices whose result is not finite, or the whole stack if the
    call raises, go through the chain above one by one. The result equals one call per matrix up to round-off,
    not bit for bit: MKL's eigh depends on the matrix's memory alignment unless ``MKL_CBWR`` is set, and the
    eigenvectors of a repeated or zero eigenvalue (a rank-deficient factor's null space) are round-off's choice.
    """
    if P.dim() > 2:
        return _eigh_descending_stack(P, return_eigenvalues)
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


def _eigh_descending_stack(P: Tensor, return_eigenvalues: bool):
    Pb = P.reshape(-1, *P.shape[-2:])
    try:
        evals, evecs = torch.linalg.eigh(Pb)
        ok = torch.isfinite(evals).all(-1) & torch.isfinite(evecs).flatten(-2).all(-1)
        redo = (~ok).nonzero().flatten().tolist()
        evals, evecs = evals.flip(-1), evecs.flip(-1)
    except RuntimeError:  # LAPACK did not converge for some matrix
        evals, evecs = torch.empty_like(Pb[..., 0]), torch.empty_like(Pb)
        redo = range(Pb.shape[0])
    for i in redo:
        evals[i], evecs[i] = eigh_descending(Pb[i], return_eigenvalues=True)
    evals, evecs = evals.reshape(P.shape[:-1]), evecs.reshape(P.shape)
    return (evals, evecs) if return_eigenvalues else evecs


# ----------------------------------------------------------------------------------------------------------
# Orthonormalization (the QR of a refresh)
# ----------------------------------------------------------------------------------------------------------
ORTHO_METHODS = ("householder", "cholesky")

#: The one default orthonormalization (the optimizers' ``qr_method``, :func:`orthonormalize`, the refresh):
#: Cholesky-QR, measured the faster in a long run (benchmarks/README.md, "orthonormalize").
DEFAULT_ORTHO = "cholesky"

#: How each matrix was orthonormalized since import (diagnostics, e.g. for the benchmark): "householder"
#: (asked for), "cholesky_1" / "cholesky_2" (Cholesky-QR accepted after one / two passes),
#: "cholesky_fallback" (Cholesky-QR failed its checks; Householder used instead).
ORTHO_STATS: Counter = Counter()

#: Tolerance of the Cholesky-QR checks, in units of ``eps(dtype)·sqrt(n)``. A Householder Q measures about
#: 0.5 of these units (orthogonality probe, float32 and float64, n = 8 … 1536).
CHOLESKY_QR_TOL = 4.0

_PROBES: dict = {}


def householder_q(X: Tensor) -> Tensor:
    """Q of the Householder QR of ``X`` (batched), in X's dtype. Same bits as ``torch.linalg.qr(X).Q``
    without materializing R (``geqrf`` + ``householder_product``)."""
    a, tau = torch.geqrf(X)
    return torch.linalg.householder_product(a, tau)


def _probe(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A fixed n×4 random ±1 matrix (seeded, cached): the checks are deterministic."""
    key = (n, dtype, str(device))
    if key not in _PROBES:
        g = torch.Generator().manual_seed(n)
        _PROBES[key] = (torch.randint(0, 2, (n, 4), generator=g) * 2 - 1).to(dtype=dtype, device=device)
    return _PROBES[key]


def _cholesky_lower_(A: Tensor, base: int = 256) -> Tensor:
    """Cholesky factorization of SPD ``A`` (batched) in place: ``A`` becomes L (lower triangular, zeros above;
    only A's lower triangle is read). Returns a per-matrix failure flag.

    On CPU, recursive 2×2 blocking puts most of the work in GEMMs (LAPACK ``potrf`` is far below GEMM speed
    there for n ≳ 1000); on other devices the library routine is used directly.
    """
    n = A.shape[-1]
    if n <= base or A.device.type != "cpu":
        info = torch.empty(A.shape[:-2], dtype=torch.int32, device=A.device)
        torch.linalg.cholesky_ex(A, out=(A, info))  # in place (upper triangle zeroed)
        return info != 0
    k = n // 2
    bad1 = _cholesky_lower_(A[..., :k, :k], base)
    A[..., :k, k:] = 0.0
    A21 = A[..., k:, :k]
    A21.copy_(torch.linalg.solve_triangular(A[..., :k, :k], A21.mT, upper=False).mT)  # A21 L11⁻ᵀ
    syrk_(A[..., k:, k:], A21, 1.0, -1.0, mirror=False)  # Schur complement
    bad2 = _cholesky_lower_(A[..., k:, k:], base)
    return bad1 | bad2


def _gram_cholesky(X: Tensor, scale: bool, out: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """First half of a Cholesky-QR pass: ``L = chol(XsᵀXs)`` (lower; R = Lᵀ) for ``Xs = X·diag(s)``, written to
    ``out`` if given. Returns (L, failed flags, s); with ``scale=False``, s is None and Xs = X.

    ``s`` are the powers of two 2^-e that put each column norm of X in [1/2, 1) (zero columns get 1), read off
    the Gram matrix's diagonal: the Q of a QR is unchanged by positive column scaling, P·Q's ill-conditioning
    is mostly its column scales λ_i, and scaling by powers of two is exact, so the Gram matrix is formed from
    X once and scaled afterwards; Xs is never formed.
    """
    k = X.shape[-1]
    G = syrk_(X.new_empty(*X.shape[:-2], k, k) if out is None else out, X.mT, mirror=False)  # XᵀX, lower
    s = None
    if scale:
        _, e = torch.frexp(G.diagonal(dim1=-2, dim2=-1).sqrt())  # column norms of X
        s = torch.ldexp(torch.ones_like(X[..., 0, :]), -e)
        G.mul_(s.unsqueeze(-1)).mul_(s.unsqueeze(-2))
    return G, _cholesky_lower_(G), s


def _cholesky_solve_(Q: Tensor, X: Tensor, L: Tensor, bad: Tensor, s: Optional[Tensor]) -> Tensor:
    """Second half of a Cholesky-QR pass, into ``Q`` (which may be X itself): ``Q = Xs R⁻¹``, i.e.
    Qᵀ = L⁻¹ diag(s) Xᵀ = (diag(1/s) L)⁻¹ Xᵀ. ``L`` is overwritten by ``diag(1/s) L`` (so ``Lᵀ diag(s)`` is
    still R). Matrices whose Cholesky broke down get no solve and a NaN Q (the NaN-propagating checks of
    :func:`orthonormalize` reject them)."""
    if s is not None:
        L.div_(s.unsqueeze(-1))
    n_bad = int(bad.sum())
    if n_bad == 0:  # Qᵀ and Xᵀ are column-major views: the triangular solve runs in place, no copy
        torch.linalg.solve_triangular(L, X.mT, upper=False, out=Q.mT)
        return Q
    ok = (~bad).nonzero().squeeze(-1)
    if ok.numel():
        Q[ok] = torch.linalg.solve_triangular(L[ok], X[ok].mT, upper=False).mT
    Q[bad] = float("nan")
    return Q


def _checks(Q: Tensor, RV: Tensor, XV: Tensor, V: Tensor) -> Tuple[Tensor, Tensor]:
    """Per matrix, on 4 fixed random vectors V (O(n²), NaN-propagating, so a broken Q fails):
    the loss of orthogonality ‖(QᵀQ − I) V‖/‖V‖ and the residual ‖X V − Q (R V)‖/‖X V‖ (RV = R V, XV = X V)."""
    QW = Q @ torch.cat([V.expand(*RV.shape[:-2], *V.shape), RV], dim=-1)  # one pass over Q for both
    QV, QRV = QW.split(V.shape[-1], dim=-1)
    orth = torch.linalg.vector_norm(Q.mT @ QV - V, dim=(-2, -1)) / V.norm()
    resid = torch.linalg.vector_norm(XV - QRV, dim=(-2, -1)) / torch.linalg.vector_norm(XV, dim=(-2, -1))
    return orth, resid


def _rows(x: Tensor, idx: Tensor, count: int) -> Tensor:
    """``x[idx]`` without the copy when idx selects every matrix (in order)."""
    return x if idx.numel() == count else x[idx]


def orthonormalize(X: Tensor, method: str = DEFAULT_ORTHO, *, tol: Optional[float] = None,
                   out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    """Orthonormal Q of the QR factorization of ``X`` (n×k, k ≤ n; batched), in X's dtype.

    ``method="householder"``: LAPACK/cuSOLVER Householder QR (what the reference code calls).

    ``method="cholesky"``: Cholesky-QR, built from GEMMs, a Cholesky and a triangular solve. It squares the
    condition number, so it is guarded:

      1. the columns are scaled to norms in [1/2, 1) by exact powers of two (the Q of a QR does not change
         under positive column scaling, and P·Q's ill-conditioning is mostly its column scales λ_i);
      2. one pass ``L = chol(XᵀX)``, ``Q = X R⁻¹`` (R = Lᵀ); accepted if the Cholesky succeeded and both the
         loss of orthogonality ‖QᵀQ − I‖ and the residual ‖X − QR‖/‖X‖ (estimated on 4 fixed random vectors,
         O(n²)) are below ``tol`` (default :data:`CHOLESKY_QR_TOL`·eps·√n, about 8× what Householder achieves);
      3. otherwise a second pass on that Q (CholeskyQR2: orthogonal to working precision whenever the first
         pass's Cholesky succeeded, i.e. cond(X) ≲ eps^-½), checked again;
      4. matrices that still fail (cond(X) beyond ~eps^-½: numerically rank-deficient factors) get the
         Householder Q of the unscaled X, exactly as with ``method="householder"``.

    The result equals Householder's Q up to round-off and the signs of its columns (Cholesky-QR's R has a
    positive diagonal; LAPACK's need not). :data:`ORTHO_STATS` counts which way each matrix went.

    Buffers (optional, same numbers): ``out`` (shaped like X, not aliasing it) receives Q and is returned;
    ``work`` (k×k per matrix, not aliasing X or out) holds the Gram matrix and its Cholesky factor. X is not
    modified (the Householder fallback needs it).

    Which is faster depends on how far the basis is from the factor's; measured in ``benchmarks/README.md``.
    """
    if method not in ORTHO_METHODS:
        raise ValueError(f"orthonormalization must be one of {ORTHO_METHODS}, got {method!r}")
    if X.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"orthonormalize works in float32 or float64, got {X.dtype} (cast the factor first)")
    batch = X.shape[:-2]
    count = math.prod(batch)
    if method == "householder" or X.numel() == 0:
        ORTHO_STATS["householder"] += count
        Q = householder_q(X)
        return Q if out is None else out.copy_(Q)
    n = X.shape[-1]
    eps = torch.finfo(X.dtype).eps
    if tol is None:
        tol = CHOLESKY_QR_TOL * eps * math.sqrt(n)
    Xb = X.reshape(-1, *X.shape[-2:])
    direct = out is not None and out.is_contiguous()
    Q = out.view(Xb.shape) if direct else torch.empty_like(Xb)
    W = None if work is None else work.view(Xb.shape[0], n, n)
    L1, bad, s = _gram_cholesky(Xb, True, W)
    _cholesky_solve_(Q, Xb, L1, bad, s)  # L1 becomes diag(1/s) L1: R1 = L1ᵀ diag(s)
    V = _probe(n, X.dtype, X.device)
    sV = s.unsqueeze(-1) * V
    XV = Xb @ sV  # Xs V
    R1V = L1.mT @ sV
    orth, resid = _checks(Q, R1V, XV, V)
    ok1 = ~bad & (orth <= tol) & (resid <= tol)
    second = ~bad & ~ok1 & (resid <= tol) & (orth <= 0.5)  # a second pass will fix the orthogonality
    if bool(second.any()):
        j = second.nonzero().squeeze(-1)
        whole = j.numel() == count
        Qj = Q if whole else Q[j]
        L2, bad2, _ = _gram_cholesky(Qj, False, W if whole else None)
        _cholesky_solve_(Qj, Qj, L2, bad2, None)  # Q ← Q R2⁻¹ in place
        # R = R2 R1 (L = L1 L2): R V = R2 (R1 V), no n³ product needed for the check
        orth2, resid2 = _checks(Qj, L2.mT @ _rows(R1V, j, count), _rows(XV, j, count), V)
        if not whole:
            Q[j] = Qj
        second[j] = ~bad2 & (orth2 <= tol) & (resid2 <= tol)
    good = ok1 | second
    n_fallback = count - int(good.sum())
    if n_fallback:
        idx = (~good).nonzero().squeeze(-1)
        Q[idx] = householder_q(Xb[idx])
    ORTHO_STATS["cholesky_1"] += int(ok1.sum())
    ORTHO_STATS["cholesky_2"] += int(second.sum())
    ORTHO_STATS["cholesky_fallback"] += n_fallback
    if out is None:
        return Q.view(X.shape)
    return out if direct else out.copy_(Q.view(X.shape))
