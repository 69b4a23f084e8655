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

from . import rules
from .config import DATA_FORMATS, MOMENTUM_SPACES, REFRESH_METHODS, BasisConfig, documented, option
from .engine import EigenbasisOptimizer
from .linalg import ORTHO_METHODS as QR_METHODS
from .refresh import REFRESH_POLICIES

__all__ = ["SOAP", "SOAPConfig", "REFRESH_METHODS", "MOMENTUM_SPACES", "DATA_FORMATS", "QR_METHODS", "REFRESH_POLICIES"]


@documented
class SOAPConfig(BasisConfig):
    """SOAP's hyperparameters: the reference's (its keywords, order and defaults: ε 1e-8 before bias correction,
    weight decay 0.01 after the step, f = 10, QR refreshes, factors updated after the step) and the machinery's."""

    weight_decay: float = 0.01
    factorized: bool = option(False, "Adafactor's factored second moment instead of Adam's V inside the basis "
                              "(paper §7; with one_sided, the paper's lowest-memory variant)")

    def rule(self) -> rules.Rule:
        return rules.Adafactor("reference") if self.factorized else rules.Adam("reference")


class SOAP(EigenbasisOptimizer):
    """SOAP (Vyas et al. 2024, Algorithm 3): Adam in the eigenbasis of Shampoo's factors. A drop-in for the
    reference ``soap.py``: the same positional keywords, in its order, with its defaults; the lab's options are
    keyword-only. Compiles: ``torch.compile(opt.step)`` with ``on_nonfinite="ignore"`` (docs/compile.md)."""

    Config = SOAPConfig
