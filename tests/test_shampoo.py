"""Shampoo against an independent float64 computation with explicit matrix roots."""
import pytest
import torch

from soap_lab import Shampoo
from helpers import assert_well_posed, init_values, open_loop_grads, rel, run

F64 = torch.float64


def _matrix_power(P, e, eps):
    lam, U = torch.linalg.eigh(P)
    return U @ torch.diag((lam.clamp_min(0) + eps) ** (-e)) @ U.T


def _shampoo_reference(init, grads, lr, betas, eps, exponent, f, start, grafting, trace_scaling, geps=1e-8):
    b1, b2 = betas
    W = init.clone()
    m, n = W.shape
    L, R = torch.zeros(m, m, dtype=F64), torch.zeros(n, n, dtype=F64)
    M, V = torch.zeros_like(W), torch.zeros_like(W)
    Lr = Rr = None
    for t, G in enumerate(grads, start=1):
        L = b2 * L + (1 - b2) * G @ G.T
        R = b2 * R + (1 - b2) * G.T @ G
        M = b1 * M + (1 - b1) * G
        V = b2 * V + (1 - b2) * G * G
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        adam = (M / bc1) / ((V / bc2).sqrt() + geps)
        if t < start:
            W = W - lr * adam
            continue
        if (t - start) % f == 0:
            Lr, Rr = _matrix_power(L / bc2, exponent, eps), _matrix_power(R / bc2, exponent, eps)
            trace = torch.linalg.eigvalsh(L / bc2).clamp_min(0).sum()
        U = Lr @ (M / bc1) @ Rr
        if trace_scaling:
            U = U * trace.sqrt()
        if grafting:
            U = U * adam.norm() / U.norm()
        W = W - lr * U
    return W


@pytest.mark.parametrize("exponent,grafting,trace_scaling,f,start", [
    (0.25, "adam", False, 3, 3), (0.4, "adam", False, 1, 1), (0.5, None, True, 2, 1), (0.25, None, False, 4, 5)])
def test_matches_explicit_matrix_roots(exponent, grafting, trace_scaling, f, start):
    (W0,) = init_values([(7, 5)], seed=11)
    grads = [row[0] for row in open_loop_grads([(7, 5)], 20, seed=11)]
    make = lambda ps: Shampoo(ps, lr=1e-2, betas=(0.9, 0.95), eps=1e-4, exponent=exponent, grafting=grafting,  # noqa: E731
                              trace_scaling=trace_scaling, precondition_frequency=f, start_preconditioning_step=start)
    ours, _ = run(make, [W0], [[g] for g in grads])
    # L^-e is basis-invariant (a rank-deficient L's null space gets (0 + eps)^-e whatever its eigenvectors), so
    # the 7×7 factor of a 7×5 gradient is well posed here; the guard measures it
    assert_well_posed(make, [W0], [[g] for g in grads], 1e-10)
    ref = _shampoo_reference(W0, grads, 1e-2, (0.9, 0.95), 1e-4, exponent, f, start, grafting, trace_scaling)
    assert rel(ours[0], ref) <= 1e-10
    assert rel(ours[0], W0) > 1e-3


def test_roots_are_frozen_between_refreshes():
    p = torch.nn.Parameter(torch.randn(6, 4, dtype=F64))
    opt = Shampoo([p], precondition_frequency=5, start_preconditioning_step=1)
    seen = []
    for (g,) in open_loop_grads([(6, 4)], 12, seed=12):
        p.grad = g
        opt.step()
        seen.append([q.clone() for q in opt.state[p]["Q"]])
    changes = [t + 1 for t in range(1, 12) if not torch.equal(seen[t][0], seen[t - 1][0])]
    assert changes == [6, 11]


def test_grafting_gives_the_adam_norm_and_1d_params_get_adam():
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.zeros(6, 4, dtype=F64))
    b = torch.nn.Parameter(torch.zeros(4, dtype=F64))
    opt = Shampoo([W, b], lr=1.0, betas=(0.0, 0.0), eps=1e-12, start_preconditioning_step=1, grafting_eps=0.0)
    G, g = torch.randn(6, 4, dtype=F64), torch.randn(4, dtype=F64)
    W.grad, b.grad = G, g
    opt.step()
    # β = 0: Adam's direction is sign(G), so the grafted step has norm √(numel)
    assert abs(float(W.detach().norm()) - 24**0.5) < 1e-10
    assert torch.allclose(b.detach(), -torch.sign(g))


def test_parameters_without_preconditioned_dims_and_bad_options():
    p = torch.nn.Parameter(torch.zeros(5, 3))
    opt = Shampoo([p], max_precond_dim=0, start_preconditioning_step=1)
    p.grad = torch.ones(5, 3)
    opt.step()
    assert torch.isfinite(p).all() and float(p.detach().abs().min()) > 0
    with pytest.raises(ValueError, match="grafting"):
        Shampoo([p], grafting="sgd")
    with pytest.raises(ValueError, match="exponent"):
        Shampoo([p], exponent=0)
