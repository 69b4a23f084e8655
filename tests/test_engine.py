"""soap_lab.optim.engine: stacked (bucket=True) and stacks of one (bucket=False) give the same numbers in float64,
checkpoints continue bit-exactly, low-precision parameters, no allocations of state size in a step."""
import pytest
import torch

from soap_lab import EigenAdafactor, Shampoo, SOAP
from soap_lab.optim.stack import Stack

from helpers import (assert_well_posed, init_values, max_rel, open_loop_grads, rel, resumes_bit_exactly, run,
                     shared_stacks, state_close)


# Same-shape matrices (stacks of 2 and 3), a transposed shape, a one-sided layout (40 > MAX_DIM), vectors
# (unrotated, stacked), a 3-D tensor. Well posed: with MAX_DIM = 10 every rotated side is a square's side or the
# short side, so each factor is full rank with separated eigenvalues from the first call
# (helpers.open_loop_grads); each test measures its 1-ulp sensitivity (helpers.assert_well_posed).
SHAPES = [(12, 8), (12, 8), (8, 12), (7, 7), (7, 7), (7, 7), (40, 6), (9,), (9,), (3, 4, 2)]
# statistics="factors" reads Adafactor's statistics off the factors, diag(Qᵀ GG Q): that idealized form needs
# full-rank factors in *both* directions, so it runs on square layers, plus the one-sided layout (which falls
# back to the running statistics), vectors and the 3-D tensor.
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

EIGEN_CASES = {
    f"{fu}-{st}-{rf}": dict(factor_update=fu, statistics=st, refresh=rf, betas=(0.9, 0.95) if fu == "before" else (0.95, 0.95))
    for fu in ("after", "before") for st in ("running", "factors") for rf in ("eigh", "qr")
}

EIGEN_CASES["clip-wd-no-bias-correction"] = dict(clip_threshold=0.5, weight_decay=0.1, correct_bias=False,
                                                 betas=(0.9, 0.99), shampoo_beta=0.98)

EIGEN_CASES["householder"] = dict(refresh="qr", qr_method="householder")


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
    assert shared_stacks(oa) >= 3 and shared_stacks(ob) == 0  # stacks were really shared (and only there)
    assert max_rel(a, init) > 1e-3
    sensitivity = assert_well_posed(make(False), init, grads, TOL)
    assert max_rel(a, b) <= TOL, (max_rel(a, b), sensitivity)
    state_close(oa, a, ob, b, TOL)


@pytest.mark.parametrize("kw", SHAMPOO_CASES.values(), ids=SHAMPOO_CASES.keys())
def test_shampoo_bucketed_equals_unbucketed_float64(kw):
    init = init_values(SHAPES, seed=40)
    grads = open_loop_grads(SHAPES, STEPS, seed=41)
    make = lambda bucket: lambda ps: Shampoo(ps, lr=1e-2, precondition_frequency=3,  # noqa: E731
                                             max_precond_dim=MAX_DIM, bucket=bucket, **kw)
    a, oa = run(make(True), init, grads)
    b, ob = run(make(False), init, grads)
    assert shared_stacks(oa) >= 3 and shared_stacks(ob) == 0  # stacks were really shared (and only there)
    assert all(isinstance(bk, Stack) for bk in oa._stacks.values())
    assert max_rel(a, init) > 1e-3
    sensitivity = assert_well_posed(make(False), init, grads, TOL)
    assert max_rel(a, b) <= TOL, (max_rel(a, b), sensitivity)
    state_close(oa, a, ob, b, TOL)


@pytest.mark.parametrize("kw", EIGEN_CASES.values(), ids=EIGEN_CASES.keys())
def test_eigen_adafactor_bucketed_equals_unbucketed_float64(kw):
    shapes = SQUARE_SHAPES if kw.get("statistics") == "factors" else SHAPES
    init = init_values(shapes, seed=43)
    grads = open_loop_grads(shapes, STEPS, seed=42)
    make = lambda bucket: lambda ps: EigenAdafactor(ps, lr=1e-2, precondition_frequency=3,  # noqa: E731
                                                    max_precond_dim=MAX_DIM, bucket=bucket, **kw)
    a, oa = run(make(True), init, grads)
    b, ob = run(make(False), init, grads)
    assert shared_stacks(oa) >= 2 and shared_stacks(ob) == 0
    assert all(torch.isfinite(x).all() for x in a)
    assert max_rel(a, init) > 1e-3
    sensitivity = assert_well_posed(make(False), init, grads, TOL)
    assert max_rel(a, b) <= TOL, (max_rel(a, b), sensitivity)
    state_close(oa, a, ob, b, TOL)


def test_soap_stacked_checkpoint_continues_bit_exactly():
    params = [torch.nn.Parameter(torch.randn(6, 5)) for _ in range(3)] + [torch.nn.Parameter(torch.randn(5))]
    n_buckets, same = resumes_bit_exactly(lambda ps: SOAP(ps, precondition_frequency=2), params)
    assert n_buckets and same


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
    assert len(oa._stacks) == 2
    assert all(p.dtype == torch.bfloat16 for p in a)
    assert all(oa.state[p]["exp_avg"].dtype == torch.float32 for p in a)
    # float32 round-off of the two paths, then rounding into bf16 (an ulp is 2^-8 relative)
    assert max(rel(x, y) for x, y in zip(a, b)) <= 1e-2


def test_bucket_keyword_is_in_the_param_groups():
    p = torch.nn.Parameter(torch.zeros(3, 3))
    assert Shampoo([p]).param_groups[0]["bucket"] is True
    assert EigenAdafactor([p], bucket=False).param_groups[0]["bucket"] is False


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
    assert shared_stacks(opt)
    smallest_stack = b * m * n * 4  # bytes of the stacked momentum; the stacked factors are larger
    for t in (6, 7):  # a refresh step, then an ordinary one
        grads()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            opt.step()
        largest = max((e.cpu_memory_usage for e in prof.events()), default=0)
        assert largest < smallest_stack / 4, (t, largest, smallest_stack)

