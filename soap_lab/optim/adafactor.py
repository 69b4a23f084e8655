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

from typing import ClassVar, Optional

from . import rules
from .config import FACTOR_UPDATES, BasisConfig, _check, documented, option
from .engine import EigenbasisOptimizer

__all__ = ["Adafactor", "EigenAdafactor", "AdafactorConfig", "EigenAdafactorConfig", "STATISTICS",
           "FACTOR_UPDATES"]

STATISTICS = rules.STATISTICS


@documented
class AdafactorConfig(BasisConfig):
    """Adafactor's hyperparameters: β1 momentum (0 disables it), β2 for the row/column statistics, ε after bias
    correction, decoupled weight decay after the step, and no basis at all (``max_precond_dim=0``; Adafactor
    takes none of the basis's options)."""

    has_basis: ClassVar[bool] = False

    max_precond_dim: int = 0
    factor_update: str = "before"
    clip_threshold: Optional[float] = option(None, "if set, the update is divided by max(1, RMS(update)/"
                                             "clip_threshold) per layer (Adafactor's update clipping; off in the "
                                             "paper)")
    statistics: str = option("running", "Adafactor's row/column EMAs of the rotated gradients, accumulated across "
                             'bases (the practical algorithm), or "factors": the statistics of all past gradients '
                             "rotated into the current basis, diag(Q_Lᵀ L Q_L), diag(Q_Rᵀ R Q_R) and Tr L, Claim 1's "
                             "idealized form (for tensors whose every dimension is rotated; others keep the running "
                             "statistics)", basis=True)

    def __post_init__(self):
        super().__post_init__()
        _check(self.statistics in STATISTICS, "statistics", self.statistics, f"one of {STATISTICS}")
        _check(self.clip_threshold is None or self.clip_threshold > 0, "clip_threshold", self.clip_threshold,
               "None or > 0")

    def rule(self) -> rules.Rule:
        return rules.Adafactor("adam", statistics=self.statistics, clip_threshold=self.clip_threshold)


@documented
class EigenAdafactorConfig(AdafactorConfig):
    """EigenAdafactor's: Adafactor's, with the basis on (every basis option, eigh refreshes, SOAP's ordering by
    default; see :class:`EigenAdafactor` for ``factor_update`` and ``statistics``)."""

    has_basis: ClassVar[bool] = True

    max_precond_dim: int = 10000
    refresh: str = "eigh"
    factor_update: str = "after"


class Adafactor(EigenbasisOptimizer):
    """Adafactor with momentum (the paper's baseline variant): the eigenbasis machinery with every dimension left in
    the identity basis; 1-D parameters keep the unfactored second moment."""

    Config = AdafactorConfig


class EigenAdafactor(EigenbasisOptimizer):
    """Adafactor in the eigenbasis of Shampoo's factors (paper Algorithm 2).

    Adafactor's rule (momentum, factored V̂, bias correction) applied to G' = Q_Lᵀ G Q_R and rotated back.

    ``factor_update``: ``"after"`` — SOAP's ordering (Algorithm 3, whose Adam is Adafactor here): the first call
    only builds GG and Q, later calls step in the current basis, then update GG, and refresh Q at steps f, 2f, ...
    (calls f+1, 2f+1, ...). A gradient never enters the basis that projects it, which also keeps the step well
    defined while a factor is rank deficient. With ``refresh="qr"`` this is ``SOAP(factorized=True)`` but for ε's
    place (tested). ``"before"`` — Shampoo's ordering: GG takes the current gradient first and Q is refreshed at
    steps 1, f+1, 2f+1, ... before stepping. This is the idealized form of Claim 1. Caveat: while a factor is rank
    deficient (a non-square layer's first steps) the rotated gradient is pure round-off along the factor's null
    space and Adafactor divides round-off by round-off there; use it on full-rank factors (as the Claim 1 tests do).

    Claim 1 as a trajectory: ``EigenAdafactor(factor_update="before", precondition_frequency=1,
    refresh="eigh", statistics="factors", eps=0)`` equals ``Shampoo(exponent=0.5, trace_scaling=True,
    grafting=None, eps=0, precondition_frequency=1, start_preconditioning_step=1)`` with the same betas."""

    Config = EigenAdafactorConfig
