"""Shared test helpers: well-posed open-loop gradients, seeded initial values, relative errors, and the
one-ulp guard that every tight numerical comparison uses to prove its problem is well posed.

Why the guard: two code paths (bucketed vs per-parameter, ours vs the reference) can only be compared tightly
where the inputs decide the answer. A rank-deficient Kronecker factor's null-space eigenvectors are decided by
round-off (and MKL's round-off changes with the CPU and with memory alignment unless ``MKL_CBWR`` is set), so a
comparison built on one passes on one machine and fails on another. :func:`ulp_sensitivity` reruns a path with
every input moved by one ulp: if that moves the result by nearly the tolerance, the test measures round-off, not
the code, and must be redesigned (see README "Numerical tests").
"""
import copy
import math

import torch

F64 = torch.float64


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    d = max(float(a.norm()), float(b.norm()))
    return 0.0 if d == 0 else float((a - b).norm()) / d


def max_rel(xs, ys):
    """Worst relative difference over two lists of tensors."""
    return max(rel(x, y) for x, y in zip(xs, ys))


def init_values(shapes, seed=0, dtype=F64):
    """Seeded initial parameter values (tests never depend on the global RNG or on test order)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=F64).to(dtype) for s in shapes]


def _orthogonal(n, g):
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64)).Q


def open_loop_grads(shapes, steps, seed=0, dtype=torch.float64, scale=1.0):
    """Gradients that do not depend on the parameters, built so that every Kronecker factor they feed is full
    rank with separated eigenvalues wherever the shape allows it (golden data v2's construction).

    For a tensor of shape (n_0, …, n_k): G_t = (S ⊙ Z_t) ×_0 U_0 … ×_k U_k with fixed orthogonal U_d, a Gaussian
    Z_t and S = s_0 ⊗ … ⊗ s_k, each s_d geometric from 1.5 down to 0.5. The mode-d factor E[G_(d) G_(d)ᵀ] is then
    U_d diag(s_d² · const) U_dᵀ: its eigenvalues are separated by a ratio (1/3)^(2/(n_d−1)) per step and its
    eigenvectors are decided by the data. A single call's factor G_(d) G_(d)ᵀ is full rank only when
    n_d ≤ ∏ other sizes: a tight comparison must use shapes where every *preconditioned* dimension satisfies
    that (square matrices; a non-square matrix rotated only on its short side).
    """
    g = torch.Generator().manual_seed(seed)
    mixers = []
    for s in shapes:
        bases = [_orthogonal(n, g) for n in s]
        S = torch.ones((), dtype=F64)
        for n in s:
            S = S.unsqueeze(-1) * torch.logspace(math.log10(1.5), math.log10(0.5), n, dtype=F64)
        mixers.append((bases, S))
    out = []
    for _ in range(steps):
        row = []
        for s, (bases, S) in zip(shapes, mixers):
            x = S * torch.randn(*s, generator=g, dtype=F64) * scale
            for d, U in enumerate(bases):
                x = torch.movedim(torch.movedim(x, d, -1) @ U.T, -1, d)
            row.append(x.to(dtype))
        out.append(row)
    return out


def one_ulp(x, seed=0):
    """``x`` with every entry moved by one ulp up or down (random, seeded): the smallest change of the input."""
    g = torch.Generator().manual_seed(seed)
    up = torch.randint(0, 2, x.shape, generator=g, dtype=torch.bool).to(x.device)
    inf = torch.full_like(x, math.inf)
    return torch.nextafter(x, torch.where(up, inf, -inf))


def run(opt_factory, init, grads):
    """Feed `grads` to fresh parameters (copies of `init`) through opt_factory(params); return the parameters."""
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = opt_factory(params)
    for row in grads:
        for p, gr in zip(params, row):
            p.grad = gr.clone().to(p.dtype)
        opt.step()
    return params, opt


def ulp_sensitivity(opt_factory, init, grads, seed=0):
    """How far ``run(opt_factory, init, grads)`` moves (worst relative change of a parameter) when the initial
    values and every gradient are moved by one ulp. A comparison with tolerance ``tol`` is well posed only if
    this is far below ``tol``."""
    base, _ = run(opt_factory, init, grads)
    k = iter(range(seed, seed + 10**6))
    pinit = [one_ulp(x, next(k)) for x in init]
    pgrads = [[one_ulp(x, next(k)) for x in row] for row in grads]
    moved, _ = run(opt_factory, pinit, pgrads)
    return max_rel(base, moved)


def assert_well_posed(opt_factory, init, grads, tol, margin=10.0):
    """The guard of a tight comparison: a one-ulp change of the inputs moves the reference path by at most
    ``tol / margin``. Returns the measured sensitivity (for the failure message of the comparison itself)."""
    s = ulp_sensitivity(opt_factory, init, grads)
    assert s <= tol / margin, (
        f"ill-posed comparison: a 1-ulp change of the inputs moves the result by {s:.2e}, "
        f"not far below the tolerance {tol:.0e}; the test compares round-off")
    return s


def shared_stacks(opt):
    """How many of the optimizer's stacks hold more than one parameter (0 with ``bucket=False``)."""
    return sum(len(s) > 1 for s in opt._stacks.values()) if hasattr(opt, "_stacks") else 0


def resumes_bit_exactly(make, params, steps=5):
    """Run ``steps`` open-loop steps, checkpoint (parameters + ``state_dict``), run ``steps`` more; then rebuild
    the optimizer with ``make`` on copies of the checkpointed parameters, load the state and run the same
    ``steps``. Returns (the optimizer after the first run's first half, whether both ends are bit-identical).

    Bit equality is well posed here: both continuations run the same code on the same bits in one process."""
    shapes = [tuple(p.shape) for p in params]
    opt = make(params)

    def feed(ps, o, seed):
        for row in open_loop_grads(shapes, steps, seed=seed, dtype=torch.float32):
            for p, g in zip(ps, row):
                p.grad = g
            o.step()

    feed(params, opt, 0)
    saved_params = [p.detach().clone() for p in params]
    saved = copy.deepcopy(opt.state_dict())
    n_buckets = shared_stacks(opt)
    feed(params, opt, 9)
    fresh = [torch.nn.Parameter(x.clone()) for x in saved_params]
    fresh_opt = make(fresh)
    fresh_opt.load_state_dict(saved)
    feed(fresh, fresh_opt, 9)
    return n_buckets, all(torch.equal(a, b) for a, b in zip(params, fresh))


def state_close(opt_a, params_a, opt_b, params_b, tol):
    """Assert two optimizers hold the same state keys and step counts, and every state tensor (and every tensor in
    a per-dimension list such as GG, Q) agrees to ``tol`` in relative error."""
    worst = 0.0
    for pa, pb in zip(params_a, params_b):
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys()
        assert sa["step"] == sb["step"]
        for key, x in sa.items():
            y = sb[key]
            if isinstance(x, torch.Tensor):
                worst = max(worst, rel(x, y))
            elif isinstance(x, list):
                assert len(x) == len(y)
                for u, v in zip(x, y):
                    assert (u is None) == (v is None)
                    if u is not None:
                        worst = max(worst, rel(u, v))
            else:
                assert x == y
    assert worst <= tol, worst
