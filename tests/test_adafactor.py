"""Adafactor and EigenAdafactor against independent float64 computations."""
import pytest
import torch

from soap_lab import Adafactor, EigenAdafactor, SOAP
from helpers import assert_well_posed, init_values, open_loop_grads, rel, run

F64 = torch.float64


def _adafactor_reference(init, grads, lr, betas, eps):
    """Keeps Adam's full V and derives V̂ = A Cᵀ / 1ᵀA from it (the factored EMAs are linear in V)."""
    b1, b2 = betas
    W, M, V = init.clone(), torch.zeros_like(init), torch.zeros_like(init)
    for t, G in enumerate(grads, start=1):
        M = b1 * M + (1 - b1) * G
        V = b2 * V + (1 - b2) * G * G
        A, C = V.sum(1), V.sum(0)
        v_hat = torch.outer(A, C) / A.sum()
        W = W - lr * (M / (1 - b1**t)) / ((v_hat / (1 - b2**t)).sqrt() + eps)
    return W


def test_adafactor_matches_factored_second_moment_formula():
    W0 = torch.randn(8, 5, dtype=F64)
    grads = [row[0] for row in open_loop_grads([(8, 5)], 20, seed=21)]
    ours, _ = run(lambda ps: Adafactor(ps, lr=1e-2, betas=(0.9, 0.95), eps=1e-8), [W0], [[g] for g in grads])
    ref = _adafactor_reference(W0, grads, 1e-2, (0.9, 0.95), 1e-8)
    assert rel(ours[0], ref) <= 1e-12


def test_adafactor_on_1d_params_is_adam():
    b0 = torch.randn(9, dtype=F64)
    grads = open_loop_grads([(9,)], 15, seed=22)
    ours, _ = run(lambda ps: Adafactor(ps, lr=1e-2, betas=(0.9, 0.95), eps=1e-8), [b0], grads)
    theirs, _ = run(lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.9, 0.95), eps=1e-8), [b0], grads)
    assert rel(ours[0], theirs[0]) <= 1e-12


def test_adafactor_factored_state_is_small_and_nd_tensors_work():
    p = torch.nn.Parameter(torch.randn(6, 5, 4))
    opt = Adafactor([p])
    for (g,) in open_loop_grads([(6, 5, 4)], 3, seed=23, dtype=torch.float32):
        p.grad = g
        opt.step()
    st = opt.state[p]
    assert [r.shape[0] for r in st["exp_avg_sq_factors"]] == [6, 5, 4] and "exp_avg_sq" not in st
    assert torch.isfinite(p).all()


def test_update_clipping_only_when_asked():
    p = torch.nn.Parameter(torch.zeros(4, 4, dtype=F64))
    opt = Adafactor([p], lr=1.0, betas=(0.0, 0.0), eps=0.0, clip_threshold=0.5)
    p.grad = torch.randn(4, 4, dtype=F64)
    opt.step()
    assert abs(float(p.detach().square().mean().sqrt()) - 0.5) < 1e-12


def test_eigen_adafactor_with_identity_basis_is_adafactor():
    shapes = [(6, 5), (4,)]
    init = [torch.randn(*s, dtype=F64) for s in shapes]
    grads = open_loop_grads(shapes, 15, seed=24)
    a, _ = run(lambda ps: Adafactor(ps, lr=1e-2), init, grads)
    b, _ = run(lambda ps: EigenAdafactor(ps, lr=1e-2, max_precond_dim=0, precondition_frequency=3,
                                         factor_update="before"), init, grads)
    assert max(rel(x, y) for x, y in zip(a, b)) <= 1e-12


def test_eigen_adafactor_frozen_basis_matches_independent_computation():
    """Algorithm 2 with the basis taken once (f larger than the run): eigenvectors of the factors after the
    first gradient, then Adafactor on the rotated gradients, rotated back — computed here by hand."""
    b1, b2, lr, eps = 0.9, 0.95, 1e-2, 1e-8
    (W0,) = init_values([(6, 6)], seed=25)  # square: both factors full rank, the basis is well defined
    grads = [row[0] for row in open_loop_grads([(6, 6)], 12, seed=25)]
    ours, _ = run(lambda ps: EigenAdafactor(ps, lr=lr, betas=(b1, b2), eps=eps, precondition_frequency=10**6,
                                            factor_update="before"),
                  [W0], [[g] for g in grads])
    G1 = grads[0]
    QL = torch.linalg.eigh((1 - b2) * G1 @ G1.T)[1].flip(1)
    QR = torch.linalg.eigh((1 - b2) * G1.T @ G1)[1].flip(1)
    rotated = [QL.T @ G @ QR for G in grads]
    ref = _adafactor_reference(torch.zeros_like(W0), rotated, lr, (b1, b2), eps)  # the update, in the basis
    assert rel(ours[0], W0 + QL @ ref @ QR.T) <= 1e-10
    assert rel(ours[0], W0) > 1e-3


@pytest.mark.parametrize("f", [1, 3])
def test_eigen_adafactor_with_soap_ordering_is_factorized_soap(f):
    """The two optimizers share the basis machinery and differ only in the inner rule: with SOAP's ordering
    and QR refresh, Adafactor-in-eigenbasis is SOAP(factorized=True). (ε is negligible here because the two
    place it differently: SOAP before bias correction, Adafactor after, like torch's Adam.)"""
    # well posed: square and short-side-only layers, a 3-D tensor, an unrotated vector (precondition_1d's
    # rank-1 first factor would let round-off pick the basis; it is tested by properties in test_soap.py)
    shapes = [(6, 6), (9, 5), (4, 3, 2), (5,)]
    init = init_values(shapes, seed=26)
    grads = open_loop_grads(shapes, 20, seed=26)
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-30, weight_decay=0.0, precondition_frequency=f, max_precond_dim=8)
    a, _ = run(lambda ps: SOAP(ps, factorized=True, **kw), init, grads)
    b, _ = run(lambda ps: EigenAdafactor(ps, refresh="qr", factor_update="after", **kw), init, grads)
    assert_well_posed(lambda ps: SOAP(ps, factorized=True, **kw), init, grads, 1e-12)
    assert max(rel(x, y) for x, y in zip(a, b)) <= 1e-12
    assert max(rel(x, y) for x, y in zip(a, init)) > 1e-3


def test_bad_statistics_option():
    with pytest.raises(ValueError, match="statistics"):
        EigenAdafactor([torch.nn.Parameter(torch.zeros(2, 2))], statistics="exact")


def test_eigen_adafactor_qr_method():
    shapes = [(8, 6), (7, 7), (5,)]  # max_precond_dim 7: the (8, 6) layer rotates its short side only
    init = init_values(shapes, seed=36)
    grads = open_loop_grads(shapes, 12, seed=36)
    kw = dict(lr=1e-2, precondition_frequency=2, refresh="qr", max_precond_dim=7, betas=(0.9, 0.95))
    a, _ = run(lambda ps: EigenAdafactor(ps, qr_method="cholesky", **kw), init, grads)
    b, _ = run(lambda ps: EigenAdafactor(ps, qr_method="householder", **kw), init, grads)
    assert_well_posed(lambda ps: EigenAdafactor(ps, qr_method="householder", **kw), init, grads, 1e-10)
    assert max(rel(x, y) for x, y in zip(a, b)) <= 1e-10
    assert max(rel(x, y) for x, y in zip(a, init)) > 1e-3

