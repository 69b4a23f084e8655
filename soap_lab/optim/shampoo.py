"""Shampoo: inverse roots of the Kronecker factors, applied in their eigenbasis (paper §2).

``W ← W − η · L^-e G R^-e`` with L, R the EMA factors of :mod:`soap_lab.optim.kron`. Written in the eigenbasis
that SOAP and EigenAdafactor also use, the preconditioner is a per-coordinate scale
(:class:`soap_lab.optim.rules.ShampooRoots`):

    G' = Q_Lᵀ G Q_R;   N' = G' ⊙ (λ_i + ε)^-e (μ_j + ε)^-e;   N = Q_L N' Q_Rᵀ

with λ, μ the eigenvalues of L, R — so the three optimizers differ only in this inner rule. Eigenvalues and
bases come from eigh of the factors, recomputed every ``precondition_frequency`` steps and frozen in
between (as in practice, e.g. DistributedShampoo). The factors take the current gradient *before* the step
(Shampoo's ordering) and the momentum lives in the original space.

- ``exponent`` e: 0.25 is classic Shampoo for matrices, 0.5 with ``trace_scaling`` is the idealized
  Shampoo of Claim 1 (``√Tr L · L^-½ G R^-½``), 1/2.5 = 0.4 is the paper's DistributedShampoo baseline.
  For a tensor with k preconditioned dimensions the trace factor is (Tr GG)^((k−1)/2), which for k = 2 is
  √Tr L (Kronecker approximation Ĥ = ⊗_d GG_d / (Tr GG)^(k−1)).
- ``grafting="adam"`` rescales each layer's update to the norm of the Adam update computed from the same
  momentum (layer-wise grafting); ``None`` uses Shampoo's own scale.
- Before ``start_preconditioning_step`` (default: ``precondition_frequency``, as the paper's baseline), and
  for tensors with no preconditioned dimension, the update is the Adam (grafting) direction.
- Eigenvalues are clipped at 0 before adding ε; a direction whose scale would be infinite (ε = 0 on a
  singular factor) gets scale 0 (documented fallback: no step along a direction with no curvature estimate).
"""
from __future__ import annotations

from typing import Optional

from . import rules
from .config import BasisConfig, _check, documented, fixed, option
from .engine import EigenbasisOptimizer
from .linalg import DEFAULT_ORTHO

__all__ = ["Shampoo", "ShampooConfig", "GRAFTING"]

GRAFTING = ("adam", None)


@documented
class ShampooConfig(BasisConfig):
    """Shampoo's hyperparameters: the machinery's in Shampoo's ordering (factors updated before the step, the
    momentum in the original space, eigh refreshes; fixed), and its own."""

    eps: float = option(1e-12, "added to the factors' eigenvalues (the paper's baseline value)", positional=True)
    refresh: str = fixed("eigh")
    qr_method: str = fixed(DEFAULT_ORTHO)  # unused: eigh refreshes
    factor_update: str = fixed("before")
    momentum_space: str = fixed("original")
    start_preconditioning_step: int = option(-1, "the first step in Shampoo's direction (Adam's before it); "
                                             "negative means precondition_frequency", basis=True)
    exponent: float = option(0.25, "e in L^-e G R^-e (> 0): 0.25 classic, 0.5 with trace_scaling Claim 1's")
    trace_scaling: bool = option(False, "multiply by (Tr GG)^((k−1)/2) (√Tr L for matrices), Claim 1's correction")
    grafting: Optional[str] = option("adam", '"adam" (the layer-wise norm of Adam\'s direction) or None')
    grafting_eps: float = option(1e-8, "ε of the grafting Adam direction (after bias correction)")

    def __post_init__(self):
        object.__setattr__(self, "exponent", float(self.exponent))
        super().__post_init__()
        if self.start_preconditioning_step < 1:
            object.__setattr__(self, "start_preconditioning_step", self.precondition_frequency)
        _check(self.grafting in GRAFTING, "grafting", self.grafting, f"one of {GRAFTING}")
        _check(self.exponent > 0, "exponent", self.exponent, "> 0")

    def rule(self) -> rules.Rule:
        return rules.ShampooRoots(self.exponent, self.trace_scaling, self.grafting, self.grafting_eps)


class Shampoo(EigenbasisOptimizer):
    """Shampoo with EMA factors, eigenbasis inverse roots, optional grafting and the Claim 1 trace factor."""

    Config = ShampooConfig
