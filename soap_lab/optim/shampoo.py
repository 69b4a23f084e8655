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

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Tuple

from . import rules
from .engine import BasisConfig, EigenbasisOptimizer, _check
from .refresh import offsets_option

__all__ = ["Shampoo", "ShampooConfig", "GRAFTING"]

GRAFTING = ("adam", None)


@dataclass(frozen=True)
class ShampooConfig(BasisConfig):
    """Shampoo's hyperparameters (besides :class:`~soap_lab.optim.engine.BasisConfig`'s, whose ordering here is
    Shampoo's: ``factor_update="before"``, ``momentum_space="original"``, eigh refreshes).

    Attributes:
        eps (1e-12): added to the factors' eigenvalues (the paper's baseline value).
        exponent (0.25): e in L^-e G R^-e; must be > 0.
        trace_scaling (False): multiply by (Tr GG)^((k−1)/2) (√Tr L for matrices), Claim 1's correction.
        grafting ("adam"): "adam" (layer-wise norm of Adam's update) or None.
        grafting_eps (1e-8): ε of the grafting Adam update.
        start_preconditioning_step: first step in Shampoo's direction (the constructor maps a negative value
            to ``precondition_frequency``).
    """

    eps: float = 1e-12
    refresh: str = "eigh"
    factor_update: str = "before"
    momentum_space: str = "original"
    exponent: float = 0.25
    trace_scaling: bool = False
    grafting: Optional[str] = "adam"
    grafting_eps: float = 1e-8

    def __post_init__(self):
        super().__post_init__()
        _check(self.grafting in GRAFTING, "grafting", self.grafting, f"one of {GRAFTING}")
        _check(self.exponent > 0, "exponent", self.exponent, "> 0")


class Shampoo(EigenbasisOptimizer):
    """Shampoo with EMA factors, eigenbasis inverse roots, optional grafting and the Claim 1 trace factor.

    Args:
        lr (3e-3): learning rate.
        betas ((0.95, 0.95)): (β1 momentum on the gradient, β2 for the factors and the grafting Adam).
        eps (1e-12): added to the factors' eigenvalues.
        weight_decay (0.0): decoupled, after the update.
        exponent (0.25): e in L^-e G R^-e.
        trace_scaling (False): multiply by (Tr GG)^((k−1)/2), Claim 1's correction.
        grafting ("adam"): "adam" or None.
        grafting_eps (1e-8): ε of the grafting Adam update.
        precondition_frequency (10): eigenbases/eigenvalues recomputed every f steps from step
            ``start_preconditioning_step`` on.
        start_preconditioning_step (-1): first step that uses Shampoo's direction; negative means
            ``precondition_frequency``.
        max_precond_dim (10000), precondition_1d (False): which dimensions get a factor (as SOAP).
        correct_bias (True): momentum divided by 1−β1^t, factors and Adam's V by 1−β2^t.
        bucket (True): stack same-layout parameters (same numbers up to round-off).
        on_nonfinite ("raise"): "raise" on NaN/Inf gradients or "skip" the step.
        refresh_policy ("fixed"): when bases are refreshed (:mod:`soap_lab.optim.refresh`): "fixed" (the paper's
            every f steps), "staggered" (every f steps per parameter, at offsets that spread the refresh cost
            over the steps), "adaptive" (each factor checked every f steps, refreshed only where its relative
            off-diagonal mass is not below ``refresh_tolerance``; Purifying Shampoo's criterion).
        refresh_tolerance (0.0): τ of "adaptive", ≥ 0 (0: every check refreshes, i.e. fixed; > 1: never after
            the first basis); must be 0 with the other policies.
        refresh_offsets (None): "staggered": one offset in [0, f) per parameter of the group, or None (from the
            cost model).
    """

    Config = ShampooConfig

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 3e-3,
        betas: Tuple[float, float] = (0.95, 0.95),
        eps: float = 1e-12,
        weight_decay: float = 0.0,
        exponent: float = 0.25,
        trace_scaling: bool = False,
        grafting: Optional[str] = "adam",
        grafting_eps: float = 1e-8,
        precondition_frequency: int = 10,
        start_preconditioning_step: int = -1,
        max_precond_dim: int = 10000,
        precondition_1d: bool = False,
        correct_bias: bool = True,
        *,
        bucket: bool = True,
        on_nonfinite: str = "raise",
        refresh_policy: str = "fixed",
        refresh_tolerance: float = 0.0,
        refresh_offsets: Optional[Sequence[int]] = None,
    ):
        f, start = int(precondition_frequency), int(start_preconditioning_step)
        config = ShampooConfig(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, exponent=float(exponent),
            trace_scaling=trace_scaling, grafting=grafting, grafting_eps=grafting_eps, precondition_frequency=f,
            start_preconditioning_step=start if start >= 1 else f, max_precond_dim=int(max_precond_dim),
            precondition_1d=precondition_1d, correct_bias=correct_bias, bucket=bool(bucket),
            refresh_policy=refresh_policy, refresh_tolerance=refresh_tolerance,
            refresh_offsets=offsets_option(refresh_offsets),
        )
        super().__init__(params, config, on_nonfinite=on_nonfinite)

    def make_rule(self, cfg: ShampooConfig) -> rules.Rule:
        return rules.ShampooRoots(cfg.exponent, cfg.trace_scaling, cfg.grafting, cfg.grafting_eps)
