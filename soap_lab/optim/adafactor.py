"""Adafactor, and Adafactor run in Shampoo's eigenbasis (paper §3, Algorithm 2).

``Adafactor`` is the modern variant the paper uses: momentum β1, a fixed β2 (no relative step size, no β2
schedule), the factored second moment V̂ = A Cᵀ / 1ᵀA (:mod:`soap_lab.optim.second_moment`), ε added to √V̂,
Adam-style bias correction, decoupled weight decay, and update clipping only when ``clip_threshold`` is given.
1-D parameters keep the unfactored second moment.

``EigenAdafactor`` is the same rule applied to ``G' = Q_Lᵀ G Q_R``, with Q the eigenbasis of Shampoo's factors
(:mod:`soap_lab.kron`), refreshed every ``precondition_frequency`` steps. Claim 1 of the paper: with the basis
and the statistics recomputed from the current factors at every step (``precondition_frequency=1``,
``statistics="factors"``), this *is* Shampoo with exponent 1/2 and the trace correction — see
:mod:`soap_lab.equivalence` and ``tests/test_equivalence.py``.

Buckets (issue 5, EigenAdafactor's ``bucket=True``): once a parameter's state exists, matrices (rotated on one
side, both or neither) and unrotated vectors with the same shape, dtypes, device and step count are stacked
(:mod:`soap_lab.optim.buckets`) and stepped together, every option included (refresh eigh/qr, statistics
running/factors, factor_update after/before, clipping): batched GEMMs for the factor update, the rotations and
the factor statistics, one batched ``kron.refresh_bases`` per factor, one elementwise kernel per operation,
``_foreach`` weight updates, reused work buffers. Row/column statistics, their totals and the clipping RMS stay
per layer. State entries keep their names as per-parameter views into the stacks. Rank ≥ 3 tensors,
``precondition_1d`` vectors, first calls and ``bucket=False`` take the per-parameter path
(:meth:`Adafactor._update_param` with the basis hooks), the readable reference the buckets are tested against
(``tests/test_buckets_shampoo.py``, float64). Plain ``Adafactor`` is not bucketed.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, List, Optional, Tuple

import torch

from .. import kron
from . import second_moment
from .base import BucketedSteps, LabOptimizer
from .buckets import Bucket, BucketCache, Workspace

Tensor = torch.Tensor

STATISTICS = ("running", "factors")
FACTOR_UPDATES = ("after", "before")


class Adafactor(LabOptimizer):
    """Adafactor with momentum (the paper's baseline variant).

    Args:
        lr (3e-3): learning rate.
        betas ((0.95, 0.95)): (β1 momentum, β2 for the row/column statistics). β1 = 0 disables momentum.
        eps (1e-8): added to √V̂.
        weight_decay (0.0): decoupled weight decay, applied after the update.
        correct_bias (True): divide the momentum by 1−β1^t and V̂ by 1−β2^t.
        clip_threshold (None): if set, the update is divided by max(1, RMS(update)/clip_threshold)
            (Adafactor's update clipping; off by default, as in the paper).
        on_nonfinite ("raise"): "raise" on NaN/Inf gradients or "skip" the step.
    """

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
        on_nonfinite: str = "raise",
        **basis_options: Any,
    ):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, correct_bias=correct_bias,
                        clip_threshold=clip_threshold, **basis_options)
        super().__init__(params, defaults, on_nonfinite=on_nonfinite)

    # The basis: identity for Adafactor; EigenAdafactor overrides these three hooks.
    def _layout(self, p: Tensor, group: dict) -> kron.KronLayout:
        return kron.make_layout(p.shape, max_precond_dim=0)

    def _basis_before_step(self, state: dict, g: Tensor, group: dict) -> Optional[kron.Bases]:
        """The basis to step in, or None to make this call initialize only (no weight update)."""
        return [None] * g.dim()

    def _basis_after_step(self, state: dict, g: Tensor, group: dict) -> None:
        """Bookkeeping once the weight has moved (factor update and refresh, for SOAP's ordering)."""

    def _second_moment(self, state: dict, g_rot: Tensor, group: dict) -> Tensor:
        second_moment.update_(state, g_rot, group["betas"][1])
        return second_moment.estimate(state)

    def _update_param(self, group: dict, p: Tensor, grad: Tensor) -> None:
        state = self.state[p]
        dtype = kron.state_dtype_for(p.dtype)
        layout = self._layout(p, group)
        g = grad.reshape(layout.shape).to(dtype)
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros(layout.shape, dtype=dtype, device=p.device)
            state.update(second_moment.init(layout.shape, factored=True, dtype=dtype, device=p.device))
        Q = self._basis_before_step(state, g, group)  # may rotate exp_avg and permute the statistics
        if Q is None:
            return
        state["step"] += 1
        t = state["step"]
        beta1, beta2 = group["betas"]
        g_rot = kron.project(g, Q)

        # Inside the basis: Adafactor.
        exp_avg = state["exp_avg"]
        exp_avg.mul_(beta1).add_(g_rot, alpha=1 - beta1)
        v_hat = self._second_moment(state, g_rot, group)
        bc1, bc2 = (1 - beta1**t, 1 - beta2**t) if group["correct_bias"] else (1.0, 1.0)
        update = (exp_avg / bc1) / (v_hat / bc2).sqrt().add_(group["eps"])
        if group["clip_threshold"] is not None:
            rms = float(update.square().mean().sqrt())
            update = update / max(1.0, rms / group["clip_threshold"])

        update = kron.project_back(update, Q)
        self._apply_update(p, update, group["lr"], group["lr"], group["weight_decay"])
        self._basis_after_step(state, g, group)


class EigenAdafactor(BucketedSteps, Adafactor):
    """Adafactor in the eigenbasis of Shampoo's factors (paper Algorithm 2).

    Adafactor's rule (momentum, factored V̂, bias correction) applied to G' = Q_Lᵀ G Q_R and rotated back.
    Momentum is kept in the eigenbasis and rotated when the basis changes.

    Extra args:
        precondition_frequency (10), shampoo_beta (-1), max_precond_dim (10000), precondition_1d (False):
            as in :class:`soap_lab.SOAP`.
        refresh ("eigh"): basis refresh by eigendecomposition, or "qr" (one power iteration, as SOAP).
        qr_method ("cholesky"): the orthonormalization of ``refresh="qr"``, as in :class:`soap_lab.SOAP`
            (Cholesky-QR with an accuracy check and Householder fallback, or "householder").
        factor_update ("after"): when the current gradient enters the factors.
            ``"after"`` — SOAP's ordering (Algorithm 3, whose Adam is Adafactor here): the first call only
            builds GG and Q, later calls step in the current basis, then update GG, and refresh Q at steps
            f, 2f, ... (calls f+1, 2f+1, ...). A gradient never enters the basis that projects it, which
            also keeps the step well defined while a factor is rank deficient. With ``refresh="qr"`` this
            is exactly ``SOAP(factorized=True)`` (tested).
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
        bucket (True): step same-layout matrices (and unrotated vectors) together with batched ops (see
            module docstring). Same numbers as ``bucket=False`` up to round-off.

    Claim 1 as a trajectory: ``EigenAdafactor(factor_update="before", precondition_frequency=1,
    refresh="eigh", statistics="factors", eps=0)`` equals ``Shampoo(exponent=0.5, trace_scaling=True,
    grafting=None, eps=0, precondition_frequency=1, start_preconditioning_step=1)`` with the same betas.
    """

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
    ):
        if qr_method not in kron.ORTHO_METHODS:
            raise ValueError(f"qr_method must be one of {kron.ORTHO_METHODS}, got {qr_method!r}")
        if statistics not in STATISTICS:
            raise ValueError(f"statistics must be one of {STATISTICS}, got {statistics!r}")
        if factor_update not in FACTOR_UPDATES:
            raise ValueError(f"factor_update must be one of {FACTOR_UPDATES}, got {factor_update!r}")
        if refresh not in ("qr", "eigh"):
            raise ValueError(f"refresh must be 'qr' or 'eigh', got {refresh!r}")
        if int(precondition_frequency) < 1:
            raise ValueError(f"precondition_frequency must be an integer ≥ 1, got {precondition_frequency!r}")
        super().__init__(
            params, lr, betas, eps, weight_decay, correct_bias, clip_threshold, on_nonfinite=on_nonfinite,
            precondition_frequency=int(precondition_frequency), shampoo_beta=shampoo_beta,
            max_precond_dim=int(max_precond_dim), precondition_1d=precondition_1d, refresh=refresh,
            factor_update=factor_update, statistics=statistics, qr_method=qr_method, bucket=bool(bucket),
        )
        self._buckets = BucketCache()  # a cache (see buckets.py); never part of state_dict
        self._workspace = Workspace()  # the step's work buffers (4 × the largest bucket's M)
        self._refresh_workspace = Workspace()  # the refresh's scratch (2 × the largest bucket's factor stack)

    def _layout(self, p: Tensor, group: dict) -> kron.KronLayout:
        return kron.make_layout(p.shape, max_precond_dim=group["max_precond_dim"],
                                precondition_1d=group["precondition_1d"])

    def _factor_beta(self, group: dict) -> float:
        return group["shampoo_beta"] if group["shampoo_beta"] >= 0 else group["betas"][1]

    def _refresh(self, state: dict, group: dict) -> None:
        Q = state["Q"]
        new_Q, perms = kron.refresh_bases(state["GG"], Q, group["refresh"], group.get("qr_method", "cholesky"))
        second_moment.permute_(state, perms)
        state["exp_avg"] = kron.project(kron.project_back(state["exp_avg"], Q), new_Q)
        state["Q"] = new_Q

    def _basis_before_step(self, state: dict, g: Tensor, group: dict) -> Optional[kron.Bases]:
        first = "GG" not in state
        if first:
            state["GG"] = kron.init_factors(self._layout(g, group), dtype=g.dtype, device=g.device)
        if group["factor_update"] == "after":
            if first:  # SOAP's first call: factors and basis from this gradient, no weight update
                kron.update_factors_(state["GG"], g, self._factor_beta(group))
                state["Q"] = kron.init_bases(state["GG"])
                return None
            return state["Q"]
        kron.update_factors_(state["GG"], g, self._factor_beta(group))
        if first:
            state["Q"] = kron.init_bases(state["GG"])
        elif state["step"] % group["precondition_frequency"] == 0:  # about to take step f+1, 2f+1, ...
            self._refresh(state, group)
        return state["Q"]

    def _basis_after_step(self, state: dict, g: Tensor, group: dict) -> None:
        if group["factor_update"] == "after":
            kron.update_factors_(state["GG"], g, self._factor_beta(group))
            if state["step"] % group["precondition_frequency"] == 0:
                self._refresh(state, group)

    def _second_moment(self, state: dict, g_rot: Tensor, group: dict) -> Tensor:
        GG = state["GG"]
        if group["statistics"] == "running" or any(P is None for P in GG):
            return super()._second_moment(state, g_rot, group)
        # Statistics of all past gradients rotated into the current basis, read off the factors:
        # A_d = diag(Q_dᵀ GG_d Q_d) (row sums of the rotated second moment), 1ᵀA = Tr GG_d.
        stats = [kron.rotated_diagonal(q, P @ q) for P, q in zip(GG, state["Q"])]
        return second_moment.rank_one(stats, GG[0].diagonal().sum())

    # -- buckets ---------------------------------------------------------------------------------------
    def _bucket_key(self, gi: int, group: dict, p: Tensor):
        """Parameters with equal keys are stepped together (:meth:`_update_bucket`); None: per parameter."""
        state = self.state[p]
        if not group.get("bucket", True) or "Q" not in state:
            return None  # the first call initializes the state (and the basis) on the per-parameter path
        layout = self._layout(p, group)
        if len(layout.shape) > 2 or (len(layout.shape) == 1 and layout.n_precond):
            return None  # rank ≥ 3 and preconditioned vectors: per parameter (as SOAP)
        return (gi, state["step"], layout.shape, layout.precond, state["exp_avg"].dtype, p.dtype, p.device,
                "exp_avg_sq_factors" in state)

    def _refresh_bucket(self, b: Bucket, group: dict, buf: Tensor, tmp: Tensor) -> None:
        """:meth:`_refresh` for a bucket: one batched refresh per factor, the statistics permuted, the momentum
        rotated into the new basis in place (``buf``, ``tmp``: work buffers shaped like it)."""
        perms = b.refresh_(group["refresh"], group.get("qr_method", "cholesky"), buf=buf, tmp=tmp,
                           work=self._refresh_workspace.buffers)
        if b.V is not None:
            kron.permute_(b.V, perms, work=buf)
        else:
            for r, order in zip(b.stacked["exp_avg_sq_factors"], perms):
                if order is not None:
                    r.copy_(r.gather(-1, order))

    def _update_bucket(self, group: dict, key: tuple, members: List[Tuple[Tensor, Tensor]]) -> None:
        """The step of :meth:`Adafactor._update_param` with this class's basis hooks, for a bucket of
        same-layout parameters: batched matmuls, refreshes and elementwise ops on the stacked state; the
        statistics' means and the update clipping stay per layer."""
        params = [p for p, _ in members]
        states = [self.state[p] for p in params]
        layout = self._layout(params[0], group)
        factored = "exp_avg_sq_factors" in states[0]
        b = self._buckets.get(key[:1] + key[2:], params, states, lambda: Bucket(
            params, states, layout, tensors=("exp_avg",) if factored else ("exp_avg", "exp_avg_sq"),
            lists=("GG", "Q", "exp_avg_sq_factors") if factored else ("GG", "Q")))
        beta1, beta2 = group["betas"]
        f = group["precondition_frequency"]
        G, buf1, buf2, buf3 = self._workspace.buffers(b.M, 4)
        for i, (p, g) in enumerate(members):
            G[i].copy_(g.reshape(layout.shape))

        s = states[0]["step"]
        if group["factor_update"] == "before":  # Shampoo's ordering (see _basis_before_step)
            b.update_factors_(G, self._factor_beta(group))
            if s % f == 0 and layout.n_precond:
                self._refresh_bucket(b, group, buf1, buf2)
        t = s + 1
        for st in states:
            st["step"] = t
        g_rot = b.rotate(G, out=buf1, tmp=buf2)

        # Inside the basis: Adafactor, with per-layer statistics.
        b.M.mul_(beta1).add_(g_rot, alpha=1 - beta1)
        v_hat = buf2
        if group["statistics"] == "factors" and layout.n_precond == len(layout.shape) == 2:
            # diag(Q_dᵀ GG_d Q_d) and Tr GG_0 of each layer (see _second_moment)
            stats = [kron.rotated_diagonal(q, torch.bmm(P, q)) for P, q in zip(b.GG, b.Q)]
            total = b.GG[0].diagonal(dim1=-2, dim2=-1).sum(-1)
        elif factored:  # running statistics: means of g'² over the other dimension, per layer
            g2 = torch.mul(g_rot, g_rot, out=buf2)
            for d, r in enumerate(b.stacked["exp_avg_sq_factors"]):
                r.mul_(beta2).add_(g2.mean(dim=2 - d), alpha=1.0 - beta2)
            stats = b.stacked["exp_avg_sq_factors"]
            total = stats[0].mean(-1)
        else:  # unfactored V (vectors)
            b.V.mul_(beta2).addcmul_(g_rot, g_rot, value=1.0 - beta2)
            stats = None
        bc1, bc2 = (1 - beta1**t, 1 - beta2**t) if group["correct_bias"] else (1.0, 1.0)
        if stats is None:
            torch.div(b.V, bc2, out=v_hat)
        else:  # per layer: A Cᵀ / total
            second_moment.rank_one(stats, total, out=v_hat).div_(bc2)
        denom = v_hat.sqrt_().add_(group["eps"])
        update = torch.div(b.M, bc1, out=buf3).div_(denom)
        if group["clip_threshold"] is not None:  # per layer
            rms = update.square().mean(dim=tuple(range(1, update.dim())), keepdim=True).sqrt()
            update.div_((rms / group["clip_threshold"]).clamp_min(1.0))

        update = b.rotate(update, out=buf1, tmp=buf2, back=True)
        ups = [update[i].reshape(p.shape) for i, p in enumerate(params)]
        self._apply_updates(params, ups, group["lr"], group["lr"], group["weight_decay"])

        if group["factor_update"] == "after":  # SOAP's ordering (see _basis_after_step)
            b.update_factors_(G, self._factor_beta(group))
            if t % f == 0 and layout.n_precond:
                self._refresh_bucket(b, group, buf1, buf2)
