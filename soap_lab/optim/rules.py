"""The rules inside the eigenbasis: what makes SOAP, EigenAdafactor (and Adafactor) and Shampoo different.

Paper §2-§4. The machinery (:mod:`.engine`) hands a rule the rotated gradient G' = Q_Lᵀ G Q_R and the momentum
M' in the basis, for a stack of same-layout layers (leading batch dimension); the rule returns the direction
N' in the basis and a scalar step factor, and later N = Q_L N' Q_Rᵀ may be post-processed by :meth:`Rule.finish`.

- :class:`Adam` (SOAP, Algorithm 3): V ← β2 V + (1−β2) G'⊙G';  N' = M' / (√V + ε), step factor √(1−β2^t)/(1−β1^t)
  (the reference's ε, before bias correction); ``normalize_grads`` rescales N to unit RMS per layer.
- :class:`Adafactor` (EigenAdafactor, Algorithm 2; SOAP(factorized=True)): the same with Adafactor's factored
  V̂ (:mod:`.second_moment`), or with the statistics read off Shampoo's factors (``statistics="factors"``, Claim
  1); ``eps_convention="adam"`` puts ε after bias correction as torch's Adam and Adafactor do; update clipping.
- :class:`ShampooRoots` (Shampoo, §2): N' = M̂' ⊙ (λ_i + ε)^-e (μ_j + ε)^-e with λ, μ the eigenvalues of the
  factors at the last refresh, optionally times (Tr L)^((k−1)/2) (Claim 1's trace factor), then grafted onto
  the norm of Adam's update (computed in the original space).

Per-coordinate state follows a refresh's sorted slots (:meth:`Rule.follow`); Shampoo's is recomputed instead.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch

from . import kron, second_moment
from .stack import Stack

Tensor = torch.Tensor

EPS_CONVENTIONS = ("reference", "adam")
STATISTICS = ("running", "factors")


def _bias_corrections(cfg, t: int) -> Tuple[float, float]:
    beta1, beta2 = cfg.betas
    return (1 - beta1**t, 1 - beta2**t) if cfg.correct_bias else (1.0, 1.0)


def _per_layer(x: Tensor) -> Tuple[int, ...]:
    return tuple(range(1, x.dim()))


class Rule:
    """Interface: state names, initial state, the direction inside the basis, and how state follows a refresh."""

    follows_basis = True  # per-coordinate state is permuted with the basis slots at a refresh
    reads_rotated_gradient = True  # direction() reads G' (else the engine does not compute it: G' is None)

    def init(self, layout: kron.KronLayout, *, dtype: torch.dtype, device: torch.device) -> Dict[str, object]:
        raise NotImplementedError  # pragma: no cover

    def tensors(self, state: dict) -> Tuple[str, ...]:
        """Names of the rule's layout-shaped state entries (stacked)."""
        return ()

    def lists(self, state: dict) -> Tuple[str, ...]:
        """Names of the rule's per-dimension list entries (stacked per dimension)."""
        return ()

    def refresh_method(self, cfg) -> str:
        return cfg.refresh

    def direction(self, s: Stack, cfg, t: int, *, G: Tensor, g_rot: Tensor, m_rot: Tensor, out: Tensor,
                  work: Tensor) -> Tuple[Tensor, float]:
        raise NotImplementedError  # pragma: no cover

    def finish(self, s: Stack, cfg, update: Tensor) -> None:
        """Post-process N (in the parameter's space, in place)."""

    def follow(self, s: Stack, perms: List[Optional[Tensor]], work: Tensor) -> None:
        """Reorder per-coordinate state after a refresh sorted the basis slots by ``perms``."""

    def on_new_basis(self, s: Stack, states: List[dict], cfg, evals, t: int,
                     members: Optional[List[Optional[List[int]]]] = None) -> None:
        """Called with the eigenvalues (or their estimates) after every new basis. ``members`` (a refresh of some
        members only, :mod:`.refresh`): per dimension, the members refreshed, and ``evals[d]`` holds their rows
        only (in that order); the other members keep what they had."""


class Adam(Rule):
    """Adam's second moment V in the basis (SOAP). ``normalize_grads``: N ← N / RMS(N) per layer."""

    factored = False  # Adafactor's factored estimate for layers of rank ≥ 2

    def __init__(self, eps_convention: str = "reference", normalize_grads: bool = False):
        if eps_convention not in EPS_CONVENTIONS:
            raise ValueError(f"eps_convention must be one of {EPS_CONVENTIONS}, got {eps_convention!r}")
        self.eps_convention = eps_convention
        self.normalize_grads = normalize_grads

    def init(self, layout, *, dtype, device):
        return second_moment.init(layout.shape, factored=self.factored, dtype=dtype, device=device)

    def tensors(self, state):
        return ("exp_avg_sq",) if "exp_avg_sq" in state else ()

    def lists(self, state):
        return ("exp_avg_sq_factors",) if "exp_avg_sq_factors" in state else ()

    def second_moment(self, s: Stack, cfg, g_rot: Tensor, out: Tensor) -> Tensor:
        """Update the statistics with G' and return the estimate V (or V̂) to divide by."""
        second_moment.update_(s.stacked, g_rot, cfg.betas[1], batched=True, work=out)
        return second_moment.estimate(s.stacked, batched=True, out=out)

    def direction(self, s, cfg, t, *, G, g_rot, m_rot, out, work):
        bc1, bc2 = _bias_corrections(cfg, t)
        v = self.second_moment(s, cfg, g_rot, out)
        if self.eps_convention == "reference":  # ε before bias correction, folded into the step size
            denom = torch.sqrt(v, out=out).add_(cfg.eps)
            return torch.div(m_rot, denom, out=out), math.sqrt(bc2) / bc1
        denom = torch.div(v, bc2, out=out).sqrt_().add_(cfg.eps)
        return torch.div(m_rot, bc1, out=work).div_(denom), 1.0

    def follow(self, s, perms, work):
        second_moment.permute_(s.stacked, perms, work=work)

    def finish(self, s, cfg, update):
        if self.normalize_grads:
            update.div_(update.square().mean(dim=_per_layer(update), keepdim=True).sqrt().add_(1e-30))


class Adafactor(Adam):
    """Adafactor's factored second moment in the basis (EigenAdafactor, SOAP(factorized=True)).

    ``statistics="factors"``: the row/column statistics of *all* past gradients rotated into the current
    basis, read off the factors: diag(Q_dᵀ GG_d Q_d) and Tr GG_0 (Claim 1's idealized form), for layers whose
    every dimension is preconditioned (others keep the running statistics). ``clip_threshold``: N' is divided
    by max(1, RMS(N')/threshold) per layer (Adafactor's update clipping)."""

    factored = True

    def __init__(self, eps_convention: str = "reference", normalize_grads: bool = False,
                 statistics: str = "running", clip_threshold: Optional[float] = None):
        super().__init__(eps_convention, normalize_grads)
        if statistics not in STATISTICS:
            raise ValueError(f"statistics must be one of {STATISTICS}, got {statistics!r}")
        self.statistics = statistics
        self.clip_threshold = clip_threshold

    def second_moment(self, s, cfg, g_rot, out):
        if self.statistics == "factors" and s.Q is not None and all(q is not None for q in s.Q):
            stats = [kron.rotated_diagonal(q, P @ q) for P, q in zip(s.GG, s.Q)]
            return second_moment.rank_one(stats, s.GG[0].diagonal(dim1=-2, dim2=-1).sum(-1), out=out)
        return super().second_moment(s, cfg, g_rot, out)

    def direction(self, s, cfg, t, *, G, g_rot, m_rot, out, work):
        n_rot, scale = super().direction(s, cfg, t, G=G, g_rot=g_rot, m_rot=m_rot, out=out, work=work)
        if self.clip_threshold is not None:
            rms = n_rot.square().mean(dim=_per_layer(n_rot), keepdim=True).sqrt()
            n_rot.div_((rms / self.clip_threshold).clamp_min(1.0))
        return n_rot, scale


class ShampooRoots(Rule):
    """Shampoo's inverse roots in the eigenbasis, with layer-wise Adam grafting (state: Adam's V in the
    original space, ``exp_avg_sq``; the eigenvalues of the bias-corrected factors, ``D``)."""

    follows_basis = False  # D is recomputed at every refresh; M and V live in the original space
    reads_rotated_gradient = False  # only the momentum is rotated

    def __init__(self, exponent: float, trace_scaling: bool, grafting: Optional[str], grafting_eps: float):
        self.exponent, self.trace_scaling = exponent, trace_scaling
        self.grafting, self.grafting_eps = grafting, grafting_eps
        self._adam: Optional[Tensor] = None

    def init(self, layout, *, dtype, device):
        return {"exp_avg_sq": torch.zeros(layout.shape, dtype=dtype, device=device), "D": None}

    def tensors(self, state):
        return ("exp_avg_sq",)

    def lists(self, state):
        return ("D",)

    def refresh_method(self, cfg) -> str:
        return "eigh"

    def on_new_basis(self, s, states, cfg, evals, t, members=None):
        _, bc2 = _bias_corrections(cfg, t)
        if members is None:
            s.replace("D", [None if lam is None else (lam / bc2).clamp_min_(0) for lam in evals], states)
            return
        for D, lam, rows in zip(s.stacked["D"], evals, members):  # a kept basis keeps its eigenvalues
            if rows:
                D.index_copy_(0, torch.tensor(rows, device=D.device), (lam / bc2).clamp_min_(0))

    def _scale(self, s: Stack, cfg, like: Tensor) -> Tensor:
        """(λ_i + ε)^-e (μ_j + ε)^-e (× (Tr GG)^((k−1)/2) with ``trace_scaling``), broadcast per layer; an
        infinite scale (ε = 0 on a singular factor) becomes 0: no step along a direction with no curvature."""
        D, ndim = s.stacked["D"], like.dim() - 1
        scale = torch.ones((), dtype=like.dtype, device=like.device)
        for d, lam in enumerate(D):
            if lam is not None:
                x = (lam + cfg.eps).pow(-self.exponent)
                scale = scale * x.reshape(x.shape[:1] + (1,) * d + (-1,) + (1,) * (ndim - d - 1))
        scale = torch.nan_to_num(scale, nan=0.0, posinf=0.0)
        if self.trace_scaling:
            trace = next(lam for lam in D if lam is not None).sum(-1)
            k = sum(lam is not None for lam in D)
            scale = scale * trace.pow((k - 1) / 2).reshape(trace.shape + (1,) * ndim)
        return scale

    def direction(self, s, cfg, t, *, G, g_rot, m_rot, out, work):
        bc1, bc2 = _bias_corrections(cfg, t)
        V = s.stacked["exp_avg_sq"].mul_(cfg.betas[1]).addcmul_(G, G, value=1 - cfg.betas[1])
        adam = torch.div(V, bc2, out=work).sqrt_().add_(self.grafting_eps)
        adam = torch.div(s.M, adam, out=work).div_(bc1)  # the grafting direction, in the original space
        if s.Q is None:  # before start_preconditioning_step, or nothing preconditioned: Adam's direction
            self._adam = None
            return adam, 1.0
        self._adam = adam
        return torch.mul(m_rot, self._scale(s, cfg, m_rot), out=out).div_(bc1), 1.0

    def finish(self, s, cfg, update):
        adam, self._adam = self._adam, None
        if adam is not None and self.grafting == "adam":  # per layer: norms over each layer, not the stack
            dims = _per_layer(update)
            norm = torch.linalg.vector_norm(update, dim=dims, keepdim=True).clamp_min(torch.finfo(update.dtype).tiny)
            update.mul_(torch.linalg.vector_norm(adam, dim=dims, keepdim=True) / norm)
