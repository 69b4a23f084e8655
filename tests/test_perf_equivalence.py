"""The fast paths of issue 5 give the numbers of the plain ones: buckets, Cholesky-QR, syrk, foreach.

No timing assertions here (benchmarks/step_time.py measures); every check is an equality or a float64
tolerance against the readable per-parameter path or a LAPACK reference.
"""
import copy

import pytest
import torch

from soap_lab import SOAP, EigenAdafactor, kron
from soap_lab.optim.base import LabOptimizer
from helpers import (assert_well_posed, init_values, max_rel, open_loop_grads, rel, resumes_bit_exactly, run,
                     state_close, ulp_sensitivity)

F64 = torch.float64

# Same-shape matrices (buckets of 2 and 3), a transposed shape, a one-sided layout, vectors (AdamW, bucketed),
# a 3-D tensor (per-parameter path). Well posed: with max_precond_dim=10 every rotated side is the short side
# (or a square), so each factor is full rank with separated eigenvalues from the first call (helpers.open_loop_grads)
# and the bases are decided by the data, not by round-off; the guard below measures it.
SHAPES = [(12, 8), (12, 8), (8, 12), (7, 7), (7, 7), (7, 7), (40, 6), (9,), (9,), (3, 4, 2)]
MAX_DIM = 10
TOL = 1e-12


@pytest.mark.parametrize("kw", [
    dict(precondition_frequency=2),
    dict(precondition_frequency=3, weight_decay=0.1, betas=(0.9, 0.99)),
    dict(precondition_frequency=1, normalize_grads=True, qr_method="householder", betas=(0.95, 0.9)),
    dict(precondition_frequency=2, one_sided=True, refresh="eigh", betas=(0.8, 0.95)),
    dict(precondition_frequency=3, correct_bias=False, shampoo_beta=0.99, betas=(0.9, 0.99)),
], ids=["f2", "f3-wd", "f1-normalize-householder", "one-sided-eigh", "no-bias-correction"])
def test_bucketed_equals_unbucketed_float64(kw):
    init = init_values(SHAPES, seed=30)
    grads = open_loop_grads(SHAPES, 14, seed=31)
    make = lambda bucket: lambda ps: SOAP(ps, lr=1e-2, bucket=bucket, max_precond_dim=MAX_DIM, **kw)  # noqa: E731
    a, oa = run(make(True), init, grads)
    b, ob = run(make(False), init, grads)
    assert len(oa._buckets) >= 3 and not ob._buckets  # the buckets were really used (and only there)
    assert max_rel(a, init) > 1e-3
    sensitivity = assert_well_posed(make(False), init, grads, TOL)
    assert max_rel(a, b) <= TOL, (max_rel(a, b), sensitivity)
    state_close(oa, a, ob, b, TOL)


def test_bucket_state_is_per_parameter_views_with_the_reference_names():
    params = [torch.nn.Parameter(torch.randn(6, 5)) for _ in range(3)]
    opt = SOAP(params, precondition_frequency=2)
    for row in open_loop_grads([(6, 5)] * 3, 5, seed=32, dtype=torch.float32):
        for p, g in zip(params, row):
            p.grad = g
        opt.step()
    (bucket,) = opt._buckets.values()
    for i, p in enumerate(params):
        st = opt.state[p]
        assert set(st) == {"step", "exp_avg", "exp_avg_sq", "GG", "Q"}
        assert st["exp_avg"].shape == (6, 5) and st["exp_avg"].data_ptr() == bucket.M[i].data_ptr()
        assert [tuple(q.shape) for q in st["Q"]] == [(6, 6), (5, 5)]
        assert st["Q"][1].data_ptr() == bucket.Q[1][i].data_ptr()


def test_bucket_follows_changes_of_membership_and_of_state():
    """Parameters without a gradient, a load_state_dict, and a state tensor replaced from outside: the bucket
    is rebuilt from the current state each time, and the run still equals the per-parameter one."""
    shapes = [(6, 6)] * 3  # square: full-rank factors from the first call (well posed)
    init = init_values(shapes, seed=33)
    grads = open_loop_grads(shapes, 16, seed=33)

    def drive(bucket):
        params = [torch.nn.Parameter(x.clone()) for x in init]
        opt = SOAP(params, lr=1e-2, precondition_frequency=3, bucket=bucket)
        for t, row in enumerate(grads):
            for i, (p, g) in enumerate(zip(params, row)):
                p.grad = None if (t in (5, 6) and i == 1) else g.clone()
            opt.step()
            if t == 8:
                saved = copy.deepcopy(opt.state_dict())
                opt = SOAP(params, lr=1e-2, precondition_frequency=3, bucket=bucket)
                opt.load_state_dict(saved)
            if t == 11:
                st = opt.state[params[2]]
                st["exp_avg"] = st["exp_avg"].clone()  # no longer the bucket's view
        return params

    a, b = drive(True), drive(False)
    assert max(rel(x, y) for x, y in zip(a, b)) <= 1e-12


def test_bucketed_checkpoint_continues_bit_exactly():
    params = [torch.nn.Parameter(torch.randn(6, 5)) for _ in range(3)] + [torch.nn.Parameter(torch.randn(5))]
    n_buckets, same = resumes_bit_exactly(lambda ps: SOAP(ps, precondition_frequency=2), params)
    assert n_buckets and same


def test_foreach_elementwise_path_equals_plain_path_bit_for_bit():
    """With no rotation (max_precond_dim=0) a bucket is pure elementwise work: stacked ops and _foreach_add_
    must give exactly the per-parameter path's float32 numbers (weight decay included)."""
    shapes = [(6, 5), (6, 5), (6, 5), (7,), (7,)]
    init = [torch.randn(*s) for s in shapes]
    grads = open_loop_grads(shapes, 12, seed=34, dtype=torch.float32)
    kw = dict(lr=1e-2, weight_decay=0.1, max_precond_dim=0)
    a, oa = run(lambda ps: SOAP(ps, bucket=True, **kw), init, grads)
    b, _ = run(lambda ps: SOAP(ps, bucket=False, **kw), init, grads)
    assert oa._buckets
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_fast_finiteness_check_matches_isfinite():
    big = torch.full((4,), 3e38)  # finite, but its L2 norm overflows: re-checked exactly
    cases = [torch.randn(5), big, torch.tensor([1.0, float("nan")]), torch.tensor([float("-inf"), 0.0]),
             torch.randn(3, 2).to(torch.bfloat16), torch.tensor(2.0)]
    expected = [bool(torch.isfinite(g).all()) for g in cases]
    assert LabOptimizer._finite_flags(cases).tolist() == expected == [True, True, False, False, True, True]
    assert LabOptimizer._finite_flags(cases + [torch.zeros(0)]).tolist() == expected + [True]


# --------------------------------------------------------------------------------------------------------
# Orthonormalization
# --------------------------------------------------------------------------------------------------------
def _sign_aligned(Q, H):
    return H * torch.sign((Q * H).sum(-2, keepdim=True))


def _conditioned(n, cond, dtype, batch=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=F64)).Q
    W = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=F64)).Q
    s = torch.logspace(0, -torch.log10(torch.tensor(float(cond))).item(), n, dtype=F64)
    return ((U * s) @ W.mT).to(dtype)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (F64, 1e-12)])
@pytest.mark.parametrize("n", [5, 48, 520])  # 520: the blocked Cholesky and syrk paths
def test_cholesky_qr_equals_householder_up_to_column_signs(n, dtype, atol):
    g = torch.Generator().manual_seed(n)
    X = (torch.randn(3, n, n, generator=g, dtype=F64) / n**0.5 + 2 * torch.eye(n, dtype=F64)).to(dtype)  # cond ≈ 3
    kron.ORTHO_STATS.clear()
    Q = kron.orthonormalize(X, "cholesky")
    H = kron.orthonormalize(X, "householder")
    assert kron.ORTHO_STATS["cholesky_fallback"] == 0 and kron.ORTHO_STATS["householder"] == 3
    assert Q.dtype == dtype and Q.shape == X.shape
    assert float((Q - _sign_aligned(Q, H)).abs().max()) <= atol
    eye = torch.eye(n, dtype=dtype)
    assert float((Q.mT @ Q - eye).abs().max()) <= 10 * torch.finfo(dtype).eps * n**0.5
    # Gram-Schmidt order is kept: Qᵀ X is upper triangular with a positive diagonal
    R = Q.mT @ X
    assert float(R.tril(-1).abs().max()) <= atol * float(R.abs().max())
    assert bool((R.diagonal(dim1=-2, dim2=-1) > 0).all())
    # an unbatched matrix takes the same path
    assert float((kron.orthonormalize(X[0], "cholesky") - Q[0]).abs().max()) <= atol


def test_cholesky_qr_falls_back_to_householder_when_it_loses_accuracy():
    # cond 1e6 in float32: Cholesky of XᵀX (cond 1e12 > 1/eps) breaks down or loses orthogonality.
    good = _conditioned(64, 10.0, torch.float32, seed=1)
    bad = _conditioned(64, 1e6, torch.float32, seed=2)
    zero = torch.zeros(64, 64)  # an all-zero factor times Q: no column to normalize
    X = torch.stack([good, bad, zero])
    kron.ORTHO_STATS.clear()
    Q = kron.orthonormalize(X, "cholesky")
    assert kron.ORTHO_STATS["cholesky_fallback"] == 2
    assert kron.ORTHO_STATS["cholesky_1"] + kron.ORTHO_STATS["cholesky_2"] == 1
    assert torch.equal(Q[1], kron.householder_q(bad)) and torch.equal(Q[2], kron.householder_q(zero))
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
    kron.ORTHO_STATS.clear()
    Q = kron.orthonormalize(X, "cholesky")
    assert kron.ORTHO_STATS["cholesky_2"] == 2 and kron.ORTHO_STATS["cholesky_1"] == int(mixed)
    assert kron.ORTHO_STATS["cholesky_fallback"] == 0
    H = kron.householder_q(X)
    assert float((Q.mT @ Q - torch.eye(128)).abs().max()) <= 10 * torch.finfo(torch.float32).eps * 128**0.5
    assert float((Q - _sign_aligned(Q, H)).abs().max()) <= 300 * 2e-5  # the problem's own sensitivity, cond·eps


def test_cholesky_qr_in_float64_handles_what_float32_cannot():
    X = _conditioned(64, 1e6, F64, seed=3)
    kron.ORTHO_STATS.clear()
    Q = kron.orthonormalize(X, "cholesky")
    assert kron.ORTHO_STATS["cholesky_fallback"] == 0
    H = kron.householder_q(X)
    assert float((Q - _sign_aligned(Q, H)).abs().max()) <= 1e-8  # ~ cond · eps, the problem's own sensitivity


def test_orthonormalize_rejects_low_precision_and_unknown_methods():
    with pytest.raises(TypeError, match="float32 or float64"):
        kron.orthonormalize(torch.randn(4, 4).to(torch.bfloat16), "cholesky")
    with pytest.raises(ValueError, match="orthonormalization"):
        kron.orthonormalize(torch.randn(4, 4), "svd")
    with pytest.raises(ValueError, match="qr_method"):
        SOAP([torch.nn.Parameter(torch.zeros(2, 2))], qr_method="svd")


@pytest.mark.parametrize("method,qr_method,mixed", [("qr", "cholesky", True), ("qr", "cholesky", False),
                                                    ("qr", "householder", True), ("eigh", "cholesky", True)])
def test_refresh_into_the_old_basis_with_scratch_buffers_gives_the_same_bits(method, qr_method, mixed):
    """The bucketed SOAP refresh writes the new basis over the old one and takes its scratch space from a
    workspace; the allocating call is the reference. The batch mixes a stale basis (every matrix needs the
    second Cholesky-QR pass), a fresh one (one pass) and a zero factor (Householder fallback), so every
    branch writes through the buffers; unmixed, every matrix is stale (the second pass on the whole batch)."""
    from soap_lab.optim.buckets import Workspace

    g = torch.Generator().manual_seed(11)
    n = 96
    A = torch.randn(3, n, 3 * n, generator=g) * torch.logspace(0, -2, n).unsqueeze(-1)
    GG = [A @ A.mT / (3 * n), torch.stack([torch.eye(4)] * 3)]
    if mixed:
        GG[0][2] = 0.0
    early = A[:, :, : n // 2] @ A[:, :, : n // 2].mT  # a factor of fewer gradients: a stale basis
    Q = [torch.stack([kron.eigh_descending(x) for x in early]), torch.stack([torch.eye(4)] * 3)]
    if mixed:
        Q[0][1] = kron.eigh_descending(GG[0][1])  # current: one pass is enough
    ref_Q, ref_perms = kron.refresh_bases(GG, [q.clone() for q in Q], method, qr_method)
    ws = Workspace()
    for _ in range(2):  # the second call reuses the first one's (now dirty) buffers
        out = [q.clone() for q in Q]
        ptrs = [q.data_ptr() for q in out]
        kron.ORTHO_STATS.clear()
        new_Q, perms = kron.refresh_bases(GG, out, method, qr_method, out=out, work=ws.buffers)
        assert [q.data_ptr() for q in new_Q] == ptrs  # written in place
        for a, b in zip(new_Q + perms, ref_Q + ref_perms):
            assert torch.equal(a, b)
    if method == "qr" and qr_method == "cholesky":  # counts of the last call; the 4×4 identities take one pass
        expected = dict(cholesky_1=1 + 3, cholesky_2=1, cholesky_fallback=1) if mixed else dict(cholesky_1=3, cholesky_2=3)
        assert {k: v for k, v in kron.ORTHO_STATS.items() if v} == expected


@pytest.mark.parametrize("opt_cls", [SOAP, EigenAdafactor])
def test_bucketed_steps_allocate_nothing_of_state_size_refreshes_included(opt_cls):
    """The claim behind the CPU speed of the buckets: once the work buffers exist, neither an ordinary step nor
    a refresh step allocates a tensor anywhere near the size of a stacked state (fresh large allocations cost
    page faults on first touch). Allocations are read off the profiler; gradients are made outside it."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    b, m, n = 3, 96, 64
    params = [torch.nn.Parameter(torch.randn(m, n)) for _ in range(b)] + [torch.nn.Parameter(torch.randn(n))]
    kw = dict(refresh="qr") if opt_cls is EigenAdafactor else {}
    opt = opt_cls(params, precondition_frequency=3, **kw)

    def grads():
        for p in params:
            p.grad = torch.randn_like(p)

    for _ in range(6):  # init, steps 1-5 (first refresh at 3: the workspaces grow there)
        grads()
        opt.step()
    assert opt._buckets
    smallest_stack = b * m * n * 4  # bytes of the stacked momentum; the stacked factors are larger
    for t in (6, 7):  # a refresh step, then an ordinary one
        grads()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            opt.step()
        largest = max((e.cpu_memory_usage for e in prof.events()), default=0)
        assert largest < smallest_stack / 4, (t, largest, smallest_stack)


def test_orthonormalize_into_a_non_contiguous_out():
    X = _conditioned(32, 10.0, F64, batch=(2,), seed=4)
    out = torch.empty(2, 32, 32, dtype=F64).mT
    assert kron.orthonormalize(X, "cholesky", out=out) is out
    assert torch.equal(out, kron.orthonormalize(X, "cholesky"))


@pytest.mark.parametrize("batched", [True, False])
def test_permute_with_a_work_buffer_equals_the_allocating_path(batched):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 7, generator=g) if batched else torch.randn(5, 7, generator=g)
    lead = (3,) if batched else ()
    p0 = torch.argsort(torch.rand(*lead, 5, generator=g), dim=-1)
    p1 = torch.argsort(torch.rand(*lead, 7, generator=g), dim=-1)
    for perms in ([p0, p1], [p0, None], [None, p1]):
        ref = kron.permute_(x.clone(), perms)
        y = x.clone()
        assert kron.permute_(y, perms, work=torch.full_like(x, float("nan"))) is y
        assert torch.equal(y, ref)


@pytest.mark.parametrize("bucket", [True, False])
def test_soap_trajectory_does_not_depend_on_the_qr_method(bucket):
    """Cholesky-QR and Householder differ in round-off and column signs; SOAP's update does not depend on the
    signs (V is per coordinate and squared, the momentum is rotated through Q), so the runs agree."""
    shapes = [(10, 6), (10, 6), (6, 6), (5,)]  # max_precond_dim 8: the tall layers rotate their short side only
    init = init_values(shapes, seed=35)
    grads = open_loop_grads(shapes, 20, seed=35)
    kw = dict(lr=1e-2, precondition_frequency=2, bucket=bucket, max_precond_dim=8)
    kron.ORTHO_STATS.clear()
    a, _ = run(lambda ps: SOAP(ps, qr_method="cholesky", **kw), init, grads)
    assert kron.ORTHO_STATS["cholesky_1"] + kron.ORTHO_STATS["cholesky_2"] > 0
    b, _ = run(lambda ps: SOAP(ps, qr_method="householder", **kw), init, grads)
    assert_well_posed(lambda ps: SOAP(ps, qr_method="householder", **kw), init, grads, 1e-10)
    assert max(rel(x, y) for x, y in zip(a, b)) <= 1e-10
    assert max(rel(x, y) for x, y in zip(a, init)) > 1e-3


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


# --------------------------------------------------------------------------------------------------------
# syrk
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,k", [(7, 3), (600, 40), (1100, 30)])
def test_syrk_equals_the_full_product_and_is_symmetric(n, k):
    A = torch.randn(2, n, k, dtype=F64)
    C0 = torch.randn(2, n, n, dtype=F64)
    C0 = C0 + C0.mT
    C = kron.syrk_(C0.clone(), A, 0.9, 0.1)
    assert rel(C, 0.9 * C0 + 0.1 * A @ A.mT) <= 1e-14
    assert rel(C, C.mT) <= 1e-15
    if n >= kron.SYRK_BLOCK_MIN:
        h = n // 2
        assert torch.equal(C[:, :h, h:], C[:, h:, :h].mT)  # only the lower block was computed
    C2 = kron.syrk_(C0[0].clone(), A[0], 0.9, 0.1)  # unbatched
    assert rel(C2, C[0]) <= 1e-14
    fresh = kron.syrk_(torch.full((n, n), float("nan"), dtype=F64), A[0])  # beta=0 ignores the old content
    assert rel(fresh, A[0] @ A[0].T) <= 1e-14
