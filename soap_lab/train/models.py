"""The paper's model (a decoder-only GPT in the OLMo style) and a small teaching problem.

**GPT** (PAPER.md §3): pre-LayerNorm transformer blocks, *no biases anywhere* (every Linear and every
LayerNorm is bias-free), QK-LayerNorm (a bias-free LayerNorm over the head dimension applied to each head's
queries and keys, weights shared across heads), rotary position embeddings (RoPE, rotate-half convention)
on q and k, causal ``scaled_dot_product_attention``, a GeLU MLP, a final LayerNorm, and untied input/output
embeddings. The query/key/value projection is one fused ``d_model -> 3*d_model`` matrix (``attn.qkv``), as in
OLMo, so a Kronecker-factored optimizer sees it as one 3d x d layer.

Loss: ``loss = CE + z_loss * mean(logsumexp(logits)^2)`` (the z-loss of PaLM/OLMo, default 1e-4). ``forward``
returns ``(logits, loss)``; the plain cross-entropy of the last forward with targets is kept, detached, in
``model.last_ce`` (and the z term in ``model.last_z``): report ``last_ce`` as the validation loss.

Initialisation: every Linear/Embedding weight ~ N(0, init_std), except the two residual-branch output
projections (``attn.proj``, ``mlp.fc2``), which use ``init_std / sqrt(2 * n_layer)`` (GPT-2); LayerNorm
weights are 1.

**Presets** (``PRESETS``, shapes without the vocabulary): ``tiny`` (CI), ``cpu`` (a few-minute run on two cores
with the character tokenizer), ``gpu`` (one GPU, tens of millions of parameters) and the paper's ``210m``,
``360m`` and ``660m`` (their nominal sizes hold with the T5 vocabulary, 32100).

**Teaching problem**: :func:`anisotropic_regression`, a single m x n weight matrix whose loss has the Kronecker
Hessian ``A ⊗ Σ`` in a rotated basis, so that preconditioning in the right eigenbasis (Shampoo/SOAP) visibly
beats diagonal preconditioning (Adam).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GPTConfig", "PRESETS", "PRESET_BATCH_SIZE", "gpt_config", "GPT", "anisotropic_regression"]


@dataclass
class GPTConfig:
    """Shape and regularisation of :class:`GPT`.

    vocab_size: number of token ids (no default: it comes from the tokenizer).
    seq_len: maximum sequence length (RoPE tables are precomputed for it; longer inputs raise).
    n_layer: number of transformer blocks.
    n_head: attention heads; ``d_model`` must be divisible by it (head dim = d_model / n_head, even).
    d_model: residual stream width.
    mlp_ratio: MLP hidden width = ``int(mlp_ratio * d_model)`` (default 4.0).
    z_loss: coefficient of ``mean(logsumexp(logits)^2)`` added to the loss (default 1e-4; 0 disables).
    qk_norm: bias-free LayerNorm on each head's queries and keys (default True, as in the paper).
    rope_base: RoPE frequency base (default 10000.0).
    init_std: standard deviation of the normal weight init (default 0.02; residual output projections use
        ``init_std / sqrt(2 * n_layer)``).
    dropout: dropout on attention probabilities and residual branches during training (default 0.0).
    """

    vocab_size: int
    seq_len: int
    n_layer: int
    n_head: int
    d_model: int
    mlp_ratio: float = 4.0
    z_loss: float = 1e-4
    qk_norm: bool = True
    rope_base: float = 10000.0
    init_std: float = 0.02
    dropout: float = 0.0

    def __post_init__(self):
        for f in ("vocab_size", "seq_len", "n_layer", "n_head", "d_model"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"GPTConfig.{f} must be >= 1, got {getattr(self, f)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"head dim d_model/n_head = {self.d_model // self.n_head} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


PRESETS: dict[str, dict] = {
    # CI: forward+backward in milliseconds.
    "tiny": dict(seq_len=32, n_layer=2, n_head=2, d_model=32),
    # 2 CPU cores, char tokenizer (vocab ~80): ~0.46M params; ~0.15 s per AdamW step at batch 32 x 128.
    "cpu": dict(seq_len=128, n_layer=4, n_head=4, d_model=96),
    # 1 CPU thread, many seeded runs (scale cpu_freq): ~0.11M params with characters; ~0.03 s per AdamW step at 16 x 64.
    "mini": dict(seq_len=64, n_layer=2, n_head=2, d_model=64),
    # The width arm of the seeded frequency study: ``mini`` widened, heads of 32 (named <layers>L-d<width>).
    "2L-d128": dict(seq_len=64, n_layer=2, n_head=4, d_model=128),
    "2L-d256": dict(seq_len=64, n_layer=2, n_head=8, d_model=256),
    # One GPU: ~25M non-embedding params (+ 2 * vocab * 512 embedding params).
    "gpu": dict(seq_len=512, n_layer=8, n_head=8, d_model=512),
    # The paper's OLMo-style models (seq 1024, head dim 64); names are sizes with the T5 vocab (32100).
    "210m": dict(seq_len=1024, n_layer=12, n_head=16, d_model=1024),
    "360m": dict(seq_len=1024, n_layer=24, n_head=16, d_model=1024),
    "660m": dict(seq_len=1024, n_layer=24, n_head=22, d_model=1408),
}

#: A per-process batch size (sequences) that fits each preset's intended machine; a suggestion for the
#: training harness, not part of the model.
PRESET_BATCH_SIZE: dict[str, int] = {"tiny": 8, "cpu": 32, "gpu": 32, "210m": 16, "360m": 16, "660m": 8}


def gpt_config(preset: str, vocab_size: int, **overrides) -> GPTConfig:
    """A :class:`GPTConfig` from a preset name, the tokenizer's vocabulary size and field overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(map(repr, PRESETS))}")
    fields = set(GPTConfig.__dataclass_fields__)
    bad = set(overrides) - fields
    if bad:
        raise ValueError(f"unknown GPTConfig fields {sorted(bad)}; allowed: {sorted(fields)}")
    return GPTConfig(**{**PRESETS[preset], "vocab_size": vocab_size, **overrides})


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, bias=False)


def rope_tables(seq_len: int, head_dim: int, base: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables of shape (seq_len, head_dim) for the rotate-half RoPE convention (float32)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., T, head_dim) by the positions' angles: pairs (i, i + head_dim/2) rotate together."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.q_norm = _layer_norm(cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = _layer_norm(cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Under autocast LayerNorm runs in float32; SDPA needs q, k, v of one dtype.
        q, k = q.to(v.dtype), k.to(v.dtype)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = _layer_norm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = _layer_norm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.ln1(x), cos, sin)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only transformer of the paper (see the module docstring).

    ``forward(idx, targets=None)``: ``idx`` (B, T) int64 with T <= seq_len. Returns ``(logits, loss)``:
    logits (B, T, vocab) in the compute dtype; ``loss`` is None without targets, else the scalar
    ``CE + z_loss * mean(logsumexp^2)`` computed in float32 (this is what to backpropagate). The plain
    cross-entropy is stored as ``self.last_ce`` and the z term as ``self.last_z`` (detached 0-dim tensors).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = _layer_norm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        cos, sin = rope_tables(config.seq_len, config.head_dim, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.last_ce: torch.Tensor | None = None
        self.last_z: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        for name, mod in self.named_modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                s = resid_std if name.endswith(("attn.proj", "mlp.fc2")) else std
                nn.init.normal_(mod.weight, mean=0.0, std=s)
            elif isinstance(mod, nn.LayerNorm):
                nn.init.ones_(mod.weight)
        if self.rope_cos.device.type != "meta":
            cos, sin = rope_tables(self.config.seq_len, self.config.head_dim, self.config.rope_base,
                                   device=self.rope_cos.device)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        if T > self.config.seq_len:
            raise ValueError(f"sequence length {T} exceeds config.seq_len {self.config.seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.drop(self.tok_emb(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        flat = logits.reshape(-1, logits.size(-1)).float()
        lse = torch.logsumexp(flat, dim=-1)
        target_logit = flat.gather(1, targets.reshape(-1, 1)).squeeze(1)
        ce = (lse - target_logit).mean()
        z = lse.square().mean()
        loss = ce + self.config.z_loss * z if self.config.z_loss else ce
        self.last_ce, self.last_z = ce.detach(), z.detach()
        return logits, loss

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters; ``non_embedding=True`` leaves out the input embedding and the (untied)
        output projection ``lm_head``."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + self.lm_head.weight.numel()
        return n


# ---------------------------------------------------------------------------------------------------
# Teaching problem
# ---------------------------------------------------------------------------------------------------


def _random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed


def anisotropic_regression(m: int = 16, n: int = 12, n_samples: int = 512, condition: float = 100.0,
                           noise: float = 0.0, seed: int = 0) -> dict:
    """A linear regression with one m x n weight matrix where the eigenbasis matters.

    Inputs ``x ∈ R^n`` have covariance ``Sigma = Q diag(s) Qᵀ`` and the output error is measured in the metric
    ``A = P diag(a) Pᵀ``; ``s`` and ``a`` are log-spaced from 1 down to ``1/condition`` and ``Q``, ``P`` are
    random rotations (so the eigenbasis is *not* the coordinate basis). Targets ``y = W* x + noise·ε``.
    The loss ``L(W) = 1/(2N) Σ_k (W x_k - y_k)ᵀ A (W x_k - y_k)`` has gradient ``A (W - W*) Σ̂ (+ noise
    term)`` and Hessian ``Σ̂ ⊗ A`` — a Kronecker product, exactly the structure Shampoo/SOAP model. Adam's
    diagonal preconditioner cannot undo the rotations; in the rotated coordinates ``Pᵀ W Q`` the problem
    becomes diagonal (axis-aligned), which is the basis SOAP estimates from ``G Gᵀ`` and ``Gᵀ G``.

    What to expect (defaults, full-batch gradients, 300 steps, lr tuned per optimizer, Adam's usual
    betas (0.9, 0.999), no weight decay): SOAP reaches a loss around 1e-14 (1e-10 after 200 steps) while
    AdamW stalls around 4e-6, starting from 0.3; plain Adam in the rotated coordinates ``Pᵀ W Q`` behaves
    like SOAP. With β2 = 0.95 (the paper's LM setting) the updates become sign-like on this deterministic
    problem and the gap shrinks to a few times. ``noise > 0`` adds label noise (a loss floor ``min_loss``).

    Returns a dict of float32 tensors and helpers:
      ``X`` (n_samples, n), ``Y`` (n_samples, m), ``W_star`` (m, n), ``W0`` (m, n; zeros, the start point),
      ``Sigma`` (n, n; the empirical input covariance X Xᵀ/N), ``A`` (m, m), ``Q`` (n, n), ``P`` (m, m;
      their eigenvectors), ``condition``;
      ``loss(W, idx=None)``: the loss of a tensor W or an ``nn.Linear`` (optionally on a minibatch of row
      indices ``idx``); ``make_model()``: a fresh ``nn.Linear(n, m, bias=False)`` with weight ``W0``;
      ``min_loss``: the loss at the least-squares optimum (0 when ``noise == 0``).
    """
    if condition < 1:
        raise ValueError(f"condition must be >= 1, got {condition}")
    gen = torch.Generator().manual_seed(seed)
    Q = _random_orthogonal(n, gen)
    P = _random_orthogonal(m, gen)
    s = torch.logspace(0, -math.log10(condition), n, dtype=torch.float64)
    a = torch.logspace(0, -math.log10(condition), m, dtype=torch.float64)
    Z = torch.randn(n_samples, n, generator=gen, dtype=torch.float64)
    Z = Z / Z.pow(2).mean(0, keepdim=True).sqrt()  # unit empirical variance per direction
    X = Z @ torch.diag(s.sqrt()) @ Q.T
    W_star = torch.randn(m, n, generator=gen, dtype=torch.float64) / math.sqrt(n)
    Y = X @ W_star.T + noise * torch.randn(n_samples, m, generator=gen, dtype=torch.float64)
    A = P @ torch.diag(a) @ P.T
    Sigma = X.T @ X / n_samples
    W_ls = torch.linalg.lstsq(X, Y).solution.T  # the optimum (A-weighting does not change it)

    Xf, Yf, Af = X.float(), Y.float(), A.float()

    def loss(W, idx=None) -> torch.Tensor:
        if isinstance(W, nn.Module):
            W = W.weight
        Xb, Yb = (Xf, Yf) if idx is None else (Xf[idx], Yf[idx])
        R = Xb @ W.T - Yb
        return 0.5 * ((R @ Af) * R).sum(-1).mean()

    W0 = torch.zeros(m, n)

    def make_model() -> nn.Linear:
        lin = nn.Linear(n, m, bias=False)
        with torch.no_grad():
            lin.weight.copy_(W0)
        return lin

    return {
        "X": Xf, "Y": Yf, "W_star": W_star.float(), "W0": W0, "Sigma": Sigma.float(), "A": Af,
        "Q": Q.float(), "P": P.float(), "condition": float(condition),
        "loss": loss, "make_model": make_model, "min_loss": float(loss(W_ls.float())),
    }


def config_dict(cfg: GPTConfig) -> dict:
    """The config as a plain dict (for run records)."""
    return asdict(cfg)
