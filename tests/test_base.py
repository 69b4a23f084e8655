"""soap_lab.optim.base: bad input (sparse, complex, NaN/Inf, bad hyperparameters), low precision, checkpoints,
any shape and dtype, the fast finiteness check and foreach weight step."""
import copy

import pytest
import torch
from hypothesis import given, HealthCheck, settings, strategies as st

from soap_lab import Adafactor, EigenAdafactor, Shampoo, SOAP
from soap_lab.optim import kron
from soap_lab.optim.base import LabOptimizer

from helpers import init_values, max_rel, one_ulp, open_loop_grads, run, shared_stacks


OPTIMIZERS = {
    "soap": lambda ps, **kw: SOAP(ps, precondition_frequency=2, **kw),
    "soap_factorized_one_sided": lambda ps, **kw: SOAP(ps, precondition_frequency=2, factorized=True, one_sided=True, **kw),
    "shampoo": lambda ps, **kw: Shampoo(ps, precondition_frequency=2, start_preconditioning_step=1, **kw),
    "adafactor": lambda ps, **kw: Adafactor(ps, **kw),
    "eigen_adafactor": lambda ps, **kw: EigenAdafactor(ps, precondition_frequency=2, **kw),
}

NAMES = sorted(OPTIMIZERS)

def _params(dtype=torch.float32, scale=1.0):
    return [torch.nn.Parameter(x * scale) for x in init_values([(6, 5), (5,), (3, 4, 2)], seed=0, dtype=dtype)]

def _feed(params, opt, steps, seed=0, grad_dtype=None):
    """Open-loop gradients, in the parameter's dtype; ``grad_dtype``: rounded to that dtype first (so a float32
    run can be fed exactly the gradients a low-precision run sees)."""
    for row in open_loop_grads([tuple(p.shape) for p in params], steps, seed=seed, dtype=torch.float32):
        for p, g in zip(params, row):
            p.grad = (g if grad_dtype is None else g.to(grad_dtype)).to(p.dtype)
        opt.step()

def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", NAMES)
def test_sparse_and_complex_gradients_raise_value_error_naming_the_parameter(name):
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = OPTIMIZERS[name]([p])
    p.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(ValueError, match=r"sparse.*param_groups\[0\]\['params'\]\[0\].*\(4, 3\)"):
        opt.step()
    c = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64))
    opt = OPTIMIZERS[name]([c])
    c.grad = torch.randn(4, 3, dtype=torch.complex64)
    with pytest.raises(ValueError, match=r"complex.*param_groups\[0\]\['params'\]\[0\]"):
        opt.step()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_gradient_raises_and_leaves_everything_untouched(name, bad):
    params = _params()
    opt = OPTIMIZERS[name](params)
    _feed(params, opt, 3)
    before_state = copy.deepcopy(opt.state_dict())
    before_params = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.randn_like(p)
    params[2].grad[1, 2, 0] = bad
    with pytest.raises(FloatingPointError, match=r"param_groups\[0\]\['params'\]\[2\].*at step \d"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before_params, params))
    after_state = opt.state_dict()
    for k, v in before_state["state"].items():
        for key, val in v.items():
            assert _same(val, after_state["state"][k][key]), key


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_gradient_can_skip_the_step(name):
    params = _params()
    opt = OPTIMIZERS[name](params, on_nonfinite="skip")
    _feed(params, opt, 2)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    opt.step()
    assert opt.skipped_steps == 1 and all(torch.equal(a, b) for a, b in zip(before, params))
    _feed(params, opt, 2, seed=1)
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_gradient_is_not_checked_with_ignore(name):
    """on_nonfinite="ignore" (for torch.compile): no check, no host sync; a NaN goes into the step as in torch's
    optimizers."""
    params = _params()
    opt = OPTIMIZERS[name](params, on_nonfinite="ignore")
    _feed(params, opt, 2)
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    opt.step()
    assert opt.skipped_steps == 0 and all(torch.isnan(p).any() for p in params)


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradients_never_crash(name):
    params = _params()
    opt = OPTIMIZERS[name](params)
    for _ in range(5):
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
    assert all(torch.isfinite(p).all() for p in params)
    _feed(params, opt, 4)
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_parameters_use_fp32_state(name, dtype):
    """Low-precision weights, float32 state: the run equals a float32 run up to rounding the weights once per
    step. Small weights and a large lr make the movement dwarf that bound, so a path that never updated (or
    updated in low precision) fails."""
    steps = 6
    params = _params(dtype, scale=0.1)
    ref = [torch.nn.Parameter(p.detach().float()) for p in params]
    start = [p.detach().float().clone() for p in params]
    opt, ref_opt = OPTIMIZERS[name](params, lr=0.1), OPTIMIZERS[name](ref, lr=0.1)
    _feed(params, opt, steps)
    _feed(ref, ref_opt, steps, grad_dtype=dtype)  # the same (rounded) gradients
    for p, r, p0 in zip(params, ref, start):
        assert p.dtype == dtype and torch.isfinite(p).all()
        # Gradients are open loop, so the runs differ only by rounding the weights once per step (≤ ulp/2 each,
        # plus weight decay acting on the rounded weights): 2× that as the bound.
        bound = steps * torch.finfo(dtype).eps * float(r.detach().abs().max())
        moved = float((r.detach() - p0).abs().max())
        assert moved >= 5 * bound, (moved, bound)
        assert float((p.detach().float() - r.detach()).abs().max()) <= bound
    for st_ in opt.state.values():
        for v in st_.values():
            for x in (v if isinstance(v, list) else [v]):
                if isinstance(x, torch.Tensor) and x.is_floating_point():
                    assert x.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_continues_bit_exactly(name, dtype):
    params = _params(dtype)
    opt = OPTIMIZERS[name](params)
    _feed(params, opt, 5)
    saved_params = [p.detach().clone() for p in params]
    saved = copy.deepcopy(opt.state_dict())
    _feed(params, opt, 6, seed=9)
    fresh = [torch.nn.Parameter(x.clone()) for x in saved_params]
    fresh_opt = OPTIMIZERS[name](fresh)
    fresh_opt.load_state_dict(saved)
    _feed(fresh, fresh_opt, 6, seed=9)
    assert all(torch.equal(a, b) for a, b in zip(params, fresh))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(1, 7), min_size=0, max_size=4).map(tuple),
    max_dim=st.sampled_from([0, 3, 6, 10000]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    name=st.sampled_from(NAMES),
    merge=st.booleans(),
    precondition_1d=st.booleans(),
)
def test_property_any_shape_and_dtype(shape, max_dim, dtype, name, merge, precondition_1d):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(shape, dtype=dtype))
    kw = dict(max_precond_dim=max_dim, precondition_1d=precondition_1d) if name != "adafactor" else {}
    if name.startswith("soap"):
        kw["merge_dims"] = merge
    opt = OPTIMIZERS[name]([p], **kw)
    for _ in range(4):
        p.grad = torch.randn(shape, dtype=dtype)
        opt.step()
    assert p.shape == shape and p.dtype == dtype and torch.isfinite(p).all()
    st_ = opt.state[p]
    for q in st_.get("Q") or []:
        if q is not None:
            assert q.dtype == kron.state_dtype_for(dtype) and q.shape[0] <= max(max_dim, 1) * 7**3
            eye = torch.eye(q.shape[0], dtype=q.dtype)
            assert float((q.T @ q - eye).abs().max()) < 1e-4
    for P in st_.get("GG") or []:
        if P is not None:
            # symmetric up to round-off: a GEMM's error in entry (i, j) is bounded relative to Σ_k |a_ik||a_jk|,
            # not to |c_ij| (an elementwise-relative test fails on small off-diagonal entries on some CPUs)
            bound = 64 * torch.finfo(P.dtype).eps * float(P.diagonal().abs().max())
            assert P.shape[0] <= max_dim and float((P - P.T).abs().max()) <= bound


def test_invalid_hyperparameters_are_rejected():
    p = [torch.nn.Parameter(torch.zeros(2, 2))]
    with pytest.raises(ValueError, match="learning rate"):
        SOAP(p, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        SOAP(p, betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="refresh"):
        SOAP(p, refresh="svd")
    with pytest.raises(ValueError, match="precondition_frequency"):
        SOAP(p, precondition_frequency=0)
    with pytest.raises(ValueError, match="on_nonfinite"):
        SOAP(p, on_nonfinite="warn")


def test_foreach_elementwise_path_equals_plain_path_bit_for_bit():
    """With no rotation (max_precond_dim=0) a bucket is pure elementwise work: stacked ops and _foreach_add_
    must give exactly the per-parameter path's float32 numbers (weight decay included)."""
    shapes = [(6, 5), (6, 5), (6, 5), (7,), (7,)]
    init = [torch.randn(*s) for s in shapes]
    grads = open_loop_grads(shapes, 12, seed=34, dtype=torch.float32)
    kw = dict(lr=1e-2, weight_decay=0.1, max_precond_dim=0)
    a, oa = run(lambda ps: SOAP(ps, bucket=True, **kw), init, grads)
    b, _ = run(lambda ps: SOAP(ps, bucket=False, **kw), init, grads)
    assert shared_stacks(oa)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_fast_finiteness_check_matches_isfinite():
    big = torch.full((4,), 3e38)  # finite, but its L2 norm overflows: re-checked exactly
    cases = [torch.randn(5), big, torch.tensor([1.0, float("nan")]), torch.tensor([float("-inf"), 0.0]),
             torch.randn(3, 2).to(torch.bfloat16), torch.tensor(2.0)]
    expected = [bool(torch.isfinite(g).all()) for g in cases]
    assert LabOptimizer._finite_flags(cases).tolist() == expected == [True, True, False, False, True, True]
    assert LabOptimizer._finite_flags(cases + [torch.zeros(0)]).tolist() == expected + [True]



@pytest.mark.parametrize("case", ["soap", "soap_factorized_original", "shampoo", "eigen_adafactor", "adafactor"])
def test_checkpoint_written_before_the_redesign_loads_and_continues(case):
    """tests/fixtures/checkpoints/v1.pt holds state_dicts written by the per-parameter/bucketed core of commit
    2ff7716 (make_v1.py) and the trajectory that core followed after them; this core loads them (the param groups
    lack newer options, Adafactor's state lacks GG/Q) and continues on the same trajectory."""
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
    sys.path.insert(0, str(here))
    try:
        import make_v1
    finally:
        sys.path.remove(str(here))
    saved = torch.load(here / "v1.pt", weights_only=False)["cases"][case]
    cls, kw = make_v1.CASES[case]

    def resume(perturb):
        params = [torch.nn.Parameter(perturb(x, i)) for i, x in enumerate(saved["params"])]
        opt = cls(params, **kw)
        opt.load_state_dict(saved["state_dict"])
        for t, row in enumerate(saved["grads_after"]):
            for i, (p, g) in enumerate(zip(params, row)):
                p.grad = perturb(g, 100 * (t + 1) + i)
            opt.step()
        return params, opt

    params, opt = resume(lambda x, i: x.clone())
    nudged, _ = resume(lambda x, i: one_ulp(x, seed=i))  # the guard: 1 ulp on every input
    assert max_rel(saved["final"], saved["params"]) > 1e-3  # the continuation is not vacuous
    assert max_rel(nudged, params) <= 1e-11
    assert max_rel(params, saved["final"]) <= 1e-10
    assert set(opt.state[params[0]]) >= {"step", "exp_avg", "GG", "Q"}
