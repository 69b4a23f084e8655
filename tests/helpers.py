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
