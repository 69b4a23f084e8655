"""The rules inside the eigenbasis: what makes SOAP, EigenAdafactor (and Adafactor) and Shampoo different.

Paper §2-§4. The machinery (:mod:`.engine`) steps a stack of same-layout parameters (leading batch dimension): it
rotates the gradient and the momentum into the basis, G' = Q_Lᵀ G Q_R and M', asks the rule for the direction N'
inside the basis (and a factor of the learning rate), rotates it back, N = Q_L N' Q_Rᵀ, and steps the weights.

A rule is its state, its direction inside the basis and (optionally) how its state follows a refresh
(:class:`Rule`). Any rule can be passed in, ``EigenbasisOptimizer(params, rule=MyRule(), lr=..., ...)``; e.g.
RMSprop inside the basis::

    class RMSpropInBasis(Rule):
        def init(self, layout, *, dtype, device):           # per-parameter state, saved by state_dict
            return {"v": torch.zeros(layout.shape, dtype=dtype, device=device)}

        def direction(self, step):                           # tensors of the stack: (members, *layout)
            v = step.state["v"].mul_(0.99).addcmul_(step.g, step.g, value=0.01)
            return step.m / (v.sqrt() + 1e-8)                # per coordinate: follows the basis's refreshes

The lab's rules:

- :class:`Adam` (SOAP, Algorithm 3): V ← β2 V + (1−β2) G'⊙G';  N' = M' / (√V + ε), step factor √(1−β2^t)/(1−β1^t)
  (the reference's ε, before bias correction); ``eps_convention="adam"`` puts ε after bias correction as torch's
  Adam and Adafactor do.
- :class:`Adafactor` (EigenAdafactor, Algorithm 2; SOAP(factorized=True)): the same with Adafactor's factored V̂
  (:mod:`.second_moment`), or with the statistics read off Shampoo's factors (``statistics="factors"``, Claim 1);
  update clipping.
- :class:`ShampooRoots` (Shampoo, §2): N' = M' ⊙ (λ_i + ε)^-e (μ_j + ε)^-e with λ, μ the eigenvalues of the factors
  at the last refresh, optionally times (Tr L)^((k−1)/2) (Claim 1's trace factor), grafted onto the norm of the
  :class:`Adam` rule's direction in the original space (layer-wise grafting; the same rule, run on G and M).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from . import kron, second_moment

Tensor = torch.Tensor

EPS_CONVENTIONS = ("reference", "adam")
STATISTICS = ("running", "factors")

#: State entries the engine keeps for every parameter (a rule's own entries must be named otherwise).
ENGINE_KEYS = frozenset({"step", "exp_avg", "GG", "Q", "refresh_offset"})


def bias_corrections(cfg, t: int) -> Tuple[float, float]:
    """(1 − β1^t, 1 − β2^t), or (1, 1) without ``correct_bias``."""
    beta1, beta2 = cfg.betas
    return (1 - beta1**t, 1 - beta2**t) if cfg.correct_bias else (1.0, 1.0)


def per_layer(x: Tensor) -> Tuple[int, ...]:
    """The dimensions of one member of a stack (reductions over them are per layer)."""
    return tuple(range(1, x.dim()))


class Step:
    """What a rule reads at one step of a stack (every tensor with a leading dimension: the members).

    Attributes:
        state: the stack's state by name: the rule's entries (as its ``init`` named them, stacked) and the
            engine's (``exp_avg`` M, ``GG`` the factors, ``Q`` the bases: None before the first basis).
        t: the step (1 at the first weight update). cfg: the group's config (:class:`.config.BasisConfig`).
        grad: G in the layout's shape, not rotated. m: the momentum M' inside the basis.
        bases: Q per dimension (None where a dimension stays in the identity basis), or None (no basis yet).
        g: G' = Q_Lᵀ G Q_R (rotated when first read). momentum: M in the original space (rotated back when
            first read, if it is kept in the basis).
    All of them are read-only. :meth:`scratch` hands out work tensors; a direction may be written into one.
    """

    __slots__ = ("state", "t", "cfg", "grad", "m", "bases", "_g", "_momentum", "_free")

    def __init__(self, state: Dict[str, Any], t: int, cfg, grad: Tensor, m: Tensor, *, g: Optional[Tensor] = None,
                 momentum: Optional[Tensor] = None, bases: Optional[Sequence[Optional[Tensor]]] = None,
                 free: Optional[List[Tensor]] = None):
        self.state, self.t, self.cfg, self.grad, self.m, self.bases = state, t, cfg, grad, m, bases
        self._g, self._momentum = g, momentum
        self._free = [] if free is None else free

    def scratch(self) -> Tensor:
        """A tensor shaped like M (contents undefined), distinct from every other one handed out in this step."""
        return self._free.pop(0) if self._free else torch.empty_like(self.grad)

    def _rotated(self, x: Tensor, back: bool) -> Tensor:
        out, tmp = self.scratch(), self.scratch()
        y = kron.project(x, self.bases or (), back=back, batched=True, out=out, tmp=tmp)
        self._free[:0] = [tmp] if y is not x else [out, tmp]  # a rotation keeps its result in out
        return y

    @property
    def g(self) -> Tensor:
        if self._g is None:
            self._g = self._rotated(self.grad, back=False)
        return self._g

    @property
    def momentum(self) -> Tensor:
        if self._momentum is None:
            self._momentum = self._rotated(self.m, back=True)
        return self._momentum

    def original(self) -> "Step":
        """This step in the original space: G and M as they are, no basis (the same state and work tensors)."""
        return Step(self.state, self.t, self.cfg, self.grad, self.momentum, g=self.grad, momentum=self.momentum,
                    free=self._free)


class Rule:
    """A rule inside the basis: its state, its direction, how its state follows a refresh (module docstring).

    - :meth:`init`: the per-parameter state, each entry a tensor of the layout's shape (per coordinate of the
      basis) or a list with one optional tensor per dimension (vectors of that dimension's size); default none.
    - :meth:`direction`: N' for the stack (:class:`Step`), or ``(N', c)`` with c a factor of the learning rate.
    - ``follows_basis`` (True): the state is per coordinate of the basis, so a refresh that sorts the basis's
      slots (Algorithm 4) permutes it with them: tensor entries along every dimension, list entries along their
      own. False: no state lives in the basis (an eigh refresh then skips the sort).
    - :meth:`new_basis` (optional): told the eigenvalues (or their estimates) of every new basis.
    """

    follows_basis = True

    def init(self, layout: kron.KronLayout, *, dtype: torch.dtype, device: torch.device) -> Dict[str, Any]:
        return {}

    def direction(self, step: Step) -> Union[Tensor, Tuple[Tensor, float]]:
        raise NotImplementedError  # pragma: no cover

    def new_basis(self, state: Dict[str, Any], cfg, evals: List[Optional[Tensor]], t: int,
                  members: Optional[List[Optional[List[int]]]] = None) -> None:
        """After every new basis: ``evals[d]`` per dimension (None where not rotated). ``members`` (a refresh of
        some members only, :mod:`.refresh`): per dimension the members refreshed, and ``evals[d]`` holds their
        rows only (in that order); the other members keep what they had."""


class Adam(Rule):
    """Adam's second moment V in the basis (SOAP). ``eps``: its own ε instead of the config's (grafting)."""

    factored = False  # Adafactor's factored estimate for layers of rank ≥ 2

    def __init__(self, eps_convention: str = "reference", eps: Optional[float] = None):
        if eps_convention not in EPS_CONVENTIONS:
            raise ValueError(f"eps_convention must be one of {EPS_CONVENTIONS}, got {eps_convention!r}")
        self.eps_convention, self.eps = eps_convention, eps

    def init(self, layout, *, dtype, device):
        return second_moment.init(layout.shape, factored=self.factored, dtype=dtype, device=device)

    def second_moment(self, step: Step, g: Tensor, out: Tensor) -> Tensor:
        """Update the statistics with G' and return the estimate V (or V̂) to divide by."""
        second_moment.update_(step.state, g, step.cfg.betas[1], batched=True, work=out)
        return second_moment.estimate(step.state, batched=True, out=out)

    def direction(self, step):
        g = step.g  # first: a rotation it needs takes the first work tensors
        out = step.scratch()
        bc1, bc2 = bias_corrections(step.cfg, step.t)
        eps = step.cfg.eps if self.eps is None else self.eps
        v = self.second_moment(step, g, out)
        if self.eps_convention == "reference":  # ε before bias correction, folded into the step size
            denom = torch.sqrt(v, out=out).add_(eps)
            return torch.div(step.m, denom, out=out), math.sqrt(bc2) / bc1
        denom = torch.div(v, bc2, out=out).sqrt_().add_(eps)
        return torch.div(step.m, bc1, out=step.scratch()).div_(denom), 1.0


class Adafactor(Adam):
    """Adafactor's factored second moment in the basis (EigenAdafactor, SOAP(factorized=True)).

    ``statistics="factors"``: the row/column statistics of *all* past gradients rotated into the current
    basis, read off the factors: diag(Q_dᵀ GG_d Q_d) and Tr GG_0 (Claim 1's idealized form), for layers whose
    every dimension is preconditioned (others keep the running statistics). ``clip_threshold``: N' is divided
    by max(1, RMS(N')/threshold) per layer (Adafactor's update clipping)."""

    factored = True

    def __init__(self, eps_convention: str = "reference", statistics: str = "running",
                 clip_threshold: Optional[float] = None):
        super().__init__(eps_convention)
        if statistics not in STATISTICS:
            raise ValueError(f"statistics must be one of {STATISTICS}, got {statistics!r}")
        self.statistics, self.clip_threshold = statistics, clip_threshold

    def second_moment(self, step, g, out):
        Q, GG = step.bases, step.state["GG"]
        if self.statistics == "factors" and Q is not None and all(q is not None for q in Q):
            stats = [kron.rotated_diagonal(q, P @ q) for P, q in zip(GG, Q)]
            return second_moment.rank_one(stats, GG[0].diagonal(dim1=-2, dim2=-1).sum(-1), out=out)
        return super().second_moment(step, g, out)

    def direction(self, step):
        n_rot, scale = super().direction(step)
        if self.clip_threshold is not None:
            rms = n_rot.square().mean(dim=per_layer(n_rot), keepdim=True).sqrt()
            n_rot.div_((rms / self.clip_threshold).clamp_min(1.0))
        return n_rot, scale


class ShampooRoots(Rule):
    """Shampoo's inverse roots in the eigenbasis (state ``D``: the eigenvalues of the bias-corrected factors at
    the last refresh), grafted onto the norm of :class:`Adam`'s direction in the original space (``graft``, whose
    V is the state ``exp_avg_sq``); before the first basis, Adam's direction itself."""

    follows_basis = False  # D is recomputed at every refresh; M and V live in the original space

    def __init__(self, exponent: float, trace_scaling: bool, grafting: Optional[str], grafting_eps: float):
        self.exponent, self.trace_scaling, self.grafting = exponent, trace_scaling, grafting
        self.graft = Adam("adam", eps=grafting_eps)

    def init(self, layout, *, dtype, device):
        D = [torch.zeros(n, dtype=dtype, device=device) if pr else None for n, pr in zip(layout.shape, layout.precond)]
        return {**self.graft.init(layout, dtype=dtype, device=device), "D": D}

    def new_basis(self, state, cfg, evals, t, members=None):
        bc = 1 - cfg.factor_beta**t if cfg.correct_bias else 1.0  # the factors' bias correction
        for d, (D, lam) in enumerate(zip(state["D"], evals)):
            if lam is None:
                continue
            if members is None:
                D.copy_((lam / bc).clamp_min_(0))
            elif members[d]:  # a kept basis keeps its eigenvalues
                D.index_copy_(0, torch.tensor(members[d], device=D.device), (lam / bc).clamp_min_(0))

    def scale(self, step: Step) -> Tensor:
        """(λ_i + ε)^-e (μ_j + ε)^-e (× (Tr GG)^((k−1)/2) with ``trace_scaling``), broadcast per layer; an
        infinite scale (ε = 0 on a singular factor) becomes 0: no step along a direction with no curvature."""
        D, ndim, like = step.state["D"], step.m.dim() - 1, step.m
        scale = torch.ones((), dtype=like.dtype, device=like.device)
        for d, lam in enumerate(D):
            if lam is not None:
                x = (lam + step.cfg.eps).pow(-self.exponent)
                scale = scale * x.reshape(x.shape[:1] + (1,) * d + (-1,) + (1,) * (ndim - d - 1))
        scale = torch.nan_to_num(scale, nan=0.0, posinf=0.0)
        if self.trace_scaling:
            lams = [lam for lam in D if lam is not None]
            trace = lams[0].sum(-1)
            scale = scale * trace.pow((len(lams) - 1) / 2).reshape(trace.shape + (1,) * ndim)
        return scale

    def direction(self, step):
        adam, _ = self.graft.direction(step.original())
        if step.bases is None:  # before start_preconditioning_step: Adam's direction
            return adam
        bc1, _ = bias_corrections(step.cfg, step.t)
        n_rot = torch.mul(step.m, self.scale(step), out=step.scratch()).div_(bc1)
        if self.grafting == "adam":  # per layer (not over the stack); Q is orthogonal: ‖N‖ = ‖N'‖
            dims = per_layer(n_rot)
            norm = torch.linalg.vector_norm(n_rot, dim=dims, keepdim=True).clamp_min(torch.finfo(n_rot.dtype).tiny)
            n_rot.mul_(torch.linalg.vector_norm(adam, dim=dims, keepdim=True) / norm)
        return n_rot
