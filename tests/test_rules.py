"""soap_lab.optim.rules: the rules inside the basis, on their own (each is tested in its optimizer too)."""
import math

import torch

from soap_lab.optim import rules
from soap_lab.optim.engine import BasisConfig
from soap_lab.optim.kron import KronLayout
from soap_lab.optim.stack import Stack
from soap_lab.optim.shampoo import ShampooConfig

F64 = torch.float64


def _stack(rule, shape=(4, 3), n=2):
    layout = KronLayout(shape, (True,) * len(shape))
    params = [torch.nn.Parameter(torch.zeros(shape, dtype=F64)) for _ in range(n)]
    states = []
    for _ in params:
        st = {"step": 0, "exp_avg": torch.zeros(shape, dtype=F64), "GG": [None] * len(shape), "Q": None}
        st.update(rule.init(layout, dtype=F64, device=torch.device("cpu")))
        states.append(st)
    return Stack(params, states, layout, tensors=("exp_avg",) + rule.tensors(states[0]),
                 lists=("GG", "Q") + rule.lists(states[0])), states


def test_adam_eps_conventions_differ_only_by_where_eps_sits():
    """The reference puts ε on √V before bias correction; Adam/Adafactor after it. Same direction at ε = 0."""
    g = torch.randn(2, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = {}
    for conv in rules.EPS_CONVENTIONS:
        for eps in (0.0, 1e-3):
            rule = rules.Adam(conv)
            s, _ = _stack(rule)
            s.M.copy_(g)
            n, scale = rule.direction(s, BasisConfig(eps=eps, betas=(0.9, 0.99)), 3, G=g, g_rot=g, m_rot=s.M,
                                      out=torch.empty_like(g), work=torch.empty_like(g))
            out[conv, eps] = n * scale
    assert float((out["reference", 0.0] - out["adam", 0.0]).abs().max()) <= 1e-14
    assert float((out["reference", 1e-3] - out["adam", 1e-3]).abs().max()) > 1e-6
    # and the reference's is Adam with ε_t = ε / √(1 − β2^t)
    rule = rules.Adam("adam")
    s, _ = _stack(rule)
    s.M.copy_(g)
    eps_t = 1e-3 / math.sqrt(1 - 0.99**3)
    n, _ = rule.direction(s, BasisConfig(eps=eps_t, betas=(0.9, 0.99)), 3, G=g, g_rot=g, m_rot=s.M,
                          out=torch.empty_like(g), work=torch.empty_like(g))
    assert float((n - out["reference", 1e-3]).abs().max()) <= 1e-12


def test_shampoo_scale_has_no_step_where_a_factor_has_no_curvature_and_the_trace_factor():
    rule = rules.ShampooRoots(exponent=0.5, trace_scaling=True, grafting=None, grafting_eps=1e-8)
    s, states = _stack(rule, shape=(3, 2), n=1)
    cfg = ShampooConfig(eps=0.0, correct_bias=False)
    lam, mu = torch.tensor([[4.0, 1.0, 0.0]], dtype=F64), torch.tensor([[9.0, 1.0]], dtype=F64)
    rule.on_new_basis(s, states, cfg, [lam, mu], t=1)
    scale = rule._scale(s, cfg, torch.zeros(1, 3, 2, dtype=F64))
    expected = torch.tensor([[1 / 6, 1 / 2], [1 / 3, 1.0], [0.0, 0.0]], dtype=F64) * math.sqrt(5.0)  # √Tr L = √5
    assert torch.allclose(scale[0], expected, rtol=1e-15, atol=0)
