"""soap_lab.optim.refresh: WHEN bases are refreshed — fixed, staggered, adaptive — against independent computations.

Oracles: the readable SOAP of reference_soap.py (with its ``offsets`` / ``tolerance`` written out), a readable
Shampoo below whose sides are refreshed on their own, and the closed form of a rotated diagonal factor's
off-diagonal mass. Tight comparisons run on full-rank factors with separated spectra (helpers.open_loop_grads,
square layers or short sides rotated) and carry the one-ulp guard (helpers.assert_well_posed); an adaptive
comparison also checks that no staleness lies within round-off of τ (else a decision is round-off). Bit equality
is asserted only where both sides run the same code on the same bits.
"""
import copy
import math
import sys
from pathlib import Path

import pytest
import torch

from soap_lab import SOAP, EigenAdafactor, Shampoo
from soap_lab.optim import cost, refresh
from helpers import assert_well_posed, init_values, max_rel, open_loop_grads, rel, resumes_bit_exactly, run, \
    shared_stacks, state_close
from reference_soap import reference_soap

F64 = torch.float64
CLASSES = {"soap": SOAP, "shampoo": Shampoo, "eigen_adafactor": EigenAdafactor}

# Stacks of 2 and 3, a transposed shape, a one-sided layout (40 > MAX_DIM), a vector, a 3-D tensor.
SHAPES = [(12, 8), (12, 8), (8, 12), (7, 7), (7, 7), (7, 7), (40, 6), (9,), (3, 4, 2)]
SQUARE_SHAPES = [(7, 7), (7, 7), (6, 6), (6, 6), (6, 6), (9,), (3, 4, 2)]
MAX_DIM = 10
# The oracle's shapes (tests/test_soap.py): square layers, short sides rotated only (max_precond_dim 6), vectors.
ORACLE_SHAPES = [(6, 6), (6, 6), (9, 5), (5, 4), (7,), (7,)]


def _feed(params, opt, grads):
    for row in grads:
        for p, g in zip(params, row):
            p.grad = g.clone().to(p.dtype)
        opt.step()


def _same_state(oa, pa, ob, pb):
    """Bit equality of every state entry (tensors, lists of tensors, numbers)."""
    for x, y in zip(pa, pb):
        sa, sb = oa.state[x], ob.state[y]
        assert sa.keys() == sb.keys()
        for k, u in sa.items():
            v = sb[k]
            if isinstance(u, torch.Tensor):
                assert torch.equal(u, v), k
            elif isinstance(u, list):
                assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(u, v)), k
            else:
                assert u == v, k


# --------------------------------------------------------------------------------------------------------
# adaptive, τ = 0: every check refreshes, on the fixed code path — bit for bit
# --------------------------------------------------------------------------------------------------------
ZERO_CASES = {
    "soap": ("soap", SHAPES, {}),
    "soap-eigh-original": ("soap", SHAPES, dict(refresh="eigh", momentum_space="original")),
    "soap-factorized-one-sided": ("soap", SHAPES, dict(factorized=True, one_sided=True)),
    "shampoo": ("shampoo", SHAPES, {}),
    "shampoo-half-trace": ("shampoo", SQUARE_SHAPES, dict(exponent=0.5, trace_scaling=True, grafting=None, eps=1e-6,
                                                        start_preconditioning_step=2)),
    "eigen_adafactor": ("eigen_adafactor", SHAPES, {}),
    "eigen_adafactor-before-qr-factors": ("eigen_adafactor", SQUARE_SHAPES,
                                          dict(factor_update="before", refresh="qr", statistics="factors")),
}


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", ZERO_CASES.values(), ids=ZERO_CASES.keys())
def test_adaptive_with_zero_tolerance_is_fixed_bit_for_bit(case, dtype):
    name, shapes, kw = case
    init = init_values(shapes, seed=1, dtype=dtype)
    grads = open_loop_grads(shapes, 13, seed=2, dtype=dtype)
    make = lambda **extra: lambda ps: CLASSES[name](ps, lr=1e-2, precondition_frequency=2,  # noqa: E731
                                                    max_precond_dim=MAX_DIM, **kw, **extra)
    a, oa = run(make(), init, grads)
    b, ob = run(make(refresh_policy="adaptive", refresh_tolerance=0.0), init, grads)
    assert shared_stacks(ob) >= 2
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    _same_state(oa, a, ob, b)
    sa, sb = oa.refresh_stats(), ob.refresh_stats()
    assert sb["checks"] == sb["refreshes"] == sa["refreshes"] > 0 and sb["skipped"] == 0 and sa["checks"] == 0
    assert all(0.0 <= v <= 1.0 for *_, v, _ in sb["log"])


# --------------------------------------------------------------------------------------------------------
# adaptive, τ ≥ 1: no basis changes after the first
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 5.0])
@pytest.mark.parametrize("name", CLASSES)
def test_tolerance_of_one_or_more_keeps_the_first_basis(name, tau):
    init = init_values(SHAPES, seed=3)
    grads = open_loop_grads(SHAPES, 12, seed=4)
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = CLASSES[name](params, lr=1e-2, precondition_frequency=2, max_precond_dim=MAX_DIM, refresh_policy="adaptive",
                        refresh_tolerance=tau)
    first = None
    for row in grads:
        _feed(params, opt, [row])
        Q = [[None if q is None else q.clone() for q in opt.state[p]["Q"]] for p in params
             if opt.state[p].get("Q") is not None]
        if first is None and Q:
            first = Q
        elif first is not None:
            assert all(all((a is None and b is None) or torch.equal(a, b) for a, b in zip(x, y))
                       for x, y in zip(first, Q))
    stats = opt.refresh_stats()
    assert stats["refreshes"] == 0 and stats["checks"] > 0 and stats["skipped"] == stats["checks"]
    assert stats["skipped_flops"] > 0 and max_rel(params, init) > 1e-3


# --------------------------------------------------------------------------------------------------------
# the criterion against the closed form of a rotated diagonal factor
# --------------------------------------------------------------------------------------------------------
def _closed_form(pairs, theta):
    """P = diag(a_1, b_1, a_2, b_2, …), each plane (a_i, b_i) rotated by θ: the 2×2 blocks of B = QᵀPQ are
    [[a c² + b s², (b − a) s c], [(b − a) s c, a s² + b c²]], so ‖B − diag B‖²_F = Σ 2 (a − b)² s² c² and
    ‖B‖²_F = ‖P‖²_F = Σ a² + b²: staleness = |sin 2θ| / √2 · √(Σ (a − b)² / Σ (a² + b²))."""
    num = sum((a - b) ** 2 for a, b in pairs)
    den = sum(a * a + b * b for a, b in pairs)
    return abs(math.sin(2 * theta)) / math.sqrt(2) * math.sqrt(num / den)


def _rotated_problem(n, theta, seed=0):
    """(P, Q, pairs) in float64: P = U diag U ᵀ with a random orthogonal U, Q = U · (plane rotations by θ)."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.logspace(0, -2, n, dtype=F64)
    pairs = [(float(lam[2 * i]), float(lam[2 * i + 1])) for i in range(n // 2)]
    R = torch.eye(n, dtype=F64)
    c, s = math.cos(theta), math.sin(theta)
    for i in range(n // 2):
        R[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[c, -s], [s, c]], dtype=F64)
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64)).Q
    return U @ torch.diag(lam) @ U.T, U @ R, pairs


def _independent(P, Q):
    B = Q.T @ P @ Q
    return float((B - torch.diag(torch.diag(B))).norm() / B.norm())


@pytest.mark.parametrize("theta", [0.3, 0.05, 0.01, 1e-3, 1e-4])
def test_staleness_matches_the_closed_form(theta):
    P, Q, pairs = _rotated_problem(64, theta)
    expected = _closed_form(pairs, theta)
    assert _independent(P, Q) == pytest.approx(expected, rel=1e-10)  # the closed form itself
    stack = lambda x, dt: torch.stack([x, x]).to(dt)  # noqa: E731  a stack of two
    for direct in (False, True):  # float64: the subtraction to 1e-10 absolute, the direct form to 1e-9 relative
        P2, Q2 = stack(P, F64), stack(Q, F64)
        got = refresh.staleness(P2, Q2, P2 @ Q2, direct=direct)
        assert got.dtype == F64 and got.shape == (2,)
        assert float(got[0]) == (pytest.approx(expected, rel=1e-9) if direct else pytest.approx(expected, abs=1e-10))
    # float32 state: the subtraction resolves staleness ≳ 1e-2 to 1%, the direct form ≳ 1e-4 to 1e-2
    P2, Q2 = stack(P, torch.float32), stack(Q, torch.float32)
    sub = float(refresh.staleness(P2, Q2, P2 @ Q2, direct=False)[0])
    direct = float(refresh.staleness(P2, Q2, P2 @ Q2, direct=True)[0])
    if expected >= 1e-2:
        assert sub == pytest.approx(expected, rel=1e-2)
    assert direct == pytest.approx(expected, rel=1e-2)
    assert 0.0 <= sub <= 1.0


def test_staleness_of_a_zero_or_fresh_factor_is_zero_and_the_direct_form_is_used_below_its_floor():
    Z = torch.zeros(3, 5, 5)
    eye = torch.eye(5).expand(3, 5, 5)
    assert torch.equal(refresh.staleness(Z, eye, Z), torch.zeros(3, dtype=F64))
    D = torch.diag(torch.arange(1.0, 6.0)).expand(3, 5, 5)
    for direct in (False, True):
        assert float(refresh.staleness(D, eye, D.clone(), direct=direct).max()) == 0.0
    assert refresh.uses_direct(1e-3, torch.float32) and not refresh.uses_direct(1e-2, torch.float32)
    assert not refresh.uses_direct(0.0, torch.float32)  # τ = 0 decides nothing
    assert refresh.uses_direct(1e-7, F64) and not refresh.uses_direct(1e-3, F64)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_the_optimizer_logs_the_closed_form_staleness_and_decides_by_it(dtype):
    """SOAP with f = 1 on one 8×8 layer: after the first call, L is replaced by a diagonal factor and Q_L by its
    eigenbasis rotated by θ (R stays diagonal in the identity basis: staleness 0). A zero gradient leaves
    L ← β L (same staleness), so the check at step 1 logs the closed form; a τ just below refreshes Q_L, just
    above keeps it bit for bit."""
    n, theta = 8, 0.05
    P, Q, pairs = _rotated_problem(n, theta, seed=5)
    expected = _closed_form(pairs, theta)
    for tau, refreshed in ((0.97 * expected, True), (1.03 * expected, False)):
        w = torch.nn.Parameter(torch.randn(n, n, dtype=dtype))
        opt = SOAP([w], precondition_frequency=1, refresh_policy="adaptive", refresh_tolerance=tau)
        w.grad = torch.randn(n, n, dtype=dtype)
        opt.step()  # the first basis
        st = opt.state[w]
        st["GG"][0].copy_(P)
        st["Q"][0].copy_(Q)
        st["GG"][1].copy_(torch.diag(torch.linspace(2, 1, n, dtype=F64)))
        st["Q"][1].copy_(torch.eye(n))
        before = st["Q"][0].clone()
        w.grad = torch.zeros(n, n, dtype=dtype)
        opt.step()
        (t, index, d, value, did), (_, _, d1, value1, did1) = opt.refresh_stats()["log"]
        assert (t, index, d, d1) == (1, 0, 0, 1)
        assert value == pytest.approx(expected, rel=1e-2 if dtype == torch.float32 else 1e-9)
        assert value1 == pytest.approx(0.0, abs=1e-6) and not did1
        assert did is refreshed and torch.equal(st["Q"][0], before) is (not refreshed)


# --------------------------------------------------------------------------------------------------------
# adaptive against the readable oracles: per-factor decisions inside stacks
# --------------------------------------------------------------------------------------------------------
def _margin(log, tau):
    return min(abs(v - tau) for *_, v in log)


def _disagreements(log, tau, members):
    """Checks (step, side) at which the stacked ``members`` (parameter indices) decided differently."""
    kept = {(t, i, d): v < tau for t, i, d, v in log}
    return sum(len({kept[(t, i, d)] for i in members}) > 1 for (t, i, d) in kept if i == members[0])


@pytest.mark.parametrize("options", [{}, dict(bucket=False), dict(momentum_space="original")],
                         ids=["stacked", "unstacked", "paper-momentum"])
@pytest.mark.parametrize("f", [1, 2])
def test_adaptive_soap_equals_the_readable_algorithm_float64(f, options):
    init = init_values(ORACLE_SHAPES, seed=70)
    grads = open_loop_grads(ORACLE_SHAPES, 16, seed=71)
    tau = 0.1
    log = []
    expected = reference_soap(init, grads, lr=1e-2, max_precond_dim=6, f=f, tolerance=tau, log=log)
    assert _margin(log, tau) > 1e-5  # no decision is round-off
    assert _disagreements(log, tau, [0, 1])  # the stacked 6×6 layers disagree: partial refreshes of the stack
    make = lambda ps: SOAP(ps, lr=1e-2, max_precond_dim=6, precondition_frequency=f,  # noqa: E731
                           refresh_policy="adaptive", refresh_tolerance=tau, **options)
    got, opt = run(make, init, grads)
    stats = opt.refresh_stats()
    skipped = sum(v < tau for *_, v in log)
    assert 0 < skipped < len(log) and stats["skipped"] == skipped and stats["checks"] == len(log)
    assert sorted((t, i, d) for t, i, d, *_ in stats["log"]) == sorted((t, i, d) for t, i, d, _ in log)
    ours = {(t, i, d): v for t, i, d, v, _ in stats["log"]}
    assert max(abs(ours[(t, i, d)] - v) for t, i, d, v in log) < 1e-8
    sensitivity = assert_well_posed(make, init, grads, 1e-10)
    assert max_rel(got, expected) <= 1e-10, (max_rel(got, expected), sensitivity)
    assert max_rel(expected, init) > 1e-3


def _shampoo_oracle(init, grads, lr, betas, eps, exponent, f, start, offsets=None, tolerance=None, log=None):
    """Shampoo (grafted onto Adam's norm, no trace factor) with each side's root L^-e = Q diag((λ + ε)^-e) Qᵀ kept
    from that side's last refresh: refreshed at (t − start − o) % f == 0 (staggered, offset o per parameter), or
    at (t − start) % f == 0 where the side's staleness in its basis is not below τ (adaptive). Float64, plain."""
    b1, b2 = betas
    out = []
    for i, w0 in enumerate(init):
        W = w0.clone()
        m, n = W.shape
        F = [torch.zeros(m, m, dtype=F64), torch.zeros(n, n, dtype=F64)]
        M, V = torch.zeros_like(W), torch.zeros_like(W)
        bases = [None, None]  # (Q, root) per side
        for t, row in enumerate(grads, start=1):
            G = row[i]
            F = [b2 * F[0] + (1 - b2) * G @ G.T, b2 * F[1] + (1 - b2) * G.T @ G]
            M = b1 * M + (1 - b1) * G
            V = b2 * V + (1 - b2) * G * G
            bc1, bc2 = 1 - b1**t, 1 - b2**t
            adam = (M / bc1) / ((V / bc2).sqrt() + 1e-8)
            if t < start:
                W = W - lr * adam
                continue
            phase = t - start
            for side in (0, 1):
                if bases[side] is not None:
                    if offsets is not None and (phase - offsets[i]) % f:
                        continue
                    if offsets is None and (phase % f or phase == 0):
                        continue
                    if tolerance is not None:
                        Q = bases[side][0]
                        B = Q.T @ F[side] @ Q
                        s = float((B - torch.diag(torch.diag(B))).norm() / B.norm())
                        if log is not None:
                            log.append((t, i, side, s))
                        if s < tolerance:
                            continue
                lam, Q = torch.linalg.eigh(F[side] / bc2)
                bases[side] = (Q, Q @ torch.diag((lam.clamp_min(0) + eps) ** (-exponent)) @ Q.T)
            U = bases[0][1] @ (M / bc1) @ bases[1][1]
            W = W - lr * U * adam.norm() / U.norm()
        out.append(W)
    return out


SHAMPOO_SHAPES = [(6, 6), (6, 6), (6, 6), (5, 5)]


@pytest.mark.parametrize("bucket", [True, False], ids=["stacked", "unstacked"])
def test_adaptive_shampoo_keeps_roots_per_side_like_the_oracle_float64(bucket):
    init = init_values(SHAMPOO_SHAPES, seed=80)
    grads = open_loop_grads(SHAMPOO_SHAPES, 18, seed=81)
    tau, f, start = 0.08, 1, 3
    hp = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-4, exponent=0.25)
    log = []
    expected = _shampoo_oracle(init, grads, f=f, start=start, tolerance=tau, log=log, **hp)
    assert _margin(log, tau) > 1e-5
    skipped = sum(v < tau for *_, v in log)
    assert 0 < skipped < len(log) and _disagreements(log, tau, [0, 1, 2])
    make = lambda ps: Shampoo(ps, precondition_frequency=f, start_preconditioning_step=start, bucket=bucket,  # noqa: E731
                              refresh_policy="adaptive", refresh_tolerance=tau, **hp)
    got, opt = run(make, init, grads)
    assert opt.refresh_stats()["skipped"] == skipped
    sensitivity = assert_well_posed(make, init, grads, 1e-10)
    assert max_rel(got, expected) <= 1e-10, (max_rel(got, expected), sensitivity)


@pytest.mark.parametrize("kw", [{}, dict(refresh="qr"), dict(factor_update="before", betas=(0.9, 0.95))],
                         ids=["eigh", "qr", "before"])
def test_adaptive_eigen_adafactor_stacked_equals_unstacked_float64(kw):
    """Partial refreshes of stack members (stacked) against stacks of one (each member alone)."""
    init = init_values(SQUARE_SHAPES, seed=43)
    grads = open_loop_grads(SQUARE_SHAPES, 20, seed=42)
    make = lambda bucket: lambda ps: EigenAdafactor(ps, lr=1e-2, precondition_frequency=1,  # noqa: E731
                                                    max_precond_dim=MAX_DIM, bucket=bucket, refresh_policy="adaptive",
                                                    refresh_tolerance=0.05, **kw)
    a, oa = run(make(True), init, grads)
    b, ob = run(make(False), init, grads)
    stats = oa.refresh_stats()
    assert 0 < stats["skipped"] < stats["checks"] and shared_stacks(oa) >= 2
    assert _margin(stats["log"], 0.05) > 1e-6
    assert [r[3] > 0.05 for r in stats["log"]] == [r[4] for r in stats["log"]]
    sensitivity = assert_well_posed(make(False), init, grads, 1e-12)
    assert max_rel(a, b) <= 1e-12, (max_rel(a, b), sensitivity)
    state_close(oa, a, ob, b, 1e-12)


# --------------------------------------------------------------------------------------------------------
# staggered
# --------------------------------------------------------------------------------------------------------
def _refresh_steps(name, shapes, steps, **kw):
    """Per parameter and dimension, the steps at which its basis changed (watched bit for bit), and the optimizer."""
    init = init_values(shapes, seed=9, dtype=torch.float32)
    grads = open_loop_grads(shapes, steps, seed=10, dtype=torch.float32)
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = CLASSES[name](params, lr=1e-2, max_precond_dim=MAX_DIM, **kw)
    seen, changed = {}, {}
    for row in grads:
        _feed(params, opt, [row])
        for i, p in enumerate(params):
            st = opt.state[p]
            for d, q in enumerate(st.get("Q") or []):
                if q is None:
                    continue
                if (i, d) in seen and not torch.equal(seen[(i, d)], q):
                    changed.setdefault((i, d), []).append(st["step"])
                seen[(i, d)] = q.clone()
    return changed, opt, params


@pytest.mark.parametrize("name,start", [("soap", None), ("shampoo", 3), ("eigen_adafactor", None)])
@pytest.mark.parametrize("explicit", [True, False], ids=["explicit", "cost-model"])
def test_staggered_refreshes_each_parameter_once_per_f_steps_at_its_offset(name, start, explicit):
    f, steps = 4, 26
    shapes = SHAPES[:7]
    kw = dict(precondition_frequency=f, refresh_policy="staggered")
    if explicit:
        kw["refresh_offsets"] = [1, 3, 0, 2, 1, 3, 2]
    if start is not None:
        kw["start_preconditioning_step"] = start
    changed, opt, params = _refresh_steps(name, shapes, steps, **kw)
    t0 = start or 0
    offsets = [opt.state[p]["refresh_offset"] for p in params]
    if explicit:
        assert offsets == kw["refresh_offsets"]
    assert len(set(offsets)) > 1
    stats = {r["index"]: r for r in opt.refresh_stats()["params"]}
    final = opt.state[params[0]]["step"]
    for (i, d), ts in changed.items():
        o = offsets[i]
        assert ts == [t for t in range(t0 + 1, final + 1) if (t - t0 - o) % f == 0], (i, d, o, ts)
        for k in range((final - t0) // f):  # every full window of f steps: exactly one refresh
            assert sum(t0 + k * f < t <= t0 + (k + 1) * f for t in ts) == 1
        assert stats[i]["factors"][[fac["dim"] for fac in stats[i]["factors"]].index(d)]["refreshes"] == len(ts)
    assert len(changed) == sum(len([q for q in opt.state[p]["Q"] if q is not None]) for p in params)


def test_staggered_soap_equals_the_readable_algorithm_with_the_same_offsets_float64():
    """Stack members at different offsets (the two 6×6 layers: 1 and 0) against the oracle's per-parameter loop."""
    init = init_values(ORACLE_SHAPES, seed=70)
    grads = open_loop_grads(ORACLE_SHAPES, 16, seed=71)
    offsets = [1, 0, 2, 1, 0, 2]
    expected = reference_soap(init, grads, lr=1e-2, max_precond_dim=6, f=3, offsets=offsets)
    for options in ({}, dict(bucket=False), dict(momentum_space="original")):
        make = lambda ps: SOAP(ps, lr=1e-2, max_precond_dim=6, precondition_frequency=3,  # noqa: E731
                               refresh_policy="staggered", refresh_offsets=offsets, **options)
        got, opt = run(make, init, grads)
        sensitivity = assert_well_posed(make, init, grads, 1e-10)
        assert max_rel(got, expected) <= 1e-10, (options, max_rel(got, expected), sensitivity)
    assert max_rel(expected, reference_soap(init, grads, lr=1e-2, max_precond_dim=6, f=3)) > 1e-6  # offsets matter


@pytest.mark.parametrize("bucket", [True, False], ids=["stacked", "unstacked"])
def test_staggered_shampoo_equals_the_oracle_with_the_same_offsets_float64(bucket):
    init = init_values(SHAMPOO_SHAPES, seed=80)
    grads = open_loop_grads(SHAMPOO_SHAPES, 18, seed=81)
    hp = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-4, exponent=0.25)
    offsets = [2, 0, 1, 2]
    expected = _shampoo_oracle(init, grads, f=3, start=2, offsets=offsets, **hp)
    make = lambda ps: Shampoo(ps, precondition_frequency=3, start_preconditioning_step=2, bucket=bucket,  # noqa: E731
                              refresh_policy="staggered", refresh_offsets=offsets, **hp)
    got, _ = run(make, init, grads)
    sensitivity = assert_well_posed(make, init, grads, 1e-10)
    assert max_rel(got, expected) <= 1e-10, (max_rel(got, expected), sensitivity)


@pytest.mark.parametrize("name", CLASSES)
def test_staggered_with_zero_offsets_is_fixed_bit_for_bit(name):
    init = init_values(SHAPES, seed=5, dtype=torch.float32)
    grads = open_loop_grads(SHAPES, 11, seed=6, dtype=torch.float32)
    make = lambda **kw: lambda ps: CLASSES[name](ps, lr=1e-2, precondition_frequency=3, max_precond_dim=MAX_DIM,  # noqa: E731
                                                 **kw)
    a, oa = run(make(), init, grads)
    b, ob = run(make(refresh_policy="staggered", refresh_offsets=[0] * len(SHAPES)), init, grads)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert oa.refresh_stats()["refreshes"] == ob.refresh_stats()["refreshes"] > 0


def test_cost_model_offsets_are_deterministic_balanced_and_in_the_state_dict():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import step_time

    shapes = [s for _, s in step_time.gpt_shapes(**step_time.PARAM_SETS["gpt10m"])]
    f = 10

    def offsets_of():
        params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        opt = SOAP(params, precondition_frequency=f, refresh_policy="staggered")
        return [opt._offset_of(p) for p in params], opt, params

    first, opt, params = offsets_of()
    assert offsets_of()[0] == first
    costs = [cost.step_cost(SOAP, s, {}).refresh for s in shapes]
    loads = [sum(c for c, o in zip(costs, first) if o == k) for k in range(f)]
    assert max(loads) <= sum(costs) / f + max(costs)  # the greedy bound
    assert max(loads) / (sum(costs) / f) < 1.5  # per-parameter units spread gpt10m's refresh work
    stack_loads = {}
    for s, c in zip(shapes, costs):  # what stacks as the unit would give: the largest stack's whole work
        stack_loads[s] = stack_loads.get(s, 0.0) + c
    assert max(loads) < max(stack_loads.values()) / 2
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    sd = opt.state_dict()
    assert [sd["state"][i]["refresh_offset"] for i in range(len(params))] == first


def test_assign_offsets_is_largest_first_to_the_least_loaded_offset():
    assert refresh.assign_offsets([5.0, 4.0, 3.0, 3.0, 1.0, 0.0], 3) == [0, 1, 2, 2, 1, 0]
    assert refresh.assign_offsets([1.0] * 5, 2) == [0, 1, 0, 1, 0]
    assert refresh.assign_offsets([], 4) == []


# --------------------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------------------
BAD = [
    (dict(refresh_policy="sometimes"), "refresh_policy"),
    (dict(refresh_policy=None), "refresh_policy"),
    (dict(refresh_policy="adaptive", refresh_tolerance=-0.1), "refresh_tolerance"),
    (dict(refresh_policy="adaptive", refresh_tolerance=float("nan")), "refresh_tolerance"),
    (dict(refresh_policy="adaptive", refresh_tolerance="0.1"), "refresh_tolerance"),
    (dict(refresh_policy="adaptive", refresh_tolerance=True), "refresh_tolerance"),
    (dict(refresh_tolerance=0.1), "refresh_tolerance"),  # τ with the fixed policy would be ignored
    (dict(refresh_policy="staggered", refresh_offsets=[0, 4]), "refresh_offsets"),  # f = 4
    (dict(refresh_policy="staggered", refresh_offsets=[0, -1]), "refresh_offsets"),
    (dict(refresh_policy="staggered", refresh_offsets=[0, 1.0]), "refresh_offsets"),
    (dict(refresh_policy="staggered", refresh_offsets=[0]), "refresh_offsets"),  # two parameters
    (dict(refresh_policy="staggered", refresh_offsets=5), "refresh_offsets"),
    (dict(refresh_offsets=[0, 1]), "refresh_offsets"),  # offsets with the fixed policy
]


@pytest.mark.parametrize("kw,option", BAD, ids=[f"{o}-{i}" for i, (_, o) in enumerate(BAD)])
@pytest.mark.parametrize("name", CLASSES)
def test_bad_refresh_options_raise_one_line_naming_the_option(name, kw, option):
    params = [torch.nn.Parameter(torch.zeros(3, 3)), torch.nn.Parameter(torch.zeros(3, 3))]
    with pytest.raises(ValueError) as err:
        CLASSES[name](params, precondition_frequency=4, **kw)
    msg = str(err.value)
    assert msg.startswith(option) and "\n" not in msg


def test_good_refresh_options_are_in_the_param_groups():
    p = [torch.nn.Parameter(torch.zeros(3, 3))]
    g = SOAP(p, refresh_policy="adaptive", refresh_tolerance=0.05).param_groups[0]
    assert (g["refresh_policy"], g["refresh_tolerance"], g["refresh_offsets"]) == ("adaptive", 0.05, None)
    import numpy as np

    g = Shampoo(p, precondition_frequency=3, refresh_policy="staggered", refresh_offsets=[np.int64(2)]).param_groups[0]
    assert g["refresh_offsets"] == (2,)
    assert SOAP(p).param_groups[0]["refresh_policy"] == "fixed"


# --------------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------------
POLICIES = {
    "fixed": {}, "adaptive": dict(refresh_policy="adaptive", refresh_tolerance=0.3),
    "adaptive-direct": dict(refresh_policy="adaptive", refresh_tolerance=0.005),
    "staggered": dict(refresh_policy="staggered"),
}


@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
@pytest.mark.parametrize("name", CLASSES)
def test_checkpoint_mid_run_resumes_bit_exactly(name, policy):
    params = [torch.nn.Parameter(torch.randn(6, 6)) for _ in range(3)] + [torch.nn.Parameter(torch.randn(5, 4)),
                                                                           torch.nn.Parameter(torch.randn(5))]
    n_buckets, same = resumes_bit_exactly(lambda ps: CLASSES[name](ps, precondition_frequency=2, **policy), params)
    assert n_buckets and same
    assert all(torch.isfinite(p).all() for p in params)


def test_a_fixed_checkpoint_loads_into_the_other_policies():
    """An old checkpoint (tests/fixtures/checkpoints/v1.pt, written before this module) carries no policy state:
    it loads, the staggered policy assigns offsets at the next step, and the runs continue."""
    here = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
    saved = torch.load(here / "v1.pt", weights_only=False)["cases"]["soap"]
    kw = dict(lr=1e-2, betas=(0.9, 0.95), precondition_frequency=3, max_precond_dim=6)
    for policy in POLICIES.values():
        params = [torch.nn.Parameter(x.clone()) for x in saved["params"]]
        opt = SOAP(params, **kw, **policy)
        opt.load_state_dict(copy.deepcopy(saved["state_dict"]))
        _feed(params, opt, saved["grads_after"])
        assert all(torch.isfinite(p).all() for p in params)
        if policy.get("refresh_policy") == "staggered":
            assert all("refresh_offset" in opt.state[p] for p in params)
        if not policy:
            assert max_rel(params, saved["final"]) <= 1e-10


# --------------------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------------------
def test_refresh_stats_name_parameters_bound_the_log_and_count_flops(monkeypatch):
    monkeypatch.setattr(refresh.RefreshStats.__init__, "__defaults__", (7,))  # LOG_MAX = 7
    shapes = [(8, 6), (8, 6), (9,)]
    params = [torch.nn.Parameter(x) for x in init_values(shapes, seed=1, dtype=torch.float32)]
    names = ["a.weight", "b.weight", "c.bias"]
    opt = SOAP([{"params": params, "param_names": names}], precondition_frequency=1, max_precond_dim=MAX_DIM,
               refresh_policy="adaptive", refresh_tolerance=0.2)
    _feed(params, opt, open_loop_grads(shapes, 6, seed=2, dtype=torch.float32))
    s = opt.refresh_stats()
    assert [r["name"] for r in s["params"]] == ["a.weight", "b.weight"]  # the vector has no factor
    assert [[f["dim"] for f in r["factors"]] for r in s["params"]] == [[0, 1], [0, 1]]
    assert s["checks"] == 5 * 4 and s["check_steps"] == 5  # steps 1-5, 2 layers × 2 sides, one stack
    assert len(s["log"]) == 7 and s["log_dropped"] == 20 - 7 and s["log"][-1][0] == 5
    assert s["refreshes"] + s["skipped"] == s["checks"] and 0 < s["skipped"] < s["checks"]
    per_factor = [cost.factor_refresh_flops(n, 48, "qr") for n in (8, 6)]
    facs = [f for r in s["params"] for f in r["factors"]]
    assert s["refresh_flops"] == pytest.approx(sum(f["refreshes"] * per_factor[f["dim"]] for f in facs))
    assert s["skipped_flops"] == pytest.approx(sum((f["checks"] - f["refreshes"]) * per_factor[f["dim"]] for f in facs))
    # a check costs P·Q (2n³), which a QR refresh that follows reuses
    assert s["check_flops"] == pytest.approx(sum((f["checks"] - f["refreshes"]) * 2 * f["size"] ** 3 for f in facs))
    for f in facs:
        assert f["checks"] == 5 and 0 <= f["mean_staleness"] <= f["max_staleness"] <= 1


RESUME_POLICIES = {"fixed": {}, "staggered": dict(refresh_policy="staggered"),
                   "adaptive": dict(refresh_policy="adaptive", refresh_tolerance=0.05)}


@pytest.mark.parametrize("policy", RESUME_POLICIES.values(), ids=RESUME_POLICIES.keys())
@pytest.mark.parametrize("name", CLASSES)
def test_refresh_stats_survive_a_resume(name, policy):
    """The counters after 6 calls equal those after 3 calls, a state_dict, a fresh optimizer that loads it, and 3
    more; the log restarts (its entries before the resume are counted as dropped). Without the key (an older
    checkpoint) the counters start at zero."""
    init = init_values(SHAPES, seed=1, dtype=torch.float32)
    grads = open_loop_grads(SHAPES, 6, seed=2, dtype=torch.float32)
    start = dict(start_preconditioning_step=1) if name == "shampoo" else {}  # a refresh in the first half too
    make = lambda ps: CLASSES[name](ps, lr=1e-2, precondition_frequency=2, max_precond_dim=MAX_DIM,  # noqa: E731
                                    **start, **policy)
    full, opt = run(make, init, grads)
    half, first = run(make, init, grads[:3])
    saved = copy.deepcopy(first.state_dict())
    params = [torch.nn.Parameter(p.detach().clone()) for p in half]
    resumed = make(params)
    resumed.load_state_dict(saved)
    _feed(params, resumed, grads[3:])
    assert all(torch.equal(a, b) for a, b in zip(full, params))
    a, b = opt.refresh_stats(), resumed.refresh_stats()
    assert a["refreshes"] > 0 and (a["checks"] > 0) is (policy.get("refresh_policy") == "adaptive")
    assert first.refresh_stats()["refreshes"] > 0
    drop = ("log", "log_dropped")
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    before = [r for r in a["log"] if r[0] <= first.state[half[0]]["step"]]
    assert b["log"] == a["log"][len(before):] and b["log_dropped"] == len(before)
    old = copy.deepcopy(saved)
    del old["refresh_stats"]
    fresh = make([torch.nn.Parameter(p.detach().clone()) for p in half])
    fresh.load_state_dict(old)
    s = fresh.refresh_stats()
    assert (s["refreshes"], s["checks"], s["params"], s["refresh_flops"]) == (0, 0, [], 0.0)


@pytest.mark.parametrize("cls,shape,kw", [(SOAP, (96, 40), {}), (SOAP, (96, 40), dict(refresh="eigh")),
                                          (Shampoo, (64, 32), {}), (EigenAdafactor, (64, 32), {})])
def test_per_factor_refresh_flops_add_up_to_the_step_cost_model(cls, shape, kw):
    total = cost.step_cost(cls, shape, kw).refresh
    method = kw.get("refresh", "qr" if cls is SOAP else "eigh")
    carry = cls is not Shampoo
    assert sum(cost.factor_refresh_flops(n, math.prod(shape), method, carry) for n in shape) == pytest.approx(total)


# --------------------------------------------------------------------------------------------------------
# cheap: no allocation of state size in a check, a partial refresh or a staggered refresh
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", [dict(refresh_policy="adaptive", refresh_tolerance=0.2),
                                    dict(refresh_policy="staggered", refresh_offsets=[1, 0, 2, 0])],
                         ids=["adaptive", "staggered"])
def test_policy_steps_allocate_nothing_of_state_size(policy):
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    b, m, n = 3, 96, 64
    params = [torch.nn.Parameter(torch.randn(m, n)) for _ in range(b)] + [torch.nn.Parameter(torch.randn(n))]
    opt = SOAP(params, precondition_frequency=3, **policy)

    def grads():
        for p in params:
            p.grad = torch.randn_like(p)

    for _ in range(10):  # the workspaces grow during the first checks / refreshes
        grads()
        opt.step()
    smallest_stack = b * m * n * 4
    for _ in range(3):  # steps 10-12: a check (or due members) and ordinary steps
        grads()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            opt.step()
        largest = max((e.cpu_memory_usage for e in prof.events()), default=0)
        assert largest < smallest_stack / 4, largest
    stats = opt.refresh_stats()
    assert stats["refreshes"] > 0
    if stats["log"]:  # the check at step 12 refreshed some factors of the stack, not all: the partial path
        last = [r for t, *_, r in stats["log"] if t == 12]
        assert any(last) and not all(last)
