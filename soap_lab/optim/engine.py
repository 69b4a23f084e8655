"""The one eigenbasis step every optimizer of the lab runs; they differ only in the rule inside the basis.

Paper: Vyas et al. 2024, Algorithms 2-4. One step of a stack of same-layout parameters (:mod:`.stack`),
gradients G in the layout's shape (:mod:`.kron` has each line's function):

    first call, SOAP's ordering: L, R ← G Gᵀ, Gᵀ G; Q ← eigh; no weight update     update_factors_, init_bases
    Shampoo's ordering: L, R updated first; Q refreshed at steps start, start+f, …   (factor_update="before")
    G' = Q_Lᵀ G Q_R                                                                  kron.project
    M' ← β1 M' + (1−β1) G'   (or M in the original space, rotated: momentum_space)
    N' = rule(G', M')         Adam (SOAP), Adafactor (EigenAdafactor), roots (Shampoo)  rules.*.direction
    N  = Q_L N' Q_Rᵀ                                                                 kron.project(back=True)
    W  ← W − η·c_t·N;  W ← W − η·wd·W                                                LabOptimizer._apply_updates
    SOAP's ordering: L, R ← β L + (1−β) G Gᵀ, … after the step; Q refreshed at steps f, 2f, …
    refresh: M' carried into the new basis, the rule's per-coordinate state permuted     _refresh
    when (refresh_policy): fixed as above; staggered / adaptive per factor (:mod:`.refresh`)  _scheduled_refresh

Everything here is written once: the three optimizers (and Adafactor, whose basis is the identity) are this
class with a :class:`.rules.Rule` and a typed config (:class:`BasisConfig` and the optimizer's subclass).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch

from . import cost, kron
from . import refresh as policies
from .base import LabOptimizer
from .linalg import ORTHO_METHODS
from .stack import Stack, StackCache, Workspace

Tensor = torch.Tensor

REFRESH_METHODS = ("qr", "eigh")
MOMENTUM_SPACES = ("eigenbasis", "original")
FACTOR_UPDATES = ("after", "before")
DATA_FORMATS = ("channels_first", "channels_last")


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class BasisConfig:
    """Options of the eigenbasis machinery, shared by every optimizer (validated on construction).

    Attributes:
        lr (3e-3): learning rate η.
        betas ((0.95, 0.95)): (β1 momentum, β2 second moment).
        eps: the rule's ε (default set by each optimizer).
        weight_decay: decoupled, applied after the update (default set by each optimizer).
        correct_bias (True): Adam-style bias corrections 1−β1^t, 1−β2^t.
        precondition_frequency (10): f; the basis is refreshed every f steps.
        shampoo_beta (-1): EMA rate of the factors; negative means β2.
        max_precond_dim (10000): dimensions larger than this stay in the identity basis.
        merge_dims (False): merge small dimensions of nD tensors (:func:`.kron.merged_shape`).
        precondition_1d (False): rotate 1-D parameters too.
        one_sided (False): rotate only the smallest side of each tensor (paper §7).
        data_format ("channels_first"): "channels_last" for NHWC conv weights (matters with ``merge_dims``).
        refresh ("qr"): one power iteration + QR (Algorithm 4) or a full "eigh" (Fig. 7 right).
        qr_method ("cholesky"): the QR of a refresh (:func:`.linalg.orthonormalize`) or "householder".
        factor_update ("after"): SOAP's ordering (the gradient enters the factors after the step; the first
            call only builds GG and Q) or "before" (Shampoo's: factors first, Q at steps start, start+f, …).
        start_preconditioning_step (1): with ``factor_update="before"``, the first step in a basis.
        momentum_space ("eigenbasis"): M kept in the basis and carried at a refresh, or in the "original"
            space and rotated every step (the paper's form; same algorithm).
        bucket (True): stack same-layout parameters (False: a stack of one each; same numbers up to round-off).
        refresh_policy ("fixed"): when each factor's basis is refreshed (:mod:`.refresh`): "fixed", the paper's
            every f steps (today's behaviour, bit for bit); "staggered", every f steps per parameter but at its
            own offset; "adaptive", checked every f steps and refreshed only where its relative off-diagonal
            mass ‖QᵀPQ − diag‖_F/‖QᵀPQ‖_F is not below ``refresh_tolerance`` (Purifying Shampoo's criterion).
        refresh_tolerance (0.0): τ of "adaptive" (≥ 0; 0 refreshes at every check, > 1 never after the first
            basis); must stay 0 with the other policies.
        refresh_offsets (None): "staggered" only: one offset in [0, f) per parameter of the group (in group
            order), or None for offsets from the cost model (:func:`.refresh.assign_offsets`).
    """

    lr: float = 3e-3
    betas: Tuple[float, float] = (0.95, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    correct_bias: bool = True
    precondition_frequency: int = 10
    shampoo_beta: float = -1
    max_precond_dim: int = 10000
    merge_dims: bool = False
    precondition_1d: bool = False
    one_sided: bool = False
    data_format: str = "channels_first"
    refresh: str = "qr"
    qr_method: str = "cholesky"
    factor_update: str = "after"
    start_preconditioning_step: int = 1
    momentum_space: str = "eigenbasis"
    bucket: bool = True
    refresh_policy: str = "fixed"
    refresh_tolerance: float = 0.0
    refresh_offsets: Optional[Tuple[int, ...]] = None

    def __post_init__(self):
        lr = self.lr
        _check(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr >= 0, "lr (the learning rate)", lr,
               "a float ≥ 0")
        _check(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "betas", self.betas,
               "two numbers in [0, 1)")
        _check(self.eps >= 0, "eps", self.eps, "≥ 0")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "≥ 0")
        f = self.precondition_frequency
        _check(isinstance(f, int) and f >= 1, "precondition_frequency", f, "an integer ≥ 1")
        _check(self.refresh in REFRESH_METHODS, "refresh", self.refresh, f"one of {REFRESH_METHODS}")
        _check(self.qr_method in ORTHO_METHODS, "qr_method", self.qr_method, f"one of {ORTHO_METHODS}")
        _check(self.factor_update in FACTOR_UPDATES, "factor_update", self.factor_update, f"one of {FACTOR_UPDATES}")
        _check(self.momentum_space in MOMENTUM_SPACES, "momentum_space", self.momentum_space,
               f"one of {MOMENTUM_SPACES}")
        _check(self.data_format in DATA_FORMATS, "data_format", self.data_format, f"one of {DATA_FORMATS}")
        policies.validate(self)

    @property
    def factor_beta(self) -> float:
        return self.shampoo_beta if self.shampoo_beta >= 0 else self.betas[1]

    @classmethod
    def from_group(cls, group: Dict[str, Any]) -> "BasisConfig":
        return cls(**{f.name: group[f.name] for f in dataclasses.fields(cls)})


class StackKey(NamedTuple):
    """Parameters with equal keys share a stack (the step count is kept apart: a stack is reused across steps)."""

    group: int
    shape: Tuple[int, ...]
    precond: Tuple[bool, ...]
    state_dtype: torch.dtype
    param_dtype: torch.dtype
    device: torch.device
    nhwc: bool
    has_basis: bool
    alone: Optional[int]  # id(p) with bucket=False


class EigenbasisOptimizer(LabOptimizer):
    """Base of SOAP, Shampoo, EigenAdafactor and Adafactor: the stacked step above with ``rule``.

    Subclasses set ``Config`` (a :class:`BasisConfig` subclass) and ``make_rule(config)``; their constructor
    builds the config from its keywords (validating them) and passes it here.
    """

    Config = BasisConfig

    def __init__(self, params: Iterable[Any], config: BasisConfig, on_nonfinite: str = "raise"):
        super().__init__(params, dataclasses.asdict(config), on_nonfinite=on_nonfinite)
        self._stacks = StackCache()  # a cache (see stack.py); never part of state_dict
        self._workspace = Workspace()  # the step's work buffers (5 × the largest stack's M)
        self._refresh_workspace = Workspace()  # the refresh's scratch (2 × the largest stack's factor stack)
        self._check_workspace = Workspace()  # adaptive: P·Q of every factor of the stack being checked
        self._refresh_stats = policies.RefreshStats()  # diagnostics (refresh_stats()); counters in state_dict
        self._offsets: Dict[int, int] = {}  # staggered: the cost model's offset per id(p) (a cache)
        self._flops: Dict[tuple, List[float]] = {}  # per layout: estimated refresh FLOPs of each factor
        for group in self.param_groups:
            policies.check_offsets_length(self.Config.from_group(group), len(group["params"]))

    def make_rule(self, cfg: BasisConfig):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- tensor <-> layout ------------------------------------------------------------------------------
    @staticmethod
    def _nhwc(p: Tensor, cfg: BasisConfig) -> bool:
        return cfg.data_format == "channels_last" and p.dim() == 4 and cfg.merge_dims

    def _layout(self, p: Tensor, cfg: BasisConfig) -> kron.KronLayout:
        shape = (p.shape[0], p.shape[3], p.shape[1], p.shape[2]) if self._nhwc(p, cfg) else p.shape
        return kron.make_layout(shape, max_precond_dim=cfg.max_precond_dim, merge_dims=cfg.merge_dims,
                                precondition_1d=cfg.precondition_1d, one_sided=cfg.one_sided)

    def _to_layout(self, x: Tensor, p: Tensor, cfg: BasisConfig, layout: kron.KronLayout) -> Tensor:
        return (x.permute(0, 3, 1, 2) if self._nhwc(p, cfg) else x).reshape(layout.shape)

    def _from_layout(self, x: Tensor, p: Tensor, cfg: BasisConfig) -> Tensor:
        if self._nhwc(p, cfg):
            n, h, w, c = p.shape
            return x.reshape(n, c, h, w).permute(0, 2, 3, 1)
        return x.reshape(p.shape)

    # -- state ------------------------------------------------------------------------------------------
    def _init_state(self, state: dict, p: Tensor, layout: kron.KronLayout, rule) -> None:
        """Zero state under the reference's names; fills in what a checkpoint from an older version lacks."""
        dtype = kron.state_dtype_for(p.dtype)
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros(layout.shape, dtype=dtype, device=p.device)
            state.update(rule.init(layout, dtype=dtype, device=p.device))
        if "GG" not in state:
            state["GG"] = kron.init_factors(layout, dtype=dtype, device=p.device)
            state.setdefault("Q", None)

    # -- the step ---------------------------------------------------------------------------------------
    def _update_all(self, items: List[Tuple[dict, Tensor, Tensor]]) -> None:
        index = {id(g): i for i, g in enumerate(self.param_groups)}
        configs: Dict[int, Tuple[BasisConfig, Any]] = {}
        stacks: Dict[Tuple[StackKey, int], List[Tuple[Tensor, Tensor]]] = {}
        for group, p, g in items:
            gi = index[id(group)]
            if gi not in configs:
                cfg = self.Config.from_group(group)
                policies.check_offsets_length(cfg, len(group["params"]))
                configs[gi] = (cfg, self.make_rule(cfg))
            cfg, rule = configs[gi]
            layout = self._layout(p, cfg)
            state = self.state[p]
            self._init_state(state, p, layout, rule)
            if cfg.refresh_policy == "staggered" and "refresh_offset" not in state:
                state["refresh_offset"] = self._offset_of(p)
            key = StackKey(gi, layout.shape, layout.precond, state["exp_avg"].dtype, p.dtype, p.device,
                           self._nhwc(p, cfg), state["Q"] is not None, None if cfg.bucket else id(p))
            stacks.setdefault((key, state["step"]), []).append((p, g))
        for (key, _), members in stacks.items():
            cfg, rule = configs[key.group]
            self._step_stack(key, cfg, rule, members)

    def _step_stack(self, key: StackKey, cfg: BasisConfig, rule, members: List[Tuple[Tensor, Tensor]]) -> None:
        params = [p for p, _ in members]
        states = [self.state[p] for p in params]
        layout = kron.KronLayout(key.shape, key.precond)
        s = self._stacks.get(key, params, states, lambda: Stack(
            params, states, layout, tensors=("exp_avg",) + rule.tensors(states[0]),
            lists=("GG", "Q") + rule.lists(states[0])))
        G, b1, b2, b3, b4 = self._workspace.buffers(s.M, 5)
        for i, (p, g) in enumerate(members):
            G[i].copy_(self._to_layout(g, p, cfg, layout))
        f = cfg.precondition_frequency

        if cfg.factor_update == "after" and s.Q is None:  # first call: factors and basis, no weight update
            kron.update_factors_(s.GG, G, cfg.factor_beta, batched=True)
            self._refresh(s, states, cfg, rule, 0, b1, b2)
            return
        t = states[0]["step"] + 1
        for st in states:
            st["step"] = t
        if cfg.factor_update == "before":
            kron.update_factors_(s.GG, G, cfg.factor_beta, batched=True)
            start = cfg.start_preconditioning_step
            if cfg.refresh_policy == "fixed":
                if layout.n_precond and t >= start and (s.Q is None or (t - start) % f == 0):
                    self._refresh(s, states, cfg, rule, t, b1, b2)
            elif layout.n_precond and t >= start:
                if s.Q is None:
                    self._refresh(s, states, cfg, rule, t, b1, b2)
                else:
                    self._scheduled_refresh(s, states, cfg, rule, t, t - start, (b1, b2, b3, b4))

        Q = s.Q or ()
        rotate_g = rule.reads_rotated_gradient or cfg.momentum_space == "eigenbasis"
        g_rot = kron.project(G, Q, batched=True, out=b1, tmp=b2) if rotate_g else None
        if cfg.momentum_space == "eigenbasis":
            m_rot = s.M.lerp_(g_rot, 1 - cfg.betas[0])
        else:
            s.M.lerp_(G, 1 - cfg.betas[0])
            m_rot = kron.project(s.M, Q, batched=True, out=b3, tmp=b2)
        direction, scale = rule.direction(s, cfg, t, G=G, g_rot=g_rot, m_rot=m_rot, out=b2, work=b4)
        update = kron.project(direction, Q, back=True, batched=True, out=b1, tmp=b3)
        rule.finish(s, cfg, update)
        step_size = cfg.lr * scale
        ups = [self._from_layout(update[i], p, cfg) for i, p in enumerate(params)]
        self._apply_updates(params, ups, step_size, cfg.lr, cfg.weight_decay)

        if cfg.factor_update == "after":
            kron.update_factors_(s.GG, G, cfg.factor_beta, batched=True)
            if cfg.refresh_policy == "fixed":
                if layout.n_precond and t % f == 0:
                    self._refresh(s, states, cfg, rule, t, b1, b2)
            elif layout.n_precond:
                self._scheduled_refresh(s, states, cfg, rule, t, t, (b1, b2, b3, b4))

    def _refresh(self, s: Stack, states: List[dict], cfg: BasisConfig, rule, t: int, buf: Tensor, tmp: Tensor,
                 pq: Optional[List[Optional[Tensor]]] = None) -> None:
        """New bases (the first from eigh); the momentum carried over, the rule's state following the slots.

        The momentum leaves the old basis first (into ``buf``; ``tmp`` is scratch, both shaped like M), so the
        new bases can be written over the old ones (the per-parameter views stay valid) and the refresh
        allocates nothing of size n² (its scratch comes from a second workspace). ``pq``: P·Q per dimension,
        already computed by the adaptive policy's check (:meth:`_check_and_refresh`)."""
        if s.Q is None:
            Q, evals = kron.init_bases(s.GG, eigenvalues=True)
            s.replace("Q", Q, states)
            rule.on_new_basis(s, states, cfg, evals, t)
            return
        carry = cfg.momentum_space == "eigenbasis"
        m_orig = kron.project(s.M, s.Q, back=True, batched=True, out=buf, tmp=tmp) if carry else None
        _, perms, evals = kron.refresh_bases(s.GG, s.Q, rule.refresh_method(cfg), cfg.qr_method,
                                             follow=rule.follows_basis, out=s.Q,
                                             work=self._refresh_workspace.buffers, pq=pq)
        if carry:
            kron.project(m_orig, s.Q, batched=True, out=s.M, tmp=tmp)
        if rule.follows_basis:
            rule.follow(s, perms, work=buf)
        rule.on_new_basis(s, states, cfg, evals, t)
        self._refresh_stats.stack_refreshed(s.params, lambda: (
            [None if q is None else q.shape[-1] for q in s.Q], len(s.params) * sum(self._factor_flops(s, cfg, rule))))

    # -- refresh policies (refresh.py decides when; the refresh itself is the one above) ------------------
    def _scheduled_refresh(self, s: Stack, states: List[dict], cfg: BasisConfig, rule, t: int, phase: int,
                           bufs: Tuple[Tensor, ...]) -> None:
        """"staggered" and "adaptive" at step t (``phase`` steps after the first basis; see :mod:`.refresh`)."""
        f = cfg.precondition_frequency
        if cfg.refresh_policy == "staggered":
            due = [i for i, st in enumerate(states) if policies.staggered_due(phase, f, st["refresh_offset"])]
            if len(due) == len(states):
                self._refresh(s, states, cfg, rule, t, bufs[0], bufs[1])
            elif due:
                self._refresh_members(s, states, cfg, rule, t, [None if q is None else due for q in s.Q], None, bufs)
        elif policies.check_due(phase, f):
            self._check_and_refresh(s, states, cfg, rule, t, bufs)

    def _check_and_refresh(self, s: Stack, states: List[dict], cfg: BasisConfig, rule, t: int,
                           bufs: Tuple[Tensor, ...]) -> None:
        """"adaptive": the staleness of every factor of the stack (one transfer to the host), then a refresh of
        exactly the factors whose staleness is not below τ — the whole stack on the fixed path when all are."""
        dims = [d for d, q in enumerate(s.Q) if q is not None]
        held = self._check_workspace.aligned([s.GG[d] for d in dims])
        direct = policies.uses_direct(cfg.refresh_tolerance, s.GG[dims[0]].dtype)
        values = []
        for d, PQ in zip(dims, held):
            P, q = s.GG[d], s.Q[d]
            torch.matmul(P, q, out=PQ)
            work = self._refresh_workspace.buffers(P, 2)[1]
            values.append(policies.staleness(P, q, PQ, direct=direct, work=work))
        values = torch.stack(values).tolist()  # the check's one GPU→CPU transfer for this stack
        tau, n = cfg.refresh_tolerance, len(s.params)
        pq: List[Optional[Tensor]] = [None] * len(s.Q)
        select: List[Optional[List[int]]] = [None] * len(s.Q)
        for d, PQ, row in zip(dims, held, values):
            pq[d] = PQ
            select[d] = [i for i, v in enumerate(row) if policies.needs_refresh(v, tau)]
        chosen = sum(len(select[d]) for d in dims)
        if chosen == n * len(dims):
            self._refresh(s, states, cfg, rule, t, bufs[0], bufs[1], pq=pq)
        elif chosen:
            self._refresh_members(s, states, cfg, rule, t, select, pq, bufs)
        # statistics: a QR refresh (or a sort before eigh) reuses the check's P·Q
        flops = self._factor_flops(s, cfg, rule)
        reuse = rule.refresh_method(cfg) == "qr" or rule.follows_basis
        stats = self._refresh_stats
        stats.check_steps += 1
        for d, row in zip(dims, values):
            size = s.Q[d].shape[-1]
            check = cost.factor_check_flops(size, direct)
            chosen_d = set(select[d])
            for i, (p, v) in enumerate(zip(s.params, row)):
                again = i in chosen_d
                stats.checked(t, p, d, size, v, again, check - (2.0 * size**3 if again and reuse else 0.0), flops[d])

    def _refresh_members(self, s: Stack, states: List[dict], cfg: BasisConfig, rule, t: int,
                         select: List[Optional[List[int]]], pq: Optional[List[Optional[Tensor]]],
                         bufs: Tuple[Tensor, ...]) -> None:
        """The refresh of :meth:`_refresh` for some members of the stack only: ``select[d]`` lists the members
        (ascending) whose basis of dimension d is refreshed. Each run of consecutive members is refreshed as one
        batch, on views (nothing is gathered or allocated of size n²). A member refreshed along any dimension
        has its momentum carried through all its bases (an unchanged basis rotates it back and forth: the same
        up to round-off); the rule's per-coordinate state follows permutations that are the identity for
        members not refreshed along that dimension; eigenvalues reach the rule for the refreshed rows only."""
        buf, tmp = bufs[0], bufs[1]
        Q = s.Q
        union = sorted({i for rows in select if rows for i in rows})
        carry = cfg.momentum_space == "eigenbasis"

        def sliced(a: int, b: int) -> List[Optional[Tensor]]:
            return [None if q is None else q[a:b] for q in Q]

        if carry:
            for a, b in _runs(union):
                kron.project(s.M[a:b], sliced(a, b), back=True, batched=True, out=buf[a:b], tmp=tmp[a:b])
        method, follow = rule.refresh_method(cfg), rule.follows_basis
        perms: List[Optional[Tensor]] = [None] * len(Q)
        evals: List[Optional[Tensor]] = [None] * len(Q)
        members: List[Optional[List[int]]] = [None] * len(Q)
        flops = self._factor_flops(s, cfg, rule)
        for d, (P, q) in enumerate(zip(s.GG, Q)):
            rows = select[d]
            if P is None or not rows:
                continue
            lams, orders = [], []
            for a, b in _runs(rows):
                _, order, lam = kron.refresh_bases(
                    [P[a:b]], [q[a:b]], method, cfg.qr_method, follow=follow, out=[q[a:b]],
                    work=self._refresh_workspace.buffers, pq=None if pq is None else [pq[d][a:b]])
                lams.append(lam[0])
                orders.append((a, b, order[0]))
            if any(o is not None for _, _, o in orders):
                n = q.shape[-1]
                full = torch.arange(n, device=q.device).expand(len(s.params), n).clone()
                for a, b, o in orders:
                    full[a:b] = o
                perms[d] = full
            evals[d], members[d] = torch.cat(lams), rows
            for i in rows:
                self._refresh_stats.refreshed(s.params[i], d, q.shape[-1], flops[d])
        if carry:
            for a, b in _runs(union):
                kron.project(buf[a:b], sliced(a, b), batched=True, out=s.M[a:b], tmp=tmp[a:b])
        if follow and any(x is not None for x in perms):
            rule.follow(s, perms, work=buf)
        rule.on_new_basis(s, states, cfg, evals, t, members=members)

    def _factor_flops(self, s: Stack, cfg: BasisConfig, rule) -> List[float]:
        """Estimated FLOPs of refreshing each factor of one member of ``s`` (:func:`.cost.factor_refresh_flops`)."""
        key = (s.layout, rule.refresh_method(cfg), rule.follows_basis)
        out = self._flops.get(key)
        if out is None:
            numel = math.prod(s.layout.shape)
            out = [cost.factor_refresh_flops(n, numel, key[1], key[2]) if pr else 0.0
                   for n, pr in zip(s.layout.shape, s.layout.precond)]
            self._flops[key] = out
        return out

    def _offset_of(self, p: Tensor) -> int:
        """"staggered": the parameter's offset — explicit (``refresh_offsets``) or from the cost model, assigned
        over all parameters of the staggered groups that share f and the first-basis step (deterministic)."""
        if id(p) not in self._offsets:
            offsets: Dict[int, int] = {}
            pools: Dict[tuple, List[Tuple[Tensor, float]]] = {}
            for group in self.param_groups:
                cfg = self.Config.from_group(group)
                if cfg.refresh_policy != "staggered":
                    continue
                if cfg.refresh_offsets is not None:
                    offsets.update({id(q): o for q, o in zip(group["params"], cfg.refresh_offsets)})
                    continue
                rule = self.make_rule(cfg)
                method, follow = rule.refresh_method(cfg), rule.follows_basis
                t0 = cfg.start_preconditioning_step if cfg.factor_update == "before" else 0
                pool = pools.setdefault((cfg.precondition_frequency, t0), [])
                for q in group["params"]:
                    layout = self._layout(q, cfg)
                    numel = math.prod(layout.shape)
                    pool.append((q, sum(cost.factor_refresh_flops(n, numel, method, follow)
                                        for n, pr in zip(layout.shape, layout.precond) if pr)))
            for (f, _), pool in pools.items():
                for (q, _), o in zip(pool, policies.assign_offsets([c for _, c in pool], f)):
                    offsets[id(q)] = o
            self._offsets = offsets
        return self._offsets[id(p)]

    def state_dict(self) -> Dict[str, Any]:
        """torch's, plus the refresh statistics' counters under ``"refresh_stats"`` (:mod:`.refresh`)."""
        sd = super().state_dict()
        sd["refresh_stats"] = self._refresh_stats.state_dict(self.param_groups)
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._refresh_stats = policies.RefreshStats()
        if "refresh_stats" in state_dict:  # older checkpoints: the counters start at zero
            self._refresh_stats.load_state_dict(state_dict["refresh_stats"], self.param_groups)

    def refresh_stats(self) -> Dict[str, Any]:
        """What the refresh policies did since this optimizer was built (:class:`.refresh.RefreshStats`):

        ``refreshes``, ``checks``, ``skipped`` (factor checks that kept the basis), ``check_steps`` (stack
        checks), estimated ``refresh_flops`` / ``check_flops`` / ``skipped_flops`` (the refreshes not done);
        ``params``: per parameter (``index`` in param_groups order, ``group``, ``name`` from ``param_names``,
        ``shape``, ``policy``) its ``factors``, each with ``dim``, ``size``, ``refreshes``, ``checks`` and the
        last / max / mean staleness of its checks; ``log``: the most recent checks (at most
        :data:`.refresh.LOG_MAX`) as (step, param index, dim, staleness, refreshed), ``log_dropped`` the older
        ones. First bases (at the first call, or ``start_preconditioning_step``) are not counted as refreshes.
        The counters survive ``state_dict``/``load_state_dict`` (a resumed run counts on); the log restarts."""
        return self._refresh_stats.summary(self.param_groups)


def _runs(rows: List[int]) -> List[Tuple[int, int]]:
    """Ascending indices as half-open runs of consecutive ones: [0, 1, 2, 5] -> [(0, 3), (5, 6)]."""
    out: List[Tuple[int, int]] = []
    for i in rows:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out
