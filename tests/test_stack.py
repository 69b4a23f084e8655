"""soap_lab.optim.stack: per-parameter state as views into the stacks, under the reference's names; rebuilds."""
import copy

import pytest
import torch

from soap_lab import EigenAdafactor, Shampoo, SOAP

from helpers import init_values, open_loop_grads, rel, shared_stacks


def test_bucket_state_is_per_parameter_views_with_the_reference_names():
    params = [torch.nn.Parameter(torch.randn(6, 5)) for _ in range(3)]
    opt = SOAP(params, precondition_frequency=2)
    for row in open_loop_grads([(6, 5)] * 3, 5, seed=32, dtype=torch.float32):
        for p, g in zip(params, row):
            p.grad = g
        opt.step()
    (bucket,) = opt._stacks.values()
    for i, p in enumerate(params):
        st = opt.state[p]
        assert set(st) == {"step", "exp_avg", "exp_avg_sq", "GG", "Q"}
        assert st["exp_avg"].shape == (6, 5) and st["exp_avg"].data_ptr() == bucket.M[i].data_ptr()
        assert [tuple(q.shape) for q in st["Q"]] == [(6, 6), (5, 5)]
        assert st["Q"][1].data_ptr() == bucket.Q[1][i].data_ptr()


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
    (bucket,) = opt._stacks.values()
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


def test_soap_stack_follows_changes_of_membership_and_of_state():
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
    assert shared_stacks(oa)
    assert max(rel(x, y) for x, y in zip(a, b)) <= 1e-12
    assert max(rel(x, y) for x, y in zip(a, init)) > 1e-3

