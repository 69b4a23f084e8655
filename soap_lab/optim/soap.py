"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner (paper Algorithm 3, reference ``soap.py``).

A drop-in for the reference implementation: same constructor keywords, defaults and semantics. One step for a
layer with gradient G (the first call only builds GG and Q, without a weight update, so that a gradient never
enters the basis that projects it):

    G' = Q_Lᵀ G Q_R                                  kron.project
    M' ← β1 M' + (1−β1) G'                           engine (momentum kept in the eigenbasis, see below)
    V  ← β2 V  + (1−β2) G'⊙G'                        rules.Adam.second_moment (never rotated; permuted)
    N  = Q_L (M' / (√V + ε)) Q_Rᵀ                     rules.Adam.direction, kron.project(back=True)
    W  ← W − η·√(1−β2^t)/(1−β1^t)·N;  W ← W − η·wd·W  base.LabOptimizer._apply_updates (ε before bias
                                                     correction; decay after the step)
    L  ← β L + (1−β) G Gᵀ;  R ← β R + (1−β) Gᵀ G     kron.update_factors_, after the step (β = shampoo_beta or β2)
    every f steps: Q ← qr(P Q) after sorting by diag(Qᵀ P Q); V permuted    kron.refresh_bases, engine._refresh

Momentum: the paper keeps M in the original space and rotates it every step; the reference's HEAD keeps it
rotated. Both are the same algorithm. Here M' lives in the eigenbasis and is rotated only when the basis
changes (``momentum_space="eigenbasis"``, default); ``momentum_space="original"`` is the paper's form (the
tests check they agree in float64).

Differences from ``torch.optim.AdamW`` when no dimension is rotated (``max_precond_dim=0``), where SOAP is
exactly Adam from its second call on: (1) ε is added to √V *before* bias correction, so SOAP's ε
corresponds to torch's ε_t = ε/√(1−β2^t) at step t; (2) weight decay is applied *after* the update and
scales the updated weight (torch's AdamW decays the weight first).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Tuple

from . import rules
from .engine import DATA_FORMATS, MOMENTUM_SPACES, REFRESH_METHODS, BasisConfig, EigenbasisOptimizer
from .linalg import ORTHO_METHODS as QR_METHODS
from .refresh import REFRESH_POLICIES, offsets_option

__all__ = ["SOAP", "SOAPConfig", "REFRESH_METHODS", "MOMENTUM_SPACES", "DATA_FORMATS", "QR_METHODS", "REFRESH_POLICIES"]


@dataclass(frozen=True)
class SOAPConfig(BasisConfig):
    """SOAP's hyperparameters: the reference's (η 3e-3, betas (0.95, 0.95), ε 1e-8 before bias correction,
    weight decay 0.01 after the step, f = 10, max_precond_dim 10000, QR refresh, factors updated after the
    step) plus :class:`~soap_lab.optim.engine.BasisConfig`'s machinery options, and:

    Attributes:
        normalize_grads (False): rescale each layer's update to unit RMS (helps at f≈100, hurts at f≈10).
        factorized (False): Adafactor's factored second moment instead of Adam's V inside the basis (paper §7).
    """

    eps: float = 1e-8
    weight_decay: float = 0.01
    normalize_grads: bool = False
    factorized: bool = False


class SOAP(EigenbasisOptimizer):
    """SOAP (Vyas et al. 2024, Algorithm 3).

    Args (reference keywords and defaults):
        params: parameters or parameter groups.
        lr (3e-3): learning rate η.
        betas ((0.95, 0.95)): Adam's (β1, β2).
        shampoo_beta (-1): EMA rate of the factors L, R; a negative value means "use β2".
        eps (1e-8): Adam's ε, added to √V before bias correction.
        weight_decay (0.01): decoupled weight decay, applied after the update.
        precondition_frequency (10): f, the basis is refreshed at steps f, 2f, ... (calls f+1, 2f+1, ...).
        max_precond_dim (10000): dimensions larger than this keep the identity basis.
        merge_dims (False): merge small dimensions of nD tensors (see :func:`soap_lab.optim.kron.merged_shape`).
        precondition_1d (False): rotate 1-D parameters too (otherwise they get AdamW).
        normalize_grads (False): rescale each layer's update to unit RMS.
        data_format ("channels_first"): "channels_last" for NHWC conv weights (matters with ``merge_dims``).
        correct_bias (True): Adam's bias correction.

    Extra keywords (this lab):
        refresh ("qr"): basis refresh by one power iteration + QR (Algorithm 4), or "eigh" (paper Fig. 7 right).
        one_sided (False): rotate only the smallest side of each tensor (paper §7).
        factorized (False): Adafactor's factored second moment inside the basis (paper §7); both together
            give the paper's lowest-memory variant.
        momentum_space ("eigenbasis"): where M is stored (see module docstring); same algorithm either way.
        bucket (True): stack same-layout parameters and step them together (same numbers up to round-off).
        qr_method ("cholesky"): orthonormalization of the QR refresh: Cholesky-QR, checked, with a
            Householder fallback (:func:`soap_lab.optim.linalg.orthonormalize`), or "householder" (the
            reference's ``torch.linalg.qr``). Same Q up to round-off and column signs.
        on_nonfinite ("raise"): "raise" a FloatingPointError on NaN/Inf gradients, or "skip" the step.
        refresh_policy ("fixed"): when bases are refreshed (:mod:`soap_lab.optim.refresh`): "fixed" (the paper's
            every f steps), "staggered" (every f steps per parameter, at offsets that spread the refresh cost
            over the steps), "adaptive" (each factor checked every f steps, refreshed only where its relative
            off-diagonal mass is not below ``refresh_tolerance``; Purifying Shampoo's criterion).
        refresh_tolerance (0.0): τ of "adaptive", ≥ 0 (0: every check refreshes, i.e. fixed; > 1: never after
            the first basis); must be 0 with the other policies.
        refresh_offsets (None): "staggered": one offset in [0, f) per parameter of the group, or None (from the
            cost model).
    """

    Config = SOAPConfig

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 3e-3,
        betas: Tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float = -1,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        merge_dims: bool = False,
        precondition_1d: bool = False,
        normalize_grads: bool = False,
        data_format: str = "channels_first",
        correct_bias: bool = True,
        *,
        refresh: str = "qr",
        one_sided: bool = False,
        factorized: bool = False,
        momentum_space: str = "eigenbasis",
        bucket: bool = True,
        qr_method: str = "cholesky",
        on_nonfinite: str = "raise",
        refresh_policy: str = "fixed",
        refresh_tolerance: float = 0.0,
        refresh_offsets: Optional[Sequence[int]] = None,
    ):
        config = SOAPConfig(
            lr=lr, betas=tuple(betas), shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay,
            precondition_frequency=int(precondition_frequency), max_precond_dim=int(max_precond_dim),
            merge_dims=merge_dims, precondition_1d=precondition_1d, normalize_grads=normalize_grads,
            data_format=data_format, correct_bias=correct_bias, refresh=refresh, one_sided=one_sided,
            factorized=factorized, momentum_space=momentum_space, bucket=bool(bucket), qr_method=qr_method,
            refresh_policy=refresh_policy, refresh_tolerance=refresh_tolerance,
            refresh_offsets=offsets_option(refresh_offsets),
        )
        super().__init__(params, config, on_nonfinite=on_nonfinite)

    def make_rule(self, cfg: SOAPConfig) -> rules.Rule:
        if cfg.factorized:
            return rules.Adafactor("reference", cfg.normalize_grads)
        return rules.Adam("reference", cfg.normalize_grads)
