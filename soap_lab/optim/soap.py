"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner (paper Algorithm 3, reference ``soap.py``).

A drop-in for the reference implementation: same constructor keywords, defaults and semantics.

One step for a layer with gradient G (the first call only builds GG and Q, without a weight update, so that a
gradient never enters the basis that projects it):

    G' = Q_Lᵀ G Q_R                                  kron.project
    M' ← β1 M' + (1−β1) G'                           momentum, kept in the eigenbasis (see below)
    V  ← β2 V  + (1−β2) G'⊙G'                        Adam's second moment, never rotated
    N  = Q_L (M' / (√V + ε)) Q_Rᵀ                     kron.project_back
    W  ← W − η·√(1−β2^t)/(1−β1^t)·N;  W ← W − η·wd·W  ε enters before bias correction; decay after the step
    L  ← β L + (1−β) G Gᵀ;  R ← β R + (1−β) Gᵀ G     after the weight step (β = shampoo_beta or β2)
    every f steps: Q ← qr(P Q) after sorting by diag(Qᵀ P Q); V permuted with the same order

Momentum: the paper keeps M in the original space and rotates it every step; the reference's HEAD keeps it
rotated and re-rotates it around every step. Both are the same algorithm. Here M' lives in the eigenbasis
and is rotated only when the basis changes (``momentum_space="eigenbasis"``, default, 4 fewer matmuls per
step); ``momentum_space="original"`` is the paper's form (the tests check they agree in float64).

Performance (issue 5). Per m×n layer a step needs 6·m·n·(m+n) FLOPs of matmuls (rotate the gradient in,
rotate the update back, update L and R), plus, every f steps, P·Q, one orthonormalization per factor and
the rotation of the momentum into the new basis. On top of that floor:
  - same-layout parameters are stacked into buckets (:mod:`soap_lab.optim.buckets`) and stepped together:
    batched matmuls, one elementwise kernel per operation per bucket, ``_foreach`` weight updates, work
    buffers shared by all buckets and reused every step (3× the largest bucket), no per-step allocations;
    the per-parameter path (``bucket=False``, and always for rank ≥ 3 layouts, ``precondition_1d`` vectors,
    factorized SOAP and ``momentum_space="original"``) is the readable reference the buckets are tested
    against (same numbers up to round-off in float64; bit for bit for the elementwise part);
  - the refresh allocates nothing of size n² either: the momentum leaves the old basis first, the new basis
    is written over the old one, and P·Q, its sorted copy and the Gram matrix live in a second workspace
    (2× the largest bucket's factor stack, held between refreshes: 113 MB at the 10.8M GPT's shapes, 0.9 GB
    at GPT-2 small's). On a CPU each fresh large allocation is page-faulted on first touch (≈ 0.7 s of a
    refresh step at the 10.8M GPT's shapes, measured before this change);
  - the factor update accumulates G Gᵀ in place by GEMMs with β (:func:`soap_lab.kron.syrk_`: only the
    lower blocks of large factors, 3/4 of the FLOPs per level), without a temporary;
  - the refresh's QR can use Cholesky-QR with an accuracy check and a Householder fallback
    (``qr_method="cholesky"``, :func:`soap_lab.kron.orthonormalize`): the same Q up to round-off and column
    signs, which the update does not depend on (V is per coordinate and squared, M is rotated through Q).

Differences from ``torch.optim.AdamW`` when no dimension is rotated (``max_precond_dim=0``), where SOAP is
exactly Adam from its second call on: (1) ε is added to √V *before* bias correction, so SOAP's ε
corresponds to torch's ε_t = ε/√(1−β2^t) at step t; (2) weight decay is applied *after* the update and
scales the updated weight (torch's AdamW decays the weight first).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, List, Tuple

import torch

from .. import kron
from . import second_moment
from .base import BucketedSteps, LabOptimizer
from .buckets import Bucket, BucketCache, Workspace

Tensor = torch.Tensor

REFRESH_METHODS = ("qr", "eigh")
MOMENTUM_SPACES = ("eigenbasis", "original")
DATA_FORMATS = ("channels_first", "channels_last")
QR_METHODS = kron.ORTHO_METHODS


class SOAP(BucketedSteps, LabOptimizer):
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
        merge_dims (False): merge small trailing dimensions of nD tensors (see :func:`soap_lab.kron.merged_shape`).
        precondition_1d (False): rotate 1-D parameters too (otherwise they get AdamW).
        normalize_grads (False): rescale each layer's update to unit RMS (helps at f≈100, hurts at f≈10).
        data_format ("channels_first"): "channels_last" for NHWC conv weights (matters with ``merge_dims``).
        correct_bias (True): Adam's bias correction.

    Extra keywords (this lab):
        refresh ("qr"): basis refresh by one power iteration + QR (Algorithm 4), or "eigh" (paper Fig. 7 right).
        one_sided (False): rotate only the smallest side of each tensor (paper §7).
        factorized (False): Adafactor's factored second moment instead of Adam's V inside the basis (paper §7).
            Both together give the paper's lowest-memory variant.
        momentum_space ("eigenbasis"): where M is stored (see module docstring); same algorithm either way.
        bucket (True): step same-layout parameters together (batched; see module docstring). Same numbers
            as ``bucket=False`` up to round-off.
        qr_method ("cholesky"): orthonormalization of the QR refresh: "cholesky" (Cholesky-QR, checked, with
            a Householder fallback; :func:`soap_lab.kron.orthonormalize`) or "householder" (the reference's
            ``torch.linalg.qr``). Same Q up to round-off and column signs.
        on_nonfinite ("raise"): "raise" a FloatingPointError on NaN/Inf gradients, or "skip" the step.
    """

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
    ):
        if refresh not in REFRESH_METHODS:
            raise ValueError(f"refresh must be one of {REFRESH_METHODS}, got {refresh!r}")
        if momentum_space not in MOMENTUM_SPACES:
            raise ValueError(f"momentum_space must be one of {MOMENTUM_SPACES}, got {momentum_space!r}")
        if qr_method not in QR_METHODS:
            raise ValueError(f"qr_method must be one of {QR_METHODS}, got {qr_method!r}")
        if data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
        if int(precondition_frequency) < 1:
            raise ValueError(f"precondition_frequency must be an integer ≥ 1, got {precondition_frequency!r}")
        defaults = dict(
            lr=lr, betas=tuple(betas), shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay,
            precondition_frequency=int(precondition_frequency), max_precond_dim=int(max_precond_dim),
            merge_dims=merge_dims, precondition_1d=precondition_1d, normalize_grads=normalize_grads,
            correct_bias=correct_bias, refresh=refresh, one_sided=one_sided, factorized=factorized,
            momentum_space=momentum_space, bucket=bool(bucket), qr_method=qr_method,
        )
        super().__init__(params, defaults, on_nonfinite=on_nonfinite)
        self._data_format = data_format
        self._buckets = BucketCache()  # a cache (see buckets.py); never part of state_dict
        self._workspace = Workspace()  # the step's work buffers (3 × the largest bucket's M)
        self._refresh_workspace = Workspace()  # the refresh's (2 × the largest bucket's factor stack)

    # -- tensor <-> layout ------------------------------------------------------------------------------
    def _nhwc(self, p: Tensor, group: dict) -> bool:
        return self._data_format == "channels_last" and p.dim() == 4 and group["merge_dims"]

    def _layout(self, p: Tensor, group: dict) -> kron.KronLayout:
        shape = (p.shape[0], p.shape[3], p.shape[1], p.shape[2]) if self._nhwc(p, group) else p.shape
        return kron.make_layout(
            shape, max_precond_dim=group["max_precond_dim"], merge_dims=group["merge_dims"],
            precondition_1d=group["precondition_1d"], one_sided=group["one_sided"],
        )

    def _to_layout(self, x: Tensor, p: Tensor, group: dict, layout: kron.KronLayout) -> Tensor:
        if self._nhwc(p, group):
            x = x.permute(0, 3, 1, 2)
        return x.reshape(layout.shape)

    def _from_layout(self, x: Tensor, p: Tensor, group: dict) -> Tensor:
        if self._nhwc(p, group):
            n, h, w, c = p.shape
            return x.reshape(n, c, h, w).permute(0, 2, 3, 1)
        return x.reshape(p.shape)

    # -- the step --------------------------------------------------------------------------------------
    def _bucket_key(self, gi: int, group: dict, p: Tensor):
        """Parameters with equal keys are stepped together; None: per-parameter path."""
        state = self.state[p]
        if (not group.get("bucket", True) or "Q" not in state or "exp_avg_sq" not in state
                or group["momentum_space"] != "eigenbasis"):
            return None
        layout = self._layout(p, group)
        if len(layout.shape) > 2 or (len(layout.shape) == 1 and layout.n_precond):
            # Rank ≥ 3: per parameter (readable, rare). A preconditioned 1-D factor gains rank one per step, so
            # for its first n steps the basis is decided by round-off; the per-parameter path reproduces the
            # reference's rounding there (see kron.update_factors_), a batched kernel would not.
            return None
        return (gi, layout.shape, layout.precond, state["exp_avg"].dtype, p.dtype, p.device, state["step"],
                self._nhwc(p, group))

    def _bucket_for(self, key: tuple, params: List[Tensor], states: List[dict], layout: kron.KronLayout) -> Bucket:
        return self._buckets.get(key[:6] + key[7:], params, states,  # everything but the step count
                                 lambda: Bucket(params, states, layout))

    def _update_bucket(self, group: dict, key: tuple, members: List[Tuple[Tensor, Tensor]]) -> None:
        """The step of :meth:`_update_param` for a bucket of same-layout parameters (batched)."""
        params = [p for p, _ in members]
        states = [self.state[p] for p in params]
        layout = self._layout(params[0], group)
        b = self._bucket_for(key, params, states, layout)
        beta1, beta2 = group["betas"]
        factor_beta = group["shampoo_beta"] if group["shampoo_beta"] >= 0 else beta2
        t = states[0]["step"] + 1
        for st in states:
            st["step"] = t
        G, buf1, buf2 = self._workspace.buffers(b.M)
        for i, (p, g) in enumerate(members):
            G[i].copy_(self._to_layout(g, p, group, layout))

        g_rot = b.rotate(G, out=buf1, tmp=buf2)
        # The factor update reads only G, so it can run now and free G as a buffer (same numbers as after
        # the weight step: the basis used below is the current one either way).
        b.update_factors_(G, factor_beta)
        b.M.lerp_(g_rot, 1 - beta1)
        b.V.mul_(beta2).addcmul_(g_rot, g_rot, value=1 - beta2)
        n_rot = torch.sqrt(b.V, out=buf2).add_(group["eps"])
        torch.div(b.M, n_rot, out=n_rot)
        update = b.rotate(n_rot, out=buf1, tmp=G, back=True)
        if group["normalize_grads"]:
            dims = tuple(range(1, update.dim()))
            update.div_(update.square().mean(dim=dims, keepdim=True).sqrt().add_(1e-30))
        step_size = group["lr"]
        if group["correct_bias"]:
            step_size *= math.sqrt(1 - beta2**t) / (1 - beta1**t)
        ups = [self._from_layout(update[i], p, group) for i, p in enumerate(params)]
        self._apply_updates(params, ups, step_size, group["lr"], group["weight_decay"])

        if t % group["precondition_frequency"] == 0 and layout.n_precond:
            perms = b.refresh_(group["refresh"], group.get("qr_method", "cholesky"), buf=buf1, tmp=buf2,
                               work=self._refresh_workspace.buffers)
            kron.permute_(b.V, perms, work=G)

    def _update_param(self, group: dict, p: Tensor, grad: Tensor) -> None:
        state = self.state[p]
        dtype = kron.state_dtype_for(p.dtype)
        layout = self._layout(p, group)
        g = self._to_layout(grad, p, group, layout).to(dtype)
        beta1, beta2 = group["betas"]
        factor_beta = group["shampoo_beta"] if group["shampoo_beta"] >= 0 else beta2

        if "Q" not in state:
            # First call: factors and eigenbasis from this gradient, no weight update (reference behaviour).
            state["step"] = 0
            state["exp_avg"] = torch.zeros(layout.shape, dtype=dtype, device=p.device)
            state.update(second_moment.init(layout.shape, factored=group["factorized"], dtype=dtype, device=p.device))
            state["GG"] = kron.init_factors(layout, dtype=dtype, device=p.device)
            kron.update_factors_(state["GG"], g, factor_beta)
            state["Q"] = kron.init_bases(state["GG"])
            return

        Q = state["Q"]
        state["step"] += 1
        t = state["step"]
        g_rot = kron.project(g, Q)

        # Inside the basis: Adam (or Adafactor with factorized=True).
        exp_avg = state["exp_avg"]
        if group["momentum_space"] == "eigenbasis":
            exp_avg.lerp_(g_rot, 1 - beta1)  # β1·M + (1−β1)·G' in one pass
            m_rot = exp_avg
        else:
            exp_avg.lerp_(g, 1 - beta1)
            m_rot = kron.project(exp_avg, Q)
        second_moment.update_(state, g_rot, beta2)
        denom = second_moment.estimate(state).sqrt().add_(group["eps"])
        step_size = group["lr"]
        if group["correct_bias"]:
            step_size *= math.sqrt(1 - beta2**t) / (1 - beta1**t)

        update = kron.project_back(m_rot / denom, Q)
        if group["normalize_grads"]:
            update = update / (1e-30 + update.square().mean().sqrt())
        self._apply_update(p, self._from_layout(update, p, group), step_size, group["lr"], group["weight_decay"])

        # After the weight step: the current gradient enters the factors, then (every f steps) the basis.
        kron.update_factors_(state["GG"], g, factor_beta)
        if t % group["precondition_frequency"] == 0 and layout.n_precond:
            new_Q, perms = kron.refresh_bases(state["GG"], Q, group["refresh"], group.get("qr_method", "cholesky"))
            second_moment.permute_(state, perms)
            if group["momentum_space"] == "eigenbasis":
                state["exp_avg"] = kron.project(kron.project_back(exp_avg, Q), new_Q)
            state["Q"] = new_Q
