"""Buckets for Shampoo and EigenAdafactor (issue 5): bucket=True gives the numbers of the per-parameter path.

As for SOAP (tests/test_perf_equivalence.py): no timing here; float64 trajectories of the bucketed and the
readable per-parameter path agree to round-off, the state keeps its names as per-parameter views, and a
checkpoint continues bit-exactly. benchmarks/bucketing.py is run end to end at a smoke-test size.
"""
import copy
import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch

from soap_lab import EigenAdafactor, Shampoo, kron
from soap_lab.optim.buckets import Bucket
from helpers import (assert_well_posed, init_values, max_rel, one_ulp, open_loop_grads, rel, resumes_bit_exactly,
                     run, state_close)

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]

# Same-shape matrices (buckets of 2 and 3), a transposed shape, a one-sided layout (40 > max_precond_dim
# below), vectors (unrotated, bucketed), a 3-D tensor (per-parameter path). Well posed: with MAX_DIM = 10 every
# rotated side is a square's side or the short side, so each factor is full rank with separated eigenvalues from
# the first call (helpers.open_loop_grads); each test measures its 1-ulp sensitivity (helpers.assert_well_posed).
SHAPES = [(12, 8), (12, 8), (8, 12), (7, 7), (7, 7), (7, 7), (40, 6), (9,), (9,), (3, 4, 2)]
# statistics="factors" reads Adafactor's statistics off the factors, diag(Qᵀ GG Q): that idealized form needs
# full-rank factors in *both* directions (see EigenAdafactor's docstring), so it runs on square layers, plus the
# one-sided layout (which falls back to the running statistics), vectors and the 3-D tensor.
SQUARE_SHAPES = [(7, 7), (7, 7), (7, 7), (6, 6), (6, 6), (40, 6), (9,), (9,), (3, 4, 2)]
MAX_DIM = 10
STEPS = 27  # f = 3: 9 refreshes
TOL = 1e-12


SHAMPOO_CASES = {
    "quarter-grafting": dict(exponent=0.25, grafting="adam", betas=(0.9, 0.95)),
    # Preconditioning from call 2: the inverse square root (eps 1e-6, no grafting) of a first factor built from a
    # single gradient amplifies round-off (1-ulp sensitivity 5e-13 … 9e-12 across MKL settings, measured);
    # from two gradients on it is 2.5e-16.
    "half-trace-no-grafting": dict(exponent=0.5, trace_scaling=True, grafting=None, eps=1e-6,
                                   start_preconditioning_step=2),
    "wd-no-bias-correction": dict(exponent=0.4, weight_decay=0.1, correct_bias=False, betas=(0.9, 0.99)),
}


@pytest.mark.parametrize("kw", SHAMPOO_CASES.values(), ids=SHAMPOO_CASES.keys())
def test_shampoo_bucketed_equals_unbucketed_float64(kw):
    init = init_values(SHAPES, seed=40)
    grads = open_loop_grads(SHAPES, STEPS, seed=41)
    make = lambda bucket: lambda ps: Shampoo(ps, lr=1e-2, precondition_frequency=3,  # noqa: E731
                                             max_precond_dim=MAX_DIM, bucket=bucket, **kw)
    a, oa = run(make(True), init, grads)
    b, ob = run(make(False), init, grads)
    assert len(oa._buckets) >= 5 and not ob._buckets  # the buckets were really used (and only there)
    assert all(isinstance(bk, Bucket) for bk in oa._buckets.values())
    assert max_rel(a, init) > 1e-3
    sensitivity = assert_well_posed(make(False), init, grads, TOL)
    assert max_rel(a, b) <= TOL, (max_rel(a, b), sensitivity)
    state_close(oa, a, ob, b, TOL)


EIGEN_CASES = {
    f"{fu}-{st}-{rf}": dict(factor_update=fu, statistics=st, refresh=rf, betas=(0.9, 0.95) if fu == "before" else (0.95, 0.95))
    for fu in ("after", "before") for st in ("running", "factors") for rf in ("eigh", "qr")
}
EIGEN_CASES["clip-wd-no-bias-correction"] = dict(clip_threshold=0.5, weight_decay=0.1, correct_bias=False,
                                                 betas=(0.9, 0.99), shampoo_beta=0.98)
EIGEN_CASES["householder"] = dict(refresh="qr", qr_method="householder")


@pytest.mark.parametrize("kw", EIGEN_CASES.values(), ids=EIGEN_CASES.keys())
def test_eigen_adafactor_bucketed_equals_unbucketed_float64(kw):
    shapes = SQUARE_SHAPES if kw.get("statistics") == "factors" else SHAPES
    init = init_values(shapes, seed=43)
    grads = open_loop_grads(shapes, STEPS, seed=42)
    make = lambda bucket: lambda ps: EigenAdafactor(ps, lr=1e-2, precondition_frequency=3,  # noqa: E731
                                                    max_precond_dim=MAX_DIM, bucket=bucket, **kw)
    a, oa = run(make(True), init, grads)
    b, ob = run(make(False), init, grads)
    assert len(oa._buckets) >= 4 and not ob._buckets
    assert all(torch.isfinite(x).all() for x in a)
    assert max_rel(a, init) > 1e-3
    sensitivity = assert_well_posed(make(False), init, grads, TOL)
    assert max_rel(a, b) <= TOL, (max_rel(a, b), sensitivity)
    state_close(oa, a, ob, b, TOL)


def test_claim1_trajectory_holds_bucketed():
    """Claim 1 (tests/test_equivalence.py) with both optimizers bucketed: two same-shape 16×16 layers."""
    from test_equivalence import EIGEN_ADAFACTOR_IDEAL, SHAMPOO_HALF, _train

    a, losses = _train(lambda ps: Shampoo(ps, bucket=True, **SHAMPOO_HALF))
    b, _ = _train(lambda ps: EigenAdafactor(ps, bucket=True, **EIGEN_ADAFACTOR_IDEAL))
    c, _ = _train(lambda ps: Shampoo(ps, bucket=False, **SHAMPOO_HALF))
    assert losses[-1] < 0.95 * losses[0]
    assert max(rel(x, y) for x, y in zip(a, b)) <= 1e-8
    # Bucketed vs per-parameter: this closed-loop run with eps = 0 inverse roots refreshed every step amplifies
    # round-off; a 1-ulp change of the data moves it by 2e-12 … 1.5e-11 across MKL settings (measured), so the
    # paths are compared at 1e-9 with a guard at 1e-10.
    moved, _ = _train(lambda ps: Shampoo(ps, bucket=False, **SHAMPOO_HALF), perturb=True)
    assert max(rel(x, y) for x, y in zip(c, moved)) <= 1e-10
    assert max(rel(x, y) for x, y in zip(a, c)) <= 1e-9


@pytest.mark.parametrize("cls,kw,names", [
    (Shampoo, {}, {"step", "exp_avg", "exp_avg_sq", "GG", "Q", "D"}),
    (EigenAdafactor, {}, {"step", "exp_avg", "exp_avg_sq_factors", "GG", "Q"}),
    (EigenAdafactor, dict(factor_update="before", refresh="qr"), {"step", "exp_avg", "exp_avg_sq_factors", "GG", "Q"}),
], ids=["shampoo", "eigen_adafactor", "eigen_adafactor-before-qr"])
def test_bucket_state_is_per_parameter_views_with_the_usual_names(cls, kw, names):
    params = [torch.nn.Parameter(torch.randn(6, 5)) for _ in range(3)]
    opt = cls(params, precondition_frequency=2, **kw)
    ref = cls([torch.nn.Parameter(torch.randn(6, 5))], precondition_frequency=2, bucket=False, **kw)
    for row in open_loop_grads([(6, 5)] * 3, 7, seed=43, dtype=torch.float32):
        for p, g in zip(params, row):
            p.grad = g
        opt.step()
        ref.param_groups[0]["params"][0].grad = row[0]
        ref.step()
    (bucket,) = opt._buckets.values()
    ref_state = ref.state[ref.param_groups[0]["params"][0]]
    for i, p in enumerate(params):
        st = opt.state[p]
        assert set(st) == set(ref_state) == names
        for key in names - {"step"}:
            if isinstance(st[key], torch.Tensor):
                assert st[key].shape == ref_state[key].shape
                assert st[key].data_ptr() == bucket.stacked[key][i].data_ptr()
            else:
                assert [None if x is None else tuple(x.shape) for x in st[key]] == \
                    [None if x is None else tuple(x.shape) for x in ref_state[key]]
                for x, s in zip(st[key], bucket.stacked[key]):
                    assert x.data_ptr() == s[i].data_ptr()
    assert [tuple(q.shape) for q in opt.state[params[0]]["Q"]] == [(6, 6), (5, 5)]


@pytest.mark.parametrize("cls,kw", [
    (Shampoo, dict(start_preconditioning_step=5)),  # Q and D go from None to bucket views at step 5
    (EigenAdafactor, dict(statistics="running")),
    (EigenAdafactor, dict(factor_update="before", refresh="qr")),
], ids=["shampoo", "eigen_adafactor", "eigen_adafactor-before-qr"])
def test_bucket_follows_changes_of_membership_and_of_state(cls, kw):
    """Parameters without a gradient, a load_state_dict, and a state tensor replaced from outside: the bucket
    is rebuilt from the current state each time, and the run still equals the per-parameter one."""
    shapes = [(6, 6)] * 3 + [(5,)] * 2  # square: full-rank factors from the first call (well posed)
    init = init_values(shapes, seed=44)
    grads = open_loop_grads(shapes, 26, seed=44)

    def drive(bucket):
        params = [torch.nn.Parameter(x.clone()) for x in init]
        make = lambda: cls(params, lr=1e-2, precondition_frequency=3, bucket=bucket, **kw)  # noqa: E731
        opt = make()
        for t, row in enumerate(grads):
            for i, (p, g) in enumerate(zip(params, row)):
                p.grad = None if (t in (5, 6) and i in (1, 3)) else g.clone()
            opt.step()
            if t == 9:
                saved = copy.deepcopy(opt.state_dict())
                opt = make()
                opt.load_state_dict(saved)
            if t == 13:
                st = opt.state[params[2]]
                st["exp_avg"] = st["exp_avg"].clone()  # no longer the bucket's view
            if t == 17:
                st = opt.state[params[0]]
                st["Q"] = [q.clone() for q in st["Q"]]  # a new list: no longer the bucket's
        return params, opt

    (a, oa), (b, _) = drive(True), drive(False)
    assert oa._buckets
    assert max(rel(x, y) for x, y in zip(a, b)) <= 1e-12
    assert max(rel(x, y) for x, y in zip(a, init)) > 1e-3


@pytest.mark.parametrize("cls,kw", [
    (Shampoo, {}), (Shampoo, dict(exponent=0.5, trace_scaling=True, grafting=None, eps=1e-6)),
    (EigenAdafactor, {}), (EigenAdafactor, dict(factor_update="before", refresh="qr", statistics="factors")),
], ids=["shampoo", "shampoo-half-trace", "eigen_adafactor", "eigen_adafactor-before-qr-factors"])
def test_bucketed_checkpoint_continues_bit_exactly(cls, kw):
    params = [torch.nn.Parameter(torch.randn(6, 6)) for _ in range(3)] + [torch.nn.Parameter(torch.randn(5))]
    n_buckets, same = resumes_bit_exactly(lambda ps: cls(ps, precondition_frequency=2, **kw), params)
    assert n_buckets and same
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("cls", [Shampoo, EigenAdafactor])
def test_low_precision_parameters_are_bucketed_with_float32_state(cls):
    shapes = [(6, 6), (6, 6), (7,), (7,)]
    init = init_values(shapes, seed=45, dtype=torch.bfloat16)
    grads = open_loop_grads(shapes, 12, seed=45, dtype=torch.float32)
    a, oa = run(lambda ps: cls(ps, lr=1e-2, precondition_frequency=3, bucket=True), init, grads)
    b, _ = run(lambda ps: cls(ps, lr=1e-2, precondition_frequency=3, bucket=False), init, grads)
    assert len(oa._buckets) == 2
    assert all(p.dtype == torch.bfloat16 for p in a)
    assert all(oa.state[p]["exp_avg"].dtype == torch.float32 for p in a)
    # float32 round-off of the two paths, then rounding into bf16 (an ulp is 2^-8 relative)
    assert max(rel(x, y) for x, y in zip(a, b)) <= 1e-2


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
    lam, Q = kron.eigh_descending(P, return_eigenvalues=True)
    assert bool((lam[:, :-1] >= lam[:, 1:]).all())
    tol = 1e-12
    for i in range(4):
        lam_i, Q_i = kron.eigh_descending(P[i], return_eigenvalues=True)
        _eigh_agrees(lam[i], Q[i], lam_i, Q_i, P[i], ranks[i], tol)
        # well posed: a 1-ulp change of the matrix moves what is compared far less than tol
        lam_p, Q_p = kron.eigh_descending(one_ulp(P[i], seed=i) if i != 2 else P[i], return_eigenvalues=True)
        _eigh_agrees(lam_p, Q_p, lam_i, Q_i, P[i], ranks[i], tol / 10)


def test_eigh_descending_on_a_stack_falls_back_per_matrix():
    """A matrix eigh cannot handle (NaN) goes through kron.eigh_descending's fallback chain (the identity, with
    a warning); the others are still decomposed."""
    g = torch.Generator().manual_seed(47)
    U = torch.linalg.qr(torch.randn(3, 6, 6, generator=g, dtype=F64)).Q
    P = U @ torch.diag_embed(torch.logspace(1, -1, 6, dtype=F64).expand(3, 6)) @ U.mT
    P[1, 0, 0] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lam, Q = kron.eigh_descending(P, return_eigenvalues=True)
    assert any("identity" in str(w.message) for w in caught)
    assert torch.equal(Q[1], torch.eye(6, dtype=F64))
    for i in (0, 2):
        lam_i, Q_i = kron.eigh_descending(P[i], return_eigenvalues=True)
        _eigh_agrees(lam[i], Q[i], lam_i, Q_i, P[i], 6, 1e-12)


def test_bucket_keyword_is_in_the_param_groups():
    p = torch.nn.Parameter(torch.zeros(3, 3))
    assert Shampoo([p]).param_groups[0]["bucket"] is True
    assert EigenAdafactor([p], bucket=False).param_groups[0]["bucket"] is False


# --------------------------------------------------------------------------------------------------------
# The benchmark, end to end at a smoke-test size (no timing asserted)
# --------------------------------------------------------------------------------------------------------
def _load_benchmark(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_bucketing_benchmark_runs_end_to_end(capsys):
    """Two layers (tiny2): every matrix shape is a bucket of two, so bucket=True really stacks; with
    max_precond_dim 32 every rotated factor is full rank (well posed), so the float32 paths agree to round-off."""
    bench = _load_benchmark("bucketing")
    res = bench.run(bench.parse(["--params", "tiny2", "--f", "2", "--steps", "4", "--max-precond-dim", "32"]))
    assert [(r["optimizer"], r["bucket"]) for r in res["rows"]] == [
        ("shampoo", False), ("shampoo", True), ("eigen_adafactor", False), ("eigen_adafactor", True)]
    assert res["windows"] == 2
    for r in res["rows"]:
        assert r["ms_per_step"] > 0 and len(r["windows_ms"]) == 2
        if r["bucket"]:
            assert r["bucket_sizes"].count(2) >= 4  # the 4 matrix shapes of a layer, each stacked with its twin
            assert r["max_rel_diff_to_unbucketed"] <= 1e-4  # different code paths, the same numbers
        else:
            assert r["n_buckets"] == 0 and r["max_rel_diff_to_unbucketed"] == 0.0
    assert all(s["speedup"] > 0 for s in res["speedups"])
    assert bench.main(["--params", "tiny", "--f", "2", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "| shampoo |" in out and "| eigen_adafactor |" in out and "speed-up" in out
