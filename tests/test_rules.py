"""soap_lab.optim.rules: the rules inside the basis, on their own (each is tested in its optimizer too), and rules
written here, in the test file, passed in to the engine as a reader would in a notebook cell."""
import math

import pytest
import torch

from soap_lab import SOAP
from soap_lab.optim import rules
from soap_lab.optim.config import BasisConfig
from soap_lab.optim.engine import EigenbasisOptimizer
from soap_lab.optim.kron import KronLayout
from soap_lab.optim.rules import Rule, Step
from soap_lab.optim.shampoo import ShampooConfig

from helpers import assert_well_posed, init_values, max_rel, open_loop_grads, resumes_bit_exactly, run

F64 = torch.float64


def _state(rule, shape=(4, 3), n=2):
    """A stack's state as a rule sees it: its entries (from its init) stacked, and the engine's."""
    layout = KronLayout(shape, (True,) * len(shape))
    entries = rule.init(layout, dtype=F64, device=torch.device("cpu"))
    stack = lambda x: None if x is None else torch.stack([x] * n)  # noqa: E731
    state = {k: stack(v) if isinstance(v, torch.Tensor) else [stack(x) for x in v] for k, v in entries.items()}
    return {**state, "exp_avg": torch.zeros(n, *shape, dtype=F64), "GG": [None] * len(shape), "Q": None}


def test_adam_eps_conventions_differ_only_by_where_eps_sits():
    """The reference puts ε on √V before bias correction; Adam/Adafactor after it. Same direction at ε = 0."""
    g = torch.randn(2, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = {}
    for conv in rules.EPS_CONVENTIONS:
        for eps in (0.0, 1e-3):
            rule = rules.Adam(conv)
            n, scale = rule.direction(Step(_state(rule), 3, BasisConfig(eps=eps, betas=(0.9, 0.99)), g, g, g=g))
            out[conv, eps] = n * scale
    assert float((out["reference", 0.0] - out["adam", 0.0]).abs().max()) <= 1e-14
    assert float((out["reference", 1e-3] - out["adam", 1e-3]).abs().max()) > 1e-6
    # and the reference's is Adam with ε_t = ε / √(1 − β2^t); an explicit ε (the grafting Adam's) wins over the config's
    eps_t = 1e-3 / math.sqrt(1 - 0.99**3)
    for rule, cfg in ((rules.Adam("adam"), BasisConfig(eps=eps_t, betas=(0.9, 0.99))),
                      (rules.Adam("adam", eps=eps_t), BasisConfig(eps=0.5, betas=(0.9, 0.99)))):
        n, _ = rule.direction(Step(_state(rule), 3, cfg, g, g, g=g))
        assert float((n - out["reference", 1e-3]).abs().max()) <= 1e-12


def test_shampoo_scale_has_no_step_where_a_factor_has_no_curvature_and_the_trace_factor():
    rule = rules.ShampooRoots(exponent=0.5, trace_scaling=True, grafting=None, grafting_eps=1e-8)
    state = _state(rule, shape=(3, 2), n=1)
    cfg = ShampooConfig(eps=0.0, correct_bias=False)
    lam, mu = torch.tensor([[4.0, 1.0, 0.0]], dtype=F64), torch.tensor([[9.0, 1.0]], dtype=F64)
    rule.new_basis(state, cfg, [lam, mu], t=1)
    like = torch.zeros(1, 3, 2, dtype=F64)
    scale = rule.scale(Step(state, 1, cfg, like, like, bases=[torch.eye(3)[None], torch.eye(2)[None]]))
    expected = torch.tensor([[1 / 6, 1 / 2], [1 / 3, 1.0], [0.0, 0.0]], dtype=F64) * math.sqrt(5.0)  # √Tr L = √5
    assert torch.allclose(scale[0], expected, rtol=1e-15, atol=0)


def test_step_rotates_the_gradient_only_when_read_and_hands_out_distinct_work_tensors():
    Q = [torch.linalg.qr(torch.randn(2, n, n, dtype=F64)).Q for n in (4, 3)]
    G = torch.randn(2, 4, 3, dtype=F64)
    free = [torch.empty_like(G) for _ in range(3)]
    step = Step({}, 1, BasisConfig(), G, G, bases=Q, free=list(free))
    assert step._g is None
    expected = Q[0].mT @ G @ Q[1]
    assert torch.allclose(step.g, expected, rtol=0, atol=1e-14) and step.g is free[0]
    a, b = step.scratch(), step.scratch()
    assert a is free[1] and b is free[2] and step.scratch() is not a  # then fresh tensors
    assert step.original().g is G and step.original().bases is None


# ----------------------------------------------------------------------------------------------------------
# Rules written here and passed in
# ----------------------------------------------------------------------------------------------------------
class AdamInBasis(Rule):
    """SOAP's rule, written plainly (allocating): V per coordinate of the basis, permuted by the engine at each
    refresh because it is per-coordinate state (the default); ε before bias correction, as the reference."""

    def init(self, layout, *, dtype, device):
        return {"v": torch.zeros(layout.shape, dtype=dtype, device=device)}

    def direction(self, step):
        beta1, beta2 = step.cfg.betas
        v = step.state["v"].mul_(beta2).addcmul_(step.g, step.g, value=1 - beta2)
        return step.m / (v.sqrt() + step.cfg.eps), math.sqrt(1 - beta2**step.t) / (1 - beta1**step.t)


class SignInBasis(Rule):
    """Sign descent inside the basis: no state, N' = sign(M')."""

    def direction(self, step):
        return step.m.sign()


SHAPES = [(6, 6), (6, 6), (9, 5), (7,), (3, 4, 2)]


@pytest.mark.parametrize("momentum_space", ["eigenbasis", "original"])
def test_a_rule_passed_in_is_stepped_refreshed_and_permuted_like_the_built_in_one(momentum_space):
    """AdamInBasis passed in gives SOAP's trajectory bit for bit (same arithmetic; its V follows every refresh)."""
    init = init_values(SHAPES, seed=3)
    grads = open_loop_grads(SHAPES, 12, seed=4)
    kw = dict(lr=1e-2, weight_decay=0.01, precondition_frequency=2, max_precond_dim=6, momentum_space=momentum_space)
    a, oa = run(lambda ps: SOAP(ps, **kw), init, grads)
    b, ob = run(lambda ps: EigenbasisOptimizer(ps, rule=AdamInBasis(), **kw), init, grads)
    assert max_rel(a, init) > 1e-3 and oa.refresh_stats()["refreshes"] > 0
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(oa.state[x]["exp_avg_sq"], ob.state[y]["v"]) for x, y in zip(a, b))
    params = [torch.nn.Parameter(x.float()) for x in init]
    n_buckets, same = resumes_bit_exactly(lambda ps: EigenbasisOptimizer(ps, rule=AdamInBasis(), **kw), params)
    assert n_buckets and same  # its state is in state_dict and comes back


def _sign_oracle(w0, grads, lr, betas, f, beta_factors):
    """Sign descent in SOAP's basis, readable: momentum in the original space, N = Q_L sign(Q_Lᵀ M Q_R) Q_Rᵀ (the
    signs of Q's columns cancel), first call factors and eigh only, refreshes by one power step + QR (Algorithm 4,
    no state to permute)."""
    W, M = w0.clone(), torch.zeros_like(w0)
    L, R = torch.zeros(w0.shape[0], w0.shape[0], dtype=F64), torch.zeros(w0.shape[1], w0.shape[1], dtype=F64)
    for call, G in enumerate(grads):
        if call:
            M = betas[0] * M + (1 - betas[0]) * G
            W = W - lr * (QL @ torch.sign(QL.T @ M @ QR) @ QR.T)
        L = beta_factors * L + (1 - beta_factors) * G @ G.T
        R = beta_factors * R + (1 - beta_factors) * G.T @ G
        if call == 0:
            QL, QR = torch.linalg.eigh(L).eigenvectors.flip(-1), torch.linalg.eigh(R).eigenvectors.flip(-1)
        elif call % f == 0:
            QL, QR = [torch.linalg.qr(P @ Q[:, torch.argsort(torch.diag(Q.T @ P @ Q), descending=True)]).Q
                      for P, Q in ((L, QL), (R, QR))]
    return W


def test_a_stateless_rule_passed_in_against_a_readable_oracle_float64():
    shapes = [(6, 6), (6, 6)]
    init = init_values(shapes, seed=5)
    grads = open_loop_grads(shapes, 11, seed=6)
    make = lambda ps: EigenbasisOptimizer(ps, rule=SignInBasis(), lr=1e-2, betas=(0.9, 0.95),  # noqa: E731
                                          precondition_frequency=3, momentum_space="original")
    got, opt = run(make, init, grads)
    expected = [_sign_oracle(w, [row[i] for row in grads], 1e-2, (0.9, 0.95), 3, 0.95) for i, w in enumerate(init)]
    assert opt.refresh_stats()["refreshes"] == 2 * 2 * 3  # 2 layers × 2 sides × refreshes at steps 3, 6, 9
    sensitivity = assert_well_posed(make, init, grads, 1e-10)
    assert max_rel(got, expected) <= 1e-10, (max_rel(got, expected), sensitivity)
    assert max_rel(got, init) > 1e-3


def test_a_rule_state_may_not_take_the_engines_names_and_options_go_one_way():
    class Clash(SignInBasis):
        def init(self, layout, *, dtype, device):
            return {"exp_avg": torch.zeros(layout.shape)}

    p = torch.nn.Parameter(torch.zeros(3, 3))
    p.grad = torch.ones(3, 3)
    with pytest.raises(ValueError, match="exp_avg"):
        EigenbasisOptimizer([p], rule=Clash()).step()
    with pytest.raises(TypeError, match="either as config or as keywords"):
        EigenbasisOptimizer([p], BasisConfig(), lr=1.0)
    assert EigenbasisOptimizer([p], rule=SignInBasis(), lr=0.5).param_groups[0]["lr"] == 0.5
