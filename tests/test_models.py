"""soap_lab.train.models: the paper-style GPT, presets, and the teaching problem."""
import math

import pytest
import torch
import torch.nn as nn

from soap_lab.train.models import GPT, GPTConfig, PRESETS, anisotropic_regression, apply_rope, gpt_config, rope_tables


def tiny(vocab=64, **kw):
    torch.manual_seed(0)
    return GPT(gpt_config("tiny", vocab, **kw))


def test_shapes_and_loss_at_init():
    model = tiny(vocab=97)
    idx = torch.randint(0, 97, (3, 32))
    logits, loss = model(idx)
    assert logits.shape == (3, 32, 97) and loss is None
    logits, loss = model(idx[:, :20], idx[:, 1:21])
    assert logits.shape == (3, 20, 97) and loss.dim() == 0 and torch.isfinite(loss)
    assert abs(model.last_ce.item() - math.log(97)) < 0.05
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_causal():
    model = tiny().eval()
    idx = torch.randint(0, 64, (2, 32))
    logits, _ = model(idx)
    idx2 = idx.clone()
    idx2[:, 20] = (idx2[:, 20] + 1) % 64
    logits2, _ = model(idx2)
    assert torch.allclose(logits[:, :20], logits2[:, :20], atol=1e-6)
    assert not torch.allclose(logits[:, 20:], logits2[:, 20:], atol=1e-4)


def test_no_biases_untied_embeddings_qk_norm():
    model = tiny()
    names = [n for n, _ in model.named_parameters()]
    assert not any("bias" in n for n in names)
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.LayerNorm)):
            assert mod.bias is None
    assert model.tok_emb.weight is not model.lm_head.weight
    assert model.tok_emb.weight.data_ptr() != model.lm_head.weight.data_ptr()
    assert not torch.equal(model.tok_emb.weight, model.lm_head.weight)  # same shape (V, d), independent init
    attn = model.blocks[0].attn
    assert isinstance(attn.q_norm, nn.LayerNorm) and attn.q_norm.normalized_shape == (16,)
    assert isinstance(attn.k_norm, nn.LayerNorm)
    assert isinstance(tiny(qk_norm=False).blocks[0].attn.q_norm, nn.Identity)
    assert isinstance(model.ln_f, nn.LayerNorm)


def test_rope_relative_position_property():
    hd, T = 16, 40
    cos, sin = rope_tables(T, hd)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(hd, generator=g), torch.randn(hd, generator=g)
    rq = apply_rope(q.expand(T, hd), cos, sin)
    rk = apply_rope(k.expand(T, hd), cos, sin)
    scores = rq @ rk.T  # scores[i, j] = <R_i q, R_j k>
    for i, j, s in [(5, 2, 7), (30, 1, 3), (10, 10, 25)]:
        assert torch.allclose(scores[i, j], scores[i + s, j + s], atol=1e-4)
    assert not torch.allclose(scores[5, 2], scores[5, 3], atol=1e-3)  # but it does depend on i - j
    assert torch.allclose(rq.norm(dim=-1), q.norm().expand(T), atol=1e-5)  # a rotation
    assert torch.allclose(rq[0], q)  # position 0 is the identity


def test_z_loss_term():
    model = tiny()
    idx = torch.randint(0, 64, (2, 16))
    _, loss = model(idx, idx)
    ce, z = model.last_ce, model.last_z
    logits = model(idx)[0].float()
    lse = torch.logsumexp(logits, -1)
    assert torch.allclose(z, lse.square().mean())
    assert torch.allclose(ce, nn.functional.cross_entropy(logits.reshape(-1, 64), idx.reshape(-1)), atol=1e-6)
    assert torch.allclose(loss.detach(), ce + 1e-4 * z)
    assert z.item() > 1.0  # lse ~ ln(64) at init, so the term is not trivially zero
    model.config.z_loss = 0.0
    _, loss0 = model(idx, idx)
    assert torch.allclose(loss0.detach(), model.last_ce)


def test_bf16_autocast_cpu():
    model = tiny()
    idx = torch.randint(0, 64, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


def _expected_params(cfg: GPTConfig) -> int:
    d, L, V = cfg.d_model, cfg.n_layer, cfg.vocab_size
    hidden = int(cfg.mlp_ratio * d)
    per_layer = 3 * d * d + d * d + 2 * d * hidden + 2 * d + 2 * cfg.head_dim  # +LN weights, +qk-norm weights
    return 2 * V * d + L * per_layer + d


def test_param_counts_presets():
    for name in ("tiny", "cpu"):
        cfg = gpt_config(name, 81)
        model = GPT(cfg)
        assert model.num_params() == _expected_params(cfg)
        assert model.num_params(non_embedding=True) == model.num_params() - 2 * 81 * cfg.d_model
    assert 0.35e6 < GPT(gpt_config("cpu", 81)).num_params() < 0.6e6
    nominal = {"gpu": (10e6, 60e6), "210m": (200e6, 225e6), "360m": (350e6, 380e6), "660m": (640e6, 680e6)}
    for name, (lo, hi) in nominal.items():
        cfg = gpt_config(name, 32100)  # the T5 vocabulary
        assert 64 <= cfg.head_dim <= 128 and (name == "gpu" or cfg.seq_len == 1024)
        with torch.device("meta"):
            model = GPT(cfg)
        n = model.num_params()
        assert lo < n < hi, (name, n)
        assert n == _expected_params(cfg)


def test_gpt_config_errors_and_overrides():
    with pytest.raises(ValueError, match=r"'tiny'.*'660m'"):
        gpt_config("1b", 100)
    with pytest.raises(ValueError, match="unknown GPTConfig fields"):
        gpt_config("tiny", 100, n_layers=3)
    with pytest.raises(ValueError, match="divisible"):
        gpt_config("tiny", 100, n_head=3)
    cfg = gpt_config("cpu", 100, n_layer=2, dropout=0.1)
    assert (cfg.n_layer, cfg.dropout, cfg.d_model) == (2, 0.1, PRESETS["cpu"]["d_model"])
    assert set(PRESETS) == {"tiny", "cpu", "mini", "2L-d128", "2L-d256", "gpu", "210m", "360m", "660m"}


def test_training_reduces_loss_tiny():
    model = tiny(vocab=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.arange(32).remainder(16).repeat(4, 1)  # a perfectly predictable sequence
    first = None
    for _ in range(30):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else model.last_ce.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.last_ce.item() < 0.5 * first


# --- teaching problem -------------------------------------------------------------------------------

def test_anisotropic_regression_structure():
    prob = anisotropic_regression(m=16, n=12, condition=100.0, seed=0)
    X, Y, Ws, A, S = prob["X"], prob["Y"], prob["W_star"], prob["A"], prob["Sigma"]
    assert X.shape == (512, 12) and Y.shape == (512, 16) and Ws.shape == (16, 12) and prob["W0"].shape == (16, 12)
    assert prob["loss"](Ws).item() < 1e-8 and prob["min_loss"] < 1e-8
    ev = torch.linalg.eigvalsh(S.double())
    assert 90 < (ev.max() / ev.min()).item() < 110
    # the eigenbasis is not the coordinate basis: Sigma is far from diagonal
    assert (S - torch.diag(torch.diagonal(S))).norm() > 0.3 * S.norm()
    # gradient = A (W - W*) Sigma  (a Kronecker-structured Hessian)
    W = torch.randn(16, 12, requires_grad=True)
    prob["loss"](W).backward()
    assert torch.allclose(W.grad, A @ (W.detach() - Ws) @ S, atol=1e-4)
    model = prob["make_model"]()
    assert isinstance(model, nn.Linear) and model.bias is None and torch.equal(model.weight, prob["W0"])
    assert prob["loss"](model).item() == pytest.approx(prob["loss"](prob["W0"]).item())
    noisy = anisotropic_regression(noise=0.1)
    assert noisy["min_loss"] > 0 and noisy["loss"](noisy["W_star"]) > noisy["min_loss"]


def _adam_run(prob, rotate: bool, steps=150, lr=0.05):
    """Adam on W directly, or Adam on the rotated coordinates V = Pᵀ W Q (W = P V Qᵀ)."""
    P, Q = prob["P"], prob["Q"]
    V = torch.zeros_like(prob["W0"], requires_grad=True)
    opt = torch.optim.Adam([V], lr=lr)
    for _ in range(steps):
        W = P @ V @ Q.T if rotate else V
        loss = prob["loss"](W)
        opt.zero_grad()
        loss.backward()
        opt.step()
    W = P @ V @ Q.T if rotate else V
    return prob["loss"](W).item()


def test_anisotropic_regression_eigenbasis_matters():
    prob = anisotropic_regression(condition=100.0, seed=0)
    start = prob["loss"](prob["W0"]).item()
    plain, rotated = _adam_run(prob, False), _adam_run(prob, True)
    assert rotated < plain / 10, (start, plain, rotated)
    assert rotated < start / 100
