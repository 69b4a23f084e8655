"""Adafactor, and Adafactor run in Shampoo's eigenbasis (paper §3, Algorithm 2).

``Adafactor`` is the modern variant the paper uses: momentum β1, a fixed β2 (no relative step size, no β2
schedule), the factored second moment V̂ = A Cᵀ / 1ᵀA (:mod:`soap_lab.optim.second_moment`), ε added to √V̂,
Adam-style bias correction, decoupled weight decay, and update clipping only when ``clip_threshold`` is given.
1-D parameters keep the unfactored second moment. It is the eigenbasis machinery with every dimension left in
the identity basis.

``EigenAdafactor`` is the same rule (:class:`soap_lab.optim.rules.Adafactor`) applied to ``G' = Q_Lᵀ G Q_R``,
with Q the eigenbasis of Shampoo's factors, refreshed every ``precondition_frequency`` steps: one algorithm
with ``SOAP(factorized=True)``, which differs only in where ε sits (before bias correction, as the reference
SOAP; here after it, as torch's Adam). Claim 1 of the paper: with the basis and the statistics recomputed from
the current factors at every step (``precondition_frequency=1``, ``statistics="factors"``,
``factor_update="before"``), this *is* Shampoo with exponent 1/2 and the trace correction — see
:mod:`soap_lab.equivalence` and ``tests/test_equivalence.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Tuple

from . import rules
from .engine import FACTOR_UPDATES, BasisConfig, EigenbasisOptimizer, _check
from .refresh import offsets_option

__all__ = ["Adafactor", "EigenAdafactor", "AdafactorConfig", "EigenAdafactorConfig", "STATISTICS",
           "FACTOR_UPDATES"]

STATISTICS = rules.STATISTICS


@dataclass(frozen=True)
class AdafactorConfig(BasisConfig):
    """Adafactor's hyperparameters: η 3e-3, betas (0.95, 0.95) (β1 momentum, 0 disables it; β2 for the
    row/column statistics), ε 1e-8 after bias correction, weight decay 0.0 after the step, and:

    Attributes:
        clip_threshold (None): if set, the update is divided by max(1, RMS(update)/clip_threshold) per layer.
        statistics ("running"): see :class:`EigenAdafactor`.
    The basis options default to no rotation at all (``max_precond_dim=0``)."""

    max_precond_dim: int = 0
    factor_update: str = "before"
    clip_threshold: Optional[float] = None
    statistics: str = "running"

    def __post_init__(self):
        super().__post_init__()
        _check(self.statistics in STATISTICS, "statistics", self.statistics, f"one of {STATISTICS}")
        _check(self.clip_threshold is None or self.clip_threshold > 0, "clip_threshold", self.clip_threshold,
               "None or > 0")


@dataclass(frozen=True)
class EigenAdafactorConfig(AdafactorConfig):
    """EigenAdafactor's: Adafactor's, with the basis on (max_precond_dim 10000), eigh refreshes and SOAP's
    ordering by default (see :class:`EigenAdafactor` for ``factor_update`` and ``statistics``)."""

    max_precond_dim: int = 10000
    refresh: str = "eigh"
    factor_update: str = "after"


class _AdafactorRule:
    def make_rule(self, cfg: AdafactorConfig) -> rules.Rule:
        return rules.Adafactor("adam", statistics=cfg.statistics, clip_threshold=cfg.clip_threshold)


class Adafactor(_AdafactorRule, EigenbasisOptimizer):
    """Adafactor with momentum (the paper's baseline variant).

    Args:
        lr (3e-3): learning rate.
        betas ((0.95, 0.95)): (β1 momentum, β2 for the row/column statistics). β1 = 0 disables momentum.
        eps (1e-8): added to √V̂.
        weight_decay (0.0): decoupled weight decay, applied after the update.
        correct_bias (True): divide the momentum by 1−β1^t and V̂ by 1−β2^t.
        clip_threshold (None): if set, the update is divided by max(1, RMS(update)/clip_threshold)
            (Adafactor's update clipping; off by default, as in the paper).
        bucket (True): stack same-shape parameters (same numbers up to round-off).
        on_nonfinite ("raise"): "raise" on NaN/Inf gradients or "skip" the step.
    """

    Config = AdafactorConfig

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 3e-3,
        betas: Tuple[float, float] = (0.95, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        clip_threshold: Optional[float] = None,
        *,
        bucket: bool = True,
        on_nonfinite: str = "raise",
    ):
        config = AdafactorConfig(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                 correct_bias=correct_bias, clip_threshold=clip_threshold, bucket=bool(bucket))
        super().__init__(params, config, on_nonfinite=on_nonfinite)


class EigenAdafactor(_AdafactorRule, EigenbasisOptimizer):
    """Adafactor in the eigenbasis of Shampoo's factors (paper Algorithm 2).

    Adafactor's rule (momentum, factored V̂, bias correction) applied to G' = Q_Lᵀ G Q_R and rotated back.
    Momentum is kept in the eigenbasis and rotated when the basis changes.

    Args: Adafactor's, and
        precondition_frequency (10), shampoo_beta (-1), max_precond_dim (10000), precondition_1d (False):
            as in :class:`soap_lab.SOAP`.
        refresh ("eigh"): basis refresh by eigendecomposition, or "qr" (one power iteration, as SOAP).
        qr_method ("cholesky"): the orthonormalization of ``refresh="qr"``, as in :class:`soap_lab.SOAP`.
        factor_update ("after"): when the current gradient enters the factors.
            ``"after"`` — SOAP's ordering (Algorithm 3, whose Adam is Adafactor here): the first call only
            builds GG and Q, later calls step in the current basis, then update GG, and refresh Q at steps
            f, 2f, ... (calls f+1, 2f+1, ...). A gradient never enters the basis that projects it, which
            also keeps the step well defined while a factor is rank deficient. With ``refresh="qr"`` this
            is ``SOAP(factorized=True)`` but for ε's place (tested).
            ``"before"`` — Shampoo's ordering: GG takes the current gradient first and Q is refreshed at
            steps 1, f+1, 2f+1, ... before stepping. This is the idealized form of Claim 1. Caveat: while a
            factor is rank deficient (a non-square layer's first steps) the rotated gradient is pure
            round-off along the factor's null space and Adafactor divides round-off by round-off there; use
            it on full-rank factors (as the Claim 1 tests do).
        statistics ("running"): Adafactor's row/column EMAs of the rotated gradients, accumulated across
            bases (the practical algorithm), or ``"factors"``: the statistics of *all* past gradients rotated
            into the current basis, which are exactly diag(Q_Lᵀ L Q_L), diag(Q_Rᵀ R Q_R) and Tr L — the
            idealized form of Claim 1. ``"factors"`` needs every dimension of a tensor preconditioned; other
            tensors (e.g. 1-D parameters) use the running statistics.
        refresh_policy ("fixed"), refresh_tolerance (0.0), refresh_offsets (None): when bases are refreshed,
            as in :class:`soap_lab.SOAP` (:mod:`soap_lab.optim.refresh`): "fixed" every f steps, "staggered" at
            per-parameter offsets, "adaptive" only factors whose relative off-diagonal mass is not below τ.

    Claim 1 as a trajectory: ``EigenAdafactor(factor_update="before", precondition_frequency=1,
    refresh="eigh", statistics="factors", eps=0)`` equals ``Shampoo(exponent=0.5, trace_scaling=True,
    grafting=None, eps=0, precondition_frequency=1, start_preconditioning_step=1)`` with the same betas.
    """

    Config = EigenAdafactorConfig

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 3e-3,
        betas: Tuple[float, float] = (0.95, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        clip_threshold: Optional[float] = None,
        precondition_frequency: int = 10,
        shampoo_beta: float = -1,
        max_precond_dim: int = 10000,
        precondition_1d: bool = False,
        refresh: str = "eigh",
        factor_update: str = "after",
        statistics: str = "running",
        *,
        qr_method: str = "cholesky",
        bucket: bool = True,
        on_nonfinite: str = "raise",
        refresh_policy: str = "fixed",
        refresh_tolerance: float = 0.0,
        refresh_offsets: Optional[Sequence[int]] = None,
    ):
        config = EigenAdafactorConfig(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, correct_bias=correct_bias,
            clip_threshold=clip_threshold, precondition_frequency=int(precondition_frequency),
            shampoo_beta=shampoo_beta, max_precond_dim=int(max_precond_dim), precondition_1d=precondition_1d,
            refresh=refresh, factor_update=factor_update, statistics=statistics, qr_method=qr_method,
            bucket=bool(bucket), refresh_policy=refresh_policy, refresh_tolerance=refresh_tolerance,
            refresh_offsets=offsets_option(refresh_offsets),
        )
        super().__init__(params, config, on_nonfinite=on_nonfinite)
