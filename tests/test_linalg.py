"""soap_lab.optim.linalg: eigh's fallback chain (per matrix and on a stack), Cholesky-QR against Householder, syrk."""
import warnings

import pytest
import torch

from soap_lab import SOAP
from soap_lab.optim import linalg

from helpers import one_ulp, rel


def _eigh_agrees(lam, Q, lam_ref, Q_ref, P, rank, tol):
    """Compare two eigendecompositions of the symmetric P by what P determines: the eigenvalues (to tol·‖P‖),
    the projector onto the range (the eigenvectors of the nonzero eigenvalues, which are separated here) and the
    reconstruction; the null-space eigenvectors of a rank-deficient P are round-off's choice and are only
    required to be orthonormal."""
    scale = max(float(P.abs().max()), 1.0)
    assert float((lam - lam_ref).abs().max()) <= tol * scale
    assert float((Q.mT @ Q - torch.eye(Q.shape[-1], dtype=Q.dtype)).abs().max()) <= tol
    Ur, Vr = Q[:, :rank], Q_ref[:, :rank]
    assert float((Ur @ Ur.mT - Vr @ Vr.mT).abs().max()) <= tol
    assert float((Q @ torch.diag(lam) @ Q.mT - P).abs().max()) <= tol * scale

F64 = torch.float64

def _sign_aligned(Q, H):
    return H * torch.sign((Q * H).sum(-2, keepdim=True))

def _conditioned(n, cond, dtype, batch=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=F64)).Q
    W = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=F64)).Q
    s = torch.logspace(0, -torch.log10(torch.tensor(float(cond))).item(), n, dtype=F64)
    return ((U * s) @ W.mT).to(dtype)


def test_eigh_fallback_chain():
    # singular and all-zero factors: an orthonormal basis, no warning
    for P in (torch.zeros(5, 5), torch.ones(5, 5)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            q = linalg.eigh_descending(P)
        assert torch.allclose(q.T @ q, torch.eye(5), atol=1e-5)
    # a factor eigh cannot handle at all (NaN): identity, with a warning
    with pytest.warns(RuntimeWarning, match="identity"):
        q = linalg.eigh_descending(torch.full((4, 4), float("nan")))
    assert torch.equal(q, torch.eye(4))


def test_eigh_descending_on_a_stack_agrees_with_the_per_matrix_eigh():
    """One batched call vs one call per matrix. Not bit-equal in general (MKL's eigh depends on the matrix's
    address unless MKL_CBWR is set), so compared by what the inputs determine. Matrices: full rank with separated
    eigenvalues (9×9), rank 5 of 9 (range projector only), and all zero (any orthonormal basis)."""
    g = torch.Generator().manual_seed(46)
    U = torch.linalg.qr(torch.randn(4, 9, 9, generator=g, dtype=F64)).Q
    spectrum = torch.logspace(1, -1, 9, dtype=F64)
    P = U @ torch.diag_embed(spectrum.expand(4, 9)) @ U.mT
    P[1] = U[1, :, :5] @ torch.diag(spectrum[:5]) @ U[1, :, :5].mT  # rank 5 of 9
    P[2] = 0.0  # an all-zero factor is valid input
    ranks = [9, 5, 0, 9]
    lam, Q = linalg.eigh_descending(P, return_eigenvalues=True)
    assert bool((lam[:, :-1] >= lam[:, 1:]).all())
    tol = 1e-12
    for i in range(4):
        lam_i, Q_i = linalg.eigh_descending(P[i], return_eigenvalues=True)
        _eigh_agrees(lam[i], Q[i], lam_i, Q_i, P[i], ranks[i], tol)
        # well posed: a 1-ulp change of the matrix moves what is compared far less than tol
        lam_p, Q_p = linalg.eigh_descending(one_ulp(P[i], seed=i) if i != 2 else P[i], return_eigenvalues=True)
        _eigh_agrees(lam_p, Q_p, lam_i, Q_i, P[i], ranks[i], tol / 10)


def test_eigh_descending_on_a_stack_falls_back_per_matrix():
    """A matrix eigh cannot handle (NaN) goes through linalg.eigh_descending's fallback chain (the identity, with
    a warning); the others are still decomposed."""
    g = torch.Generator().manual_seed(47)
    U = torch.linalg.qr(torch.randn(3, 6, 6, generator=g, dtype=F64)).Q
    P = U @ torch.diag_embed(torch.logspace(1, -1, 6, dtype=F64).expand(3, 6)) @ U.mT
    P[1, 0, 0] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lam, Q = linalg.eigh_descending(P, return_eigenvalues=True)
    assert any("identity" in str(w.message) for w in caught)
    assert torch.equal(Q[1], torch.eye(6, dtype=F64))
    for i in (0, 2):
        lam_i, Q_i = linalg.eigh_descending(P[i], return_eigenvalues=True)
        _eigh_agrees(lam[i], Q[i], lam_i, Q_i, P[i], 6, 1e-12)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (F64, 1e-12)])
@pytest.mark.parametrize("n", [5, 48, 520])  # 520: the blocked Cholesky and syrk paths
def test_cholesky_qr_equals_householder_up_to_column_signs(n, dtype, atol):
    g = torch.Generator().manual_seed(n)
    X = (torch.randn(3, n, n, generator=g, dtype=F64) / n**0.5 + 2 * torch.eye(n, dtype=F64)).to(dtype)  # cond ≈ 3
    linalg.ORTHO_STATS.clear()
    Q = linalg.orthonormalize(X, "cholesky")
    H = linalg.orthonormalize(X, "householder")
    assert linalg.ORTHO_STATS["cholesky_fallback"] == 0 and linalg.ORTHO_STATS["householder"] == 3
    assert Q.dtype == dtype and Q.shape == X.shape
    assert float((Q - _sign_aligned(Q, H)).abs().max()) <= atol
    eye = torch.eye(n, dtype=dtype)
    assert float((Q.mT @ Q - eye).abs().max()) <= 10 * torch.finfo(dtype).eps * n**0.5
    # Gram-Schmidt order is kept: Qᵀ X is upper triangular with a positive diagonal
    R = Q.mT @ X
    assert float(R.tril(-1).abs().max()) <= atol * float(R.abs().max())
    assert bool((R.diagonal(dim1=-2, dim2=-1) > 0).all())
    # an unbatched matrix takes the same path
    assert float((linalg.orthonormalize(X[0], "cholesky") - Q[0]).abs().max()) <= atol


def test_cholesky_qr_falls_back_to_householder_when_it_loses_accuracy():
    # cond 1e6 in float32: Cholesky of XᵀX (cond 1e12 > 1/eps) breaks down or loses orthogonality.
    good = _conditioned(64, 10.0, torch.float32, seed=1)
    bad = _conditioned(64, 1e6, torch.float32, seed=2)
    zero = torch.zeros(64, 64)  # an all-zero factor times Q: no column to normalize
    X = torch.stack([good, bad, zero])
    linalg.ORTHO_STATS.clear()
    Q = linalg.orthonormalize(X, "cholesky")
    assert linalg.ORTHO_STATS["cholesky_fallback"] == 2
    assert linalg.ORTHO_STATS["cholesky_1"] + linalg.ORTHO_STATS["cholesky_2"] == 1
    assert torch.equal(Q[1], linalg.householder_q(bad)) and torch.equal(Q[2], linalg.householder_q(zero))
    # ...and the fallback is what Householder would have given; a plain (unchecked) Cholesky-QR would not be
    # orthonormal here
    Xs = bad / bad.norm(dim=0, keepdim=True)
    L, info = torch.linalg.cholesky_ex(Xs.T @ Xs)
    if int(info) == 0:
        naive = torch.linalg.solve_triangular(L.T, Xs, upper=True, left=False)
        assert float((naive.T @ naive - torch.eye(64)).abs().max()) > 1e-3


@pytest.mark.parametrize("mixed", [True, False])
def test_cholesky_qr2_second_pass_restores_orthogonality(mixed):
    """cond 300 in float32: one pass loses ~eps·cond² ≈ 1e-2 of orthogonality, the second pass (on all or on
    part of the batch) brings it back to Householder's level, with the same Q up to column signs."""
    hard = _conditioned(128, 300.0, torch.float32, batch=(2,), seed=6)
    X = torch.cat([_conditioned(128, 3.0, torch.float32, batch=(1,), seed=5), hard]) if mixed else hard
    linalg.ORTHO_STATS.clear()
    Q = linalg.orthonormalize(X, "cholesky")
    assert linalg.ORTHO_STATS["cholesky_2"] == 2 and linalg.ORTHO_STATS["cholesky_1"] == int(mixed)
    assert linalg.ORTHO_STATS["cholesky_fallback"] == 0
    H = linalg.householder_q(X)
    assert float((Q.mT @ Q - torch.eye(128)).abs().max()) <= 10 * torch.finfo(torch.float32).eps * 128**0.5
    assert float((Q - _sign_aligned(Q, H)).abs().max()) <= 300 * 2e-5  # the problem's own sensitivity, cond·eps


def test_cholesky_qr_in_float64_handles_what_float32_cannot():
    X = _conditioned(64, 1e6, F64, seed=3)
    linalg.ORTHO_STATS.clear()
    Q = linalg.orthonormalize(X, "cholesky")
    assert linalg.ORTHO_STATS["cholesky_fallback"] == 0
    H = linalg.householder_q(X)
    assert float((Q - _sign_aligned(Q, H)).abs().max()) <= 1e-8  # ~ cond · eps, the problem's own sensitivity


def test_orthonormalize_rejects_low_precision_and_unknown_methods():
    with pytest.raises(TypeError, match="float32 or float64"):
        linalg.orthonormalize(torch.randn(4, 4).to(torch.bfloat16), "cholesky")
    with pytest.raises(ValueError, match="orthonormalization"):
        linalg.orthonormalize(torch.randn(4, 4), "svd")
    with pytest.raises(ValueError, match="qr_method"):
        SOAP([torch.nn.Parameter(torch.zeros(2, 2))], qr_method="svd")


def test_orthonormalize_into_a_non_contiguous_out():
    X = _conditioned(32, 10.0, F64, batch=(2,), seed=4)
    out = torch.empty(2, 32, 32, dtype=F64).mT
    assert linalg.orthonormalize(X, "cholesky", out=out) is out
    assert torch.equal(out, linalg.orthonormalize(X, "cholesky"))


@pytest.mark.parametrize("n,k", [(7, 3), (600, 40), (1100, 30)])
def test_syrk_equals_the_full_product_and_is_symmetric(n, k):
    A = torch.randn(2, n, k, dtype=F64)
    C0 = torch.randn(2, n, n, dtype=F64)
    C0 = C0 + C0.mT
    C = linalg.syrk_(C0.clone(), A, 0.9, 0.1)
    assert rel(C, 0.9 * C0 + 0.1 * A @ A.mT) <= 1e-14
    assert rel(C, C.mT) <= 1e-15
    if n >= linalg.SYRK_BLOCK_MIN:
        h = n // 2
        assert torch.equal(C[:, :h, h:], C[:, h:, :h].mT)  # only the lower block was computed
    C2 = linalg.syrk_(C0[0].clone(), A[0], 0.9, 0.1)  # unbatched
    assert rel(C2, C[0]) <= 1e-14
    fresh = linalg.syrk_(torch.full((n, n), float("nan"), dtype=F64), A[0])  # beta=0 ignores the old content
    assert rel(fresh, A[0] @ A[0].T) <= 1e-14

