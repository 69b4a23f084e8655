"""Shared test helpers: open-loop gradients and relative errors."""
import torch


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    d = max(float(a.norm()), float(b.norm()))
    return 0.0 if d == 0 else float((a - b).norm()) / d


def open_loop_grads(shapes, steps, seed=0, dtype=torch.float64, scale=1.0):
    """Gradients that do not depend on the parameters, with anisotropic structure (so rotations matter)."""
    g = torch.Generator().manual_seed(seed)
    mixers = []
    for s in shapes:
        if len(s) == 2:
            A = torch.randn(s[0], s[0], generator=g, dtype=torch.float64) / s[0] ** 0.5
            B = torch.randn(s[1], s[1], generator=g, dtype=torch.float64) / s[1] ** 0.5
            mixers.append((A, B))
        else:
            mixers.append(None)
    out = []
    for _ in range(steps):
        row = []
        for s, mix in zip(shapes, mixers):
            x = torch.randn(*s, generator=g, dtype=torch.float64) * scale
            if mix is not None:
                x = mix[0] @ x @ mix[1] + 0.1 * x
            row.append(x.to(dtype))
        out.append(row)
    return out


def run(opt_factory, init, grads):
    """Feed `grads` to fresh parameters (copies of `init`) through opt_factory(params); return the parameters."""
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = opt_factory(params)
    for row in grads:
        for p, gr in zip(params, row):
            p.grad = gr.clone().to(p.dtype)
        opt.step()
    return params, opt


def resumes_bit_exactly(make, params, steps=5):
    """Run ``steps`` open-loop steps, checkpoint (parameters + ``state_dict``), run ``steps`` more; then rebuild
    the optimizer with ``make`` on copies of the checkpointed parameters, load the state and run the same
    ``steps``. Returns (the optimizer after the first run's first half, whether both ends are bit-identical)."""
    import copy

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
    n_buckets = len(opt._buckets) if hasattr(opt, "_buckets") else 0
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
