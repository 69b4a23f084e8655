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

Buckets (issue 5, ``bucket=True``): after a parameter's first call, matrices (rotated on one side, both or
neither) and unrotated vectors with the same shape, dtypes, device and step count are stacked
(:mod:`soap_lab.optim.buckets`) and stepped together: batched GEMMs for the factor update and the rotations,
one batched eigh per factor at a refresh, one elementwise kernel per operation, ``_foreach`` weight updates,
reused work buffers. The grafting norms and the trace stay per layer (reductions over each matrix). State
entries keep their names as per-parameter views into the stacks. Rank ≥ 3 tensors, ``precondition_1d``
vectors, first calls and ``bucket=False`` take the per-parameter path (:meth:`Shampoo._update_param`), the
readable reference the buckets are tested against (``tests/test_buckets_shampoo.py``, float64).
"""
from __future__ import annotations

from typing import Any, Iterable, List, Optional, Tuple

import torch

from .. import kron
from .base import BucketedSteps, LabOptimizer
from .buckets import Bucket, BucketCache, Workspace

Tensor = torch.Tensor

GRAFTING = ("adam", None)


class Shampoo(BucketedSteps, LabOptimizer):
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
        bucket (True): step same-layout matrices (and unrotated vectors) together with batched ops (see
            module docstring). Same numbers as ``bucket=False`` up to round-off.
        on_nonfinite ("raise"): "raise" on NaN/Inf gradients or "skip" the step.
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
        bucket: bool = True,
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
            bucket=bool(bucket),
        )
        super().__init__(params, defaults, on_nonfinite=on_nonfinite)
        self._buckets = BucketCache()  # a cache (see buckets.py); never part of state_dict
        self._workspace = Workspace()

    def _layout(self, p: Tensor, group: dict) -> kron.KronLayout:
        return kron.make_layout(p.shape, max_precond_dim=group["max_precond_dim"],
                                precondition_1d=group["precondition_1d"])

    # -- the rule inside the basis, shared by the per-parameter and the bucketed step (stacks: leading batch dim)
    @staticmethod
    def _eigen(GG: kron.Bases, bc2: float) -> Tuple[kron.Bases, kron.Bases]:
        """Eigenvalues (clipped at 0) and eigenbases of the bias-corrected factors ``GG[d] / bc2``."""
        eig = [None if P is None else kron.eigh_descending(P / bc2, return_eigenvalues=True) for P in GG]
        return [None if e is None else e[0].clamp_min(0) for e in eig], [None if e is None else e[1] for e in eig]

    @staticmethod
    def _scale(D: kron.Bases, group: dict, layout: kron.KronLayout, like: Tensor) -> Tensor:
        """Shampoo's per-coordinate scale in the eigenbasis, (λ_i + ε)^-e (μ_j + ε)^-e (times (Tr GG)^((k−1)/2)
        with ``trace_scaling``), shaped to broadcast against the layout (with the stacks' batch dimension)."""
        ndim = len(layout.shape)
        scale = torch.ones((), dtype=like.dtype, device=like.device)
        for d, lam in enumerate(D):
            if lam is not None:
                s = (lam + group["eps"]).pow(-group["exponent"])
                scale = scale * s.reshape(s.shape[:-1] + (1,) * d + (-1,) + (1,) * (ndim - d - 1))
        scale = torch.nan_to_num(scale, nan=0.0, posinf=0.0)
        if group["trace_scaling"]:
            trace = next(lam for lam in D if lam is not None).sum(-1)  # one trace per layer
            scale = scale * trace.pow((layout.n_precond - 1) / 2).reshape(trace.shape + (1,) * ndim)
        return scale

    @staticmethod
    def _graft(update: Tensor, adam: Tensor, ndim: int) -> Tensor:
        """Layer-wise grafting factor ‖adam‖ / ‖update‖, the norms taken over each layer's last ``ndim`` dims."""
        dims = tuple(range(update.dim() - ndim, update.dim()))
        norm = torch.linalg.vector_norm(update, dim=dims, keepdim=True)
        return torch.linalg.vector_norm(adam, dim=dims, keepdim=True) / norm.clamp_min(torch.finfo(update.dtype).tiny)

    # -- buckets ---------------------------------------------------------------------------------------
    def _bucket_key(self, gi: int, group: dict, p: Tensor):
        """Parameters with equal keys are stepped together (:meth:`_update_bucket`); None: per parameter."""
        state = self.state[p]
        if not group.get("bucket", True) or "step" not in state:
            return None  # the first call initializes the state on the per-parameter path
        layout = self._layout(p, group)
        if len(layout.shape) > 2 or (len(layout.shape) == 1 and layout.n_precond):
            return None  # rank ≥ 3 and preconditioned vectors: per parameter (as SOAP)
        return (gi, state["step"], layout.shape, layout.precond, state["exp_avg"].dtype, p.dtype, p.device,
                state.get("Q") is None)

    def _update_bucket(self, group: dict, key: tuple, members: List[Tuple[Tensor, Tensor]]) -> None:
        """The step of :meth:`_update_param` for a bucket of same-layout parameters: batched matmuls and
        elementwise ops on the stacked state; the grafting norms and the trace stay per layer."""
        params = [p for p, _ in members]
        states = [self.state[p] for p in params]
        layout = self._layout(params[0], group)
        b = self._buckets.get(key[:1] + key[2:], params, states, lambda: Bucket(
            params, states, layout, tensors=("exp_avg", "exp_avg_sq"), lists=("GG", "Q", "D")))
        t = states[0]["step"] + 1
        for st in states:
            st["step"] = t
        beta1, beta2 = group["betas"]
        bc1, bc2 = (1 - beta1**t, 1 - beta2**t) if group["correct_bias"] else (1.0, 1.0)
        G, m_hat, adam, tmp = self._workspace.buffers(b.M, 4)
        for i, (p, g) in enumerate(members):
            G[i].copy_(g.reshape(layout.shape))

        b.update_factors_(G, beta2)
        b.M.mul_(beta1).add_(G, alpha=1 - beta1)
        torch.div(b.M, bc1, out=m_hat)
        b.V.mul_(beta2).addcmul_(G, G, value=1 - beta2)
        torch.div(b.V, bc2, out=adam).sqrt_().add_(group["grafting_eps"])
        torch.div(m_hat, adam, out=adam)

        start = group["start_preconditioning_step"]
        if layout.n_precond == 0 or t < start:
            update = adam
        else:
            if b.Q is None or (t - start) % group["precondition_frequency"] == 0:
                new_D, new_Q = self._eigen(b.GG, bc2)  # one batched eigh per factor
                b.replace("D", new_D, states)
                b.replace("Q", new_Q, states)
            rotated = b.rotate(m_hat, out=G, tmp=tmp)
            rotated.mul_(self._scale(b.stacked["D"], group, layout, rotated))
            update = b.rotate(rotated, out=m_hat, tmp=tmp, back=True)
            if group["grafting"] == "adam":  # per layer: norms over each matrix, not over the stack
                update.mul_(self._graft(update, adam, len(layout.shape)))
        ups = [update[i].reshape(p.shape) for i, p in enumerate(params)]
        self._apply_updates(params, ups, group["lr"], group["lr"], group["weight_decay"])

    def _update_param(self, group: dict, p: Tensor, grad: Tensor) -> None:
        state = self.state[p]
        dtype = kron.state_dtype_for(p.dtype)
        layout = self._layout(p, group)
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
                state["D"], state["Q"] = self._eigen(state["GG"], bc2)
            scale = self._scale(state["D"], group, layout, m_hat)
            update = kron.project_back(kron.project(m_hat, state["Q"]) * scale, state["Q"])
            if group["grafting"] == "adam":
                update = update * self._graft(update, adam, g.dim())
        self._apply_update(p, update, group["lr"], group["lr"], group["weight_decay"])
