"""torch.compile of an optimizer step (issue 21, docs/compile.md): no graph break at ordinary steps, compiling stops
after the first refresh step, and the compiled step gives the eager step's numbers.

Counted with ``backend="eager"`` (dynamo's graph capture, no code generation: what breaks and recompiles is decided
there; inductor gives the same numbers to round-off, benchmarks/compile.py). What is expected, and why:

- graph breaks: only where the refreshes run (``EigenbasisOptimizer._refresh_all``, ``torch.compiler.disable``):
  eigh's fallback chain, Cholesky-QR's checks and the adaptive policy's decisions read values on the host. They are
  called outside the loops over stacks and only at refresh steps, so an ordinary step is one graph. Breaks are
  counted when a frame is compiled, once per frame that has the call on its stack.
- compiles of the step (``_update_all``): the first call (no state yet), the second (state, stacks and bases exist),
  the third (dynamo makes the step count a symbol after it changed once: "automatic dynamic"), the first refresh
  step (the variant that calls the refreshes); Shampoo's ordering adds its first basis (the stack is rebuilt with
  bases) and the first refresh after it. Then none, however many stacks: one graph steps every stack.
"""
import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list
from torch._dynamo.utils import counters

from soap_lab import EigenAdafactor, Shampoo, SOAP
from soap_lab.optim.engine import EigenbasisOptimizer

from helpers import assert_well_posed, init_values, max_rel, open_loop_grads, run

SHAPES = [(6, 6), (6, 6), (9, 5), (7,), (3, 4, 2)]  # four stacks: two 6×6 layers, a one-sided 9×5, a vector, a 3-D
F = 3
STEPS = 4 * F + 1

CASES = {
    "soap": (SOAP, {}, 4),
    "soap-adaptive": (SOAP, dict(refresh_policy="adaptive", refresh_tolerance=0.1), 4),
    "soap-original-momentum": (SOAP, dict(momentum_space="original", factorized=True), 4),
    "eigen_adafactor": (EigenAdafactor, {}, 4),
    "shampoo": (Shampoo, dict(start_preconditioning_step=2), 6),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _compiled_run(cls, kw, grads, init):
    """The optimizer's step under torch.compile (eager backend) on ``grads``: (params, frames compiled so far after
    each call)."""
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = cls(params, lr=1e-2, precondition_frequency=F, max_precond_dim=6, on_nonfinite="ignore", **kw)
    step = torch.compile(opt.step, backend="eager")
    frames = []
    for row in grads:
        for p, g in zip(params, row):
            p.grad = g.clone()
        step()
        frames.append(counters["frames"]["total"])
    return params, frames


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_compiled_step_breaks_only_at_refreshes_and_stops_compiling(case):
    cls, kw, compiles = case
    init = init_values(SHAPES, seed=1)
    grads = open_loop_grads(SHAPES, STEPS, seed=2)
    got, frames = _compiled_run(cls, kw, grads, init)
    reasons = list(counters["graph_break"])
    assert reasons and all("_refresh_all" in r for r in reasons), reasons
    assert frames[2 * F + 1] == frames[-1], frames  # nothing compiled after the second refresh step
    variants = len(_debug_get_cache_entry_list(EigenbasisOptimizer._update_all.__code__))
    assert variants <= compiles, variants  # see the module docstring: 1 + (3 or 5) recompiles, not per stack
    make = lambda ps: cls(ps, lr=1e-2, precondition_frequency=F, max_precond_dim=6, **kw)  # noqa: E731
    expected, _ = run(make, init, grads)
    sensitivity = assert_well_posed(make, init, grads, 1e-12)
    assert max_rel(got, expected) <= 1e-12, (max_rel(got, expected), sensitivity)
    assert max_rel(expected, init) > 1e-3


def test_the_finiteness_check_is_the_one_break_of_an_ordinary_step_unless_ignored():
    """on_nonfinite="raise" (the default) reads one flag on the host per step: the one graph break of an ordinary
    step (the rest is one graph); "ignore" checks nothing and has none. Vectors only: no refreshes after the first
    call's (which sets their bases, none, in ``_refresh_all``)."""
    shapes = [(7,), (7,), (5,)]
    init = init_values(shapes, seed=3)
    grads = open_loop_grads(shapes, 4, seed=4)
    breaks = {}
    for policy in ("raise", "ignore"):
        torch._dynamo.reset()
        counters.clear()
        params = [torch.nn.Parameter(x.clone()) for x in init]
        opt = SOAP(params, on_nonfinite=policy)
        step = torch.compile(opt.step, backend="eager")
        for row in grads:
            for p, g in zip(params, row):
                p.grad = g.clone()
            step()
        breaks[policy] = list(counters["graph_break"])
    assert all("_refresh_all" in r for r in breaks["ignore"]), breaks["ignore"]
    check = [r for r in breaks["raise"] if "_refresh_all" not in r]
    assert check and all("Data-dependent" in r or "item()" in r for r in check), check
