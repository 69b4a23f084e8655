"""Shampoo: inverse roots of the Kronecker factors, applied in their eigenbasis (paper §2).

``W ← W − η · L^-e G R^-e`` with L, R the EMA factors of :mod:`soap_lab.kron`. Written in the eigenbasis
that SOAP and EigenAdafactor also use, the preconditioner is a per-coordinate scale:

    G' = Q_Lᵀ G Q_R;   N' = G' ⊙ (λ_i + ε)^-e (μ_j + ε)^-e;   N = Q_L N' Q_Rᵀ

with λ, μ the eigenvalues of L, R — so the three optimizers differ only in this inner rule. Eigenvalues and
bases come from eigh of the factors, recomputed every ``precondition_frequency`` steps and frozen in
between (as in practice, e.g. DistributedShampoo).

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

from typing import Any, Iterable, Optional, Tuple

import torch

from .. import kron
from .base import LabOptimizer

Tensor = torch.Tensor

GRAFTING = ("adam", None)


class Shampoo(LabOptimizer):
    """Shampoo with EMA factors, eigenbasis inverse roots, optional grafting and the Claim 1 trace factor.

    Args:
        lr (3e-3): learning rate.
        betas ((0.95, 0.95)): (β1 momentum on the gradient, β2 for the factors and the grafting Adam).
        eps (1e-12): added to the factors' eigenvalues (the paper's baseline value).
        weight_decay (0.0): decoupled, after the update.
        exponent (0.25): e in L^-e G R^-e.
        trace_scaling (False): multiply by (Tr GG)^((k−1)/2) (√Tr L for matrices), Claim 1's correction.
        grafting ("adam"): "adam" or None.
        grafting_eps (1e-8): ε of the grafting Adam update.
        precondition_frequency (10): eigenbases/eigenvalues recomputed every f steps from step
            ``start_preconditioning_step`` on.
        start_preconditioning_step (-1): first step that uses Shampoo's direction; negative means
            ``precondition_frequency``.
        max_precond_dim (10000), precondition_1d (False): which dimensions get a factor (as SOAP).
        correct_bias (True): momentum divided by 1−β1^t, factors and Adam's V by 1−β2^t.
    """

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
        on_nonfinite: str = "raise",
    ):
        if grafting not in GRAFTING:
            raise ValueError(f"grafting must be one of {GRAFTING}, got {grafting!r}")
        if not exponent > 0:
            raise ValueError(f"exponent must be > 0, got {exponent!r}")
        if int(precondition_frequency) < 1:
            raise ValueError(f"precondition_frequency must be an integer ≥ 1, got {precondition_frequency!r}")
        start = int(start_preconditioning_step)
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, exponent=float(exponent),
            trace_scaling=trace_scaling, grafting=grafting, grafting_eps=grafting_eps,
            precondition_frequency=int(precondition_frequency),
            start_preconditioning_step=start if start >= 1 else int(precondition_frequency),
            max_precond_dim=int(max_precond_dim), precondition_1d=precondition_1d, correct_bias=correct_bias,
        )
        super().__init__(params, defaults, on_nonfinite=on_nonfinite)

    def _update_param(self, group: dict, p: Tensor, grad: Tensor) -> None:
        state = self.state[p]
        dtype = kron.state_dtype_for(p.dtype)
        layout = kron.make_layout(p.shape, max_precond_dim=group["max_precond_dim"],
                                  precondition_1d=group["precondition_1d"])
        g = grad.reshape(layout.shape).to(dtype)
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros(layout.shape, dtype=dtype, device=p.device)
            state["exp_avg_sq"] = torch.zeros(layout.shape, dtype=dtype, device=p.device)  # grafting Adam's V
            state["GG"] = kron.init_factors(layout, dtype=dtype, device=p.device)
            state["Q"] = None
            state["D"] = None  # eigenvalues of the bias-corrected factors, one vector per dimension
        state["step"] += 1
        t = state["step"]
        beta1, beta2 = group["betas"]
        bc1, bc2 = (1 - beta1**t, 1 - beta2**t) if group["correct_bias"] else (1.0, 1.0)

        kron.update_factors_(state["GG"], g, beta2)  # Shampoo preconditions with the current gradient in
        state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
        m_hat = state["exp_avg"] / bc1
        V = state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        adam = m_hat / (V / bc2).sqrt().add_(group["grafting_eps"])

        start = group["start_preconditioning_step"]
        if layout.n_precond == 0 or t < start:
            update = adam
        else:
            if state["Q"] is None or (t - start) % group["precondition_frequency"] == 0:
                eig = [None if P is None else kron.eigh_descending(P / bc2, return_eigenvalues=True)
                       for P in state["GG"]]
                state["D"] = [None if e is None else e[0].clamp_min(0) for e in eig]
                state["Q"] = [None if e is None else e[1] for e in eig]
            # Inside the basis: Shampoo's per-coordinate scale (λ_i + ε)^-e (μ_j + ε)^-e.
            scale = torch.ones((), dtype=dtype, device=p.device)
            for d, lam in enumerate(state["D"]):
                if lam is not None:
                    shape = [1] * g.dim()
                    shape[d] = -1
                    scale = scale * (lam + group["eps"]).pow(-group["exponent"]).reshape(shape)
            scale = torch.nan_to_num(scale, nan=0.0, posinf=0.0)
            if group["trace_scaling"]:
                trace = next(lam for lam in state["D"] if lam is not None).sum()
                scale = scale * trace.pow((layout.n_precond - 1) / 2)
            update = kron.project_back(kron.project(m_hat, state["Q"]) * scale, state["Q"])
            if group["grafting"] == "adam":
                update = update * (adam.norm() / update.norm().clamp_min(torch.finfo(dtype).tiny))
        self._apply_update(p, update, group["lr"], group["lr"], group["weight_decay"])
