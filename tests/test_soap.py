"""SOAP against independent computations: AdamW reduction, refresh semantics, pytorch-optimizer parity, numerics."""
import math

import pytest
import torch

from soap_lab import SOAP
from soap_lab.optim import kron, linalg
from helpers import assert_well_posed, init_values, max_rel, open_loop_grads, rel, run
from reference_soap import reference_soap

F64 = torch.float64


# --------------------------------------------------------------------------------------------------------
# SOAP = the paper's Algorithm 3, written out unbatched in tests/reference_soap.py (the oracle)
# --------------------------------------------------------------------------------------------------------
# Well posed: square layers, non-square ones rotated on their short side only (max_precond_dim 6), vectors.
ORACLE_SHAPES = [(6, 6), (6, 6), (9, 5), (5, 4), (7,), (7,)]
ORACLE_CASES = {
    "f3": dict(f=3),
    "f1-normalize": dict(f=1, normalize_grads=True),
    "betas-wd-shampoo-beta": dict(f=2, betas=(0.9, 0.99), weight_decay=0.1, shampoo_beta=0.9),
    "no-bias-correction": dict(f=4, correct_bias=False),
}
SOAP_OPTIONS = {
    "stacked": {}, "unstacked": dict(bucket=False), "paper-momentum": dict(momentum_space="original"),
    "householder": dict(qr_method="householder"),
}


@pytest.mark.parametrize("options", SOAP_OPTIONS.values(), ids=SOAP_OPTIONS.keys())
@pytest.mark.parametrize("case", ORACLE_CASES.values(), ids=ORACLE_CASES.keys())
def test_soap_equals_the_readable_algorithm_3_float64(case, options):
    init = init_values(ORACLE_SHAPES, seed=70)
    grads = open_loop_grads(ORACLE_SHAPES, 16, seed=71)
    hp = dict(lr=1e-2, max_precond_dim=6, **case)
    expected = reference_soap(init, grads, **hp)
    kw = {("precondition_frequency" if k == "f" else k): v for k, v in hp.items()}
    make = lambda ps: SOAP(ps, **kw, **options)  # noqa: E731
    got, _ = run(make, init, grads)
    assert max_rel(expected, init) > 1e-3
    sensitivity = assert_well_posed(make, init, grads, 1e-10)
    assert max_rel(got, expected) <= 1e-10, (max_rel(got, expected), sensitivity)


# --------------------------------------------------------------------------------------------------------
# SOAP with identity bases = Adam
# --------------------------------------------------------------------------------------------------------
SHAPES = [(6, 5), (7,), (3, 4, 2)]


def _adam_reference(init, grads, lr, betas, eps, weight_decay=0.0, eps_before_bias_correction=True,
                    decay_after=True):
    """Independent float64 Adam written out by hand, with both of SOAP's conventions switchable."""
    b1, b2 = betas
    ws = [x.clone() for x in init]
    ms = [torch.zeros_like(x) for x in init]
    vs = [torch.zeros_like(x) for x in init]
    for t, row in enumerate(grads, start=1):
        for w, m, v, g in zip(ws, ms, vs, row):
            if not decay_after:
                w.mul_(1 - lr * weight_decay)
            m.mul_(b1).add_((1 - b1) * g)
            v.mul_(b2).add_((1 - b2) * g * g)
            if eps_before_bias_correction:
                upd = (math.sqrt(1 - b2**t) / (1 - b1**t)) * m / (v.sqrt() + eps)
            else:
                upd = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
            w.sub_(lr * upd)
            if decay_after:
                w.mul_(1 - lr * weight_decay)
    return ws


def test_identity_bases_equal_torch_adam_from_second_call():
    init = [torch.randn(*s, dtype=F64) for s in SHAPES]
    grads = open_loop_grads(SHAPES, 30, seed=1)
    ours, _ = run(lambda ps: SOAP(ps, lr=1e-2, betas=(0.9, 0.99), eps=1e-30, weight_decay=0.0,
                                  max_precond_dim=0, precondition_frequency=3), init, grads)
    ref_params = [torch.nn.Parameter(x.clone()) for x in init]
    adam = torch.optim.Adam(ref_params, lr=1e-2, betas=(0.9, 0.99), eps=1e-30)
    for row in grads[1:]:  # SOAP's first call only initializes
        for p, g in zip(ref_params, row):
            p.grad = g.clone()
        adam.step()
    worst = max(rel(a, b) for a, b in zip(ours, ref_params))
    assert worst <= 1e-12, worst


def test_difference_1_eps_enters_before_bias_correction():
    init = [torch.randn(*s, dtype=F64) for s in SHAPES]
    grads = open_loop_grads(SHAPES, 12, seed=2, scale=1e-3)  # ε comparable to √V: the convention matters
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-3, weight_decay=0.0, max_precond_dim=0)
    ours, _ = run(lambda ps: SOAP(ps, **kw), init, grads)
    before = _adam_reference(init, grads[1:], 1e-2, (0.9, 0.99), 1e-3, eps_before_bias_correction=True)
    after = _adam_reference(init, grads[1:], 1e-2, (0.9, 0.99), 1e-3, eps_before_bias_correction=False)
    assert max(rel(a, b) for a, b in zip(ours, before)) <= 1e-12
    assert max(rel(a, b) for a, b in zip(ours, after)) > 1e-4  # torch's convention is measurably different
    # ...and torch's Adam with ε_t = ε/√(1−β2^t) would be exact; with the same ε it is not.
    ref_params = [torch.nn.Parameter(x.clone()) for x in init]
    adam = torch.optim.Adam(ref_params, lr=1e-2, betas=(0.9, 0.99), eps=1e-3)
    for row in grads[1:]:
        for p, g in zip(ref_params, row):
            p.grad = g.clone()
        adam.step()
    assert max(rel(a, b) for a, b in zip(ours, ref_params)) > 1e-4


def test_difference_2_weight_decay_after_the_update():
    init = [torch.randn(*s, dtype=F64) for s in SHAPES]
    grads = open_loop_grads(SHAPES, 12, seed=3)
    kw = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-30, weight_decay=0.5, max_precond_dim=0)
    ours, _ = run(lambda ps: SOAP(ps, **kw), init, grads)
    after = _adam_reference(init, grads[1:], 0.05, (0.9, 0.99), 1e-30, 0.5, decay_after=True)
    before = _adam_reference(init, grads[1:], 0.05, (0.9, 0.99), 1e-30, 0.5, decay_after=False)
    assert max(rel(a, b) for a, b in zip(ours, after)) <= 1e-12
    assert max(rel(a, b) for a, b in zip(ours, before)) > 1e-4
    # torch's AdamW decays first: equal to the "before" convention, not to SOAP.
    ref_params = [torch.nn.Parameter(x.clone()) for x in init]
    adamw = torch.optim.AdamW(ref_params, lr=0.05, betas=(0.9, 0.99), eps=1e-30, weight_decay=0.5)
    for row in grads[1:]:
        for p, g in zip(ref_params, row):
            p.grad = g.clone()
        adamw.step()
    assert max(rel(a, b) for a, b in zip(before, ref_params)) <= 1e-12
    assert max(rel(a, b) for a, b in zip(ours, ref_params)) > 1e-4


# --------------------------------------------------------------------------------------------------------
# Refresh semantics
# --------------------------------------------------------------------------------------------------------
def test_basis_changes_exactly_at_calls_f_plus_1_and_V_persists():
    f = 4
    p = torch.nn.Parameter(torch.randn(6, 5, dtype=F64))
    opt = SOAP([p], precondition_frequency=f)
    grads = open_loop_grads([(6, 5)], 14, seed=4)
    changed, prev_Q, prev_V = [], None, None
    for call, (g,) in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        st = opt.state[p]
        Q = [q.clone() for q in st["Q"]]
        if prev_Q is not None and any(not torch.equal(a, b) for a, b in zip(Q, prev_Q)):
            changed.append(call)
        # V is only ever decayed and accumulated (no reset) between refreshes
        V = st["exp_avg_sq"].clone()
        if prev_V is not None and call not in changed and call > 1:
            b2 = 0.95
            g_rot = kron.project(g, st["Q"])
            assert torch.allclose(V, b2 * prev_V + (1 - b2) * g_rot**2, rtol=1e-12, atol=0)
        prev_Q, prev_V = Q, V
    assert changed == [f + 1, 2 * f + 1, 3 * f + 1]






def test_momentum_in_eigenbasis_equals_paper_form_float64():
    # well posed: a square matrix, a tall one rotated on its short side, a 3-D tensor (every mode full rank)
    shapes = [(7, 7), (9, 5), (5,), (4, 3, 2)]
    init = init_values(shapes, seed=5)
    grads = open_loop_grads(shapes, 25, seed=5)
    kw = dict(lr=1e-2, precondition_frequency=3, max_precond_dim=8, betas=(0.9, 0.95))
    make = lambda space: lambda ps: SOAP(ps, momentum_space=space, **kw)  # noqa: E731
    a, _ = run(make("eigenbasis"), init, grads)
    b, _ = run(make("original"), init, grads)
    assert max_rel(a, init) > 1e-3
    assert_well_posed(make("original"), init, grads, 1e-12)
    assert max_rel(a, b) < 1e-12


@pytest.mark.parametrize("momentum_space", ["eigenbasis", "original"])
def test_precondition_1d_is_adam_in_the_first_basis_float64(momentum_space):
    """precondition_1d gives a vector a rank-1 first factor g gᵀ: its null-space eigenvectors are round-off's
    choice, so no trajectory is comparable across machines. Tested by what the inputs determine instead: the
    basis is orthonormal, its first column is ±g/‖g‖ (the only nonzero eigenvalue, ‖g‖²), and until the first
    refresh the run is exactly Adam on the gradients rotated into *that* basis (an independent computation fed
    the optimizer's own first basis)."""
    n, steps = 6, 9
    init = init_values([(n,)], seed=8)
    grads = open_loop_grads([(n,)], steps, seed=8)
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-30, weight_decay=0.0, precondition_1d=True,
              precondition_frequency=steps + 5, momentum_space=momentum_space)
    ours, opt = run(lambda ps: SOAP(ps, **kw), init, grads)
    (Q,) = opt.state[ours[0]]["Q"]
    g1 = grads[0][0]
    assert float((Q.T @ Q - torch.eye(n, dtype=F64)).abs().max()) < 1e-13
    assert abs(abs(float(Q[:, 0] @ g1)) - float(g1.norm())) < 1e-13 * float(g1.norm())
    (rotated,) = _adam_reference([Q.T @ init[0]], [[Q.T @ row[0]] for row in grads[1:]], 1e-2, (0.9, 0.95), 1e-30)
    assert rel(ours[0], Q @ rotated) <= 1e-12
    # not vacuous: plain Adam (identity basis) ends elsewhere
    (plain,) = _adam_reference(init, grads[1:], 1e-2, (0.9, 0.95), 1e-30)
    assert rel(ours[0], plain) > 1e-3


@pytest.mark.parametrize("refresh", ["qr", "eigh"])
def test_refresh_methods_track_the_eigenbasis(refresh):
    """With a stationary gradient distribution both refreshes converge to the factors' eigenbasis."""
    p = torch.nn.Parameter(torch.zeros(6, 4, dtype=F64))
    opt = SOAP([p], precondition_frequency=2, refresh=refresh)
    for (g,) in open_loop_grads([(6, 4)], 60, seed=6):
        p.grad = g
        opt.step()
    st = opt.state[p]
    for P, q in zip(st["GG"], st["Q"]):
        off = q.T @ P @ q
        assert float(off.diagonal().square().sum() / off.square().sum()) > 0.99


# --------------------------------------------------------------------------------------------------------
# Parity with an independent implementation (pytorch-optimizer's SOAP, a port of the reference)
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shapes,max_dim",
    [([(12, 12), (9, 9)], 10000), ([(24, 6)], 10), ([(6, 24)], 10)],
    ids=["square", "one-sided-tall", "one-sided-wide"],
)
def test_parity_with_pytorch_optimizer(shapes, max_dim):
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    init = init_values(shapes, seed=7, dtype=torch.float32)
    grads = open_loop_grads(shapes, 50, seed=7, dtype=torch.float32)
    kw = dict(lr=3e-3, betas=(0.95, 0.95), weight_decay=0.01, precondition_frequency=5)
    ours, _ = run(lambda ps: SOAP(ps, max_precond_dim=max_dim, **kw), init, grads)
    # well posed (every rotated factor full rank with a separated spectrum): a 1-ulp change moves far less than 1e-4
    assert_well_posed(lambda ps: SOAP(ps, max_precond_dim=max_dim, **kw), init, grads, 1e-4)
    # pytorch-optimizer spells max_precond_dim and normalize_grads differently and ignores unknown keywords.
    theirs, topt = run(lambda ps: pytorch_optimizer.SOAP(ps, max_precondition_dim=max_dim, **kw), init, grads)
    st = topt.state[theirs[0]]
    assert sum(len(q) > 0 for q in st["Q"]) == (2 if max_dim > 100 else 1)  # the keyword really took effect
    worst = max(rel(a, b) for a, b in zip(ours, theirs))
    assert worst <= 1e-4, worst
    moved = max(rel(a, x) for a, x in zip(ours, init))
    assert moved > 1e-2


# --------------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------------
def _state_numel(opt):
    n = 0
    for st in opt.state.values():
        for v in st.values():
            items = v if isinstance(v, list) else [v]
            n += sum(x.numel() for x in items if isinstance(x, torch.Tensor))
    return n


def test_variant_state_sizes_match_the_paper():
    m, n = 12, 8
    sizes = {}
    for name, kw in {"soap": {}, "factorized": {"factorized": True}, "one_sided": {"one_sided": True},
                     "both": {"factorized": True, "one_sided": True}}.items():
        p = torch.nn.Parameter(torch.zeros(m, n))
        opt = SOAP([p], **kw)
        p.grad = torch.randn(m, n)
        opt.step()
        sizes[name] = _state_numel(opt)
    # beyond the weights and gradient: SOAP 2m²+2n²+2mn, factorized 2m²+2n²+mn+m+n, one-sided 2n²+2mn, both 2n²+mn+m+n
    assert sizes["soap"] == 2 * m * m + 2 * n * n + 2 * m * n
    assert sizes["factorized"] == 2 * m * m + 2 * n * n + m * n + m + n
    assert sizes["one_sided"] == 2 * n * n + 2 * m * n
    assert sizes["both"] == 2 * n * n + m * n + m + n
    assert sizes["both"] < 3 * m * n + 2 * n * n


def test_one_sided_rotates_only_the_smaller_side():
    assert kron.make_layout((12, 8), one_sided=True).precond == (False, True)
    assert kron.make_layout((8, 12), one_sided=True).precond == (True, False)
    assert kron.make_layout((5, 9, 4), one_sided=True).precond == (False, False, True)
    assert kron.make_layout((20000, 8), one_sided=True).precond == (False, True)


def test_factorized_soap_with_rank_one_second_moment_equals_soap():
    """If every rotated gradient has rank-1 magnitudes (|G'| = a bᵀ), V is rank-1 and Adafactor's V̂ = V."""
    m, n = 5, 4
    a, b = torch.rand(m, dtype=F64) + 0.5, torch.rand(n, dtype=F64) + 0.5
    grads = [[torch.outer(a, b) * torch.sign(torch.randn(m, n, dtype=F64))] for _ in range(12)]
    init = [torch.zeros(m, n, dtype=F64)]
    kw = dict(lr=1e-2, max_precond_dim=0, eps=1e-30)
    x, _ = run(lambda ps: SOAP(ps, **kw), init, grads)
    y, _ = run(lambda ps: SOAP(ps, factorized=True, **kw), init, grads)
    assert rel(x[0], y[0]) < 1e-12


# --------------------------------------------------------------------------------------------------------
# Layout rules
# --------------------------------------------------------------------------------------------------------




@pytest.mark.parametrize("bucket", [True, False])
def test_soap_trajectory_does_not_depend_on_the_qr_method(bucket):
    """Cholesky-QR and Householder differ in round-off and column signs; SOAP's update does not depend on the
    signs (V is per coordinate and squared, the momentum is rotated through Q), so the runs agree."""
    shapes = [(10, 6), (10, 6), (6, 6), (5,)]  # max_precond_dim 8: the tall layers rotate their short side only
    init = init_values(shapes, seed=35)
    grads = open_loop_grads(shapes, 20, seed=35)
    kw = dict(lr=1e-2, precondition_frequency=2, bucket=bucket, max_precond_dim=8)
    linalg.ORTHO_STATS.clear()
    a, _ = run(lambda ps: SOAP(ps, qr_method="cholesky", **kw), init, grads)
    assert linalg.ORTHO_STATS["cholesky_1"] + linalg.ORTHO_STATS["cholesky_2"] > 0
    b, _ = run(lambda ps: SOAP(ps, qr_method="householder", **kw), init, grads)
    assert_well_posed(lambda ps: SOAP(ps, qr_method="householder", **kw), init, grads, 1e-10)
    assert max(rel(x, y) for x, y in zip(a, b)) <= 1e-10
    assert max(rel(x, y) for x, y in zip(a, init)) > 1e-3

