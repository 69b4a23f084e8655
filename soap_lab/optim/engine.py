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
class with a typed config (:mod:`.config`) that builds a :class:`.rules.Rule`; any rule can be passed in
(``EigenbasisOptimizer(params, rule=MyRule(), lr=...)``).

Order within a step: every stack in Shampoo's ordering updates its factors first; the refreshes then due run;
then every stack steps (and, in SOAP's ordering, updates its factors); the refreshes then due run. A refresh
touches only its own stack, so this is each stack's order of Algorithms 2-4. The refreshes (eigh, QR with
checks, the adaptive policy's decisions: host-side) run in :meth:`EigenbasisOptimizer._refresh_all`, outside any
loop and outside ``torch.compile``'s graphs (:func:`torch.compiler.disable`): a compiled ``step()`` is one graph
at ordinary steps (docs/compile.md).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch

from . import config as options, kron
from . import refresh as policies
from .base import LabOptimizer
from .partial import PolicyRefreshes
from .config import DATA_FORMATS, FACTOR_UPDATES, MOMENTUM_SPACES, REFRESH_METHODS, BasisConfig  # noqa: F401
from .kron import permute_state_
from .rules import ENGINE_KEYS, Rule, Step, per_layer
from .stack import Stack, StackCache, Workspace

Tensor = torch.Tensor


class StackKey(NamedTuple):
    """Parameters with equal keys and step counts share a stack (the key is reused across steps)."""

    group: int
    shape: Tuple[int, ...]
    precond: Tuple[bool, ...]
    state_dtype: torch.dtype
    param_dtype: torch.dtype
    device: torch.device
    nhwc: bool
    has_basis: bool
    alone: Optional[int]  # id(p) with bucket=False


class Job(NamedTuple):
    """One stack's step: its config and rule, gradients, learning rate, step t (0: the first call, SOAP's
    ordering: factors and basis only)."""

    s: Stack
    states: List[dict]
    cfg: BasisConfig
    rule: Rule
    grads: List[Tensor]
    lr: float
    t: int


def _constructor(Config: type):
    """``__init__`` of an optimizer whose options are ``Config``'s fields (:func:`.config.signature`)."""
    sig = options.signature(Config)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        kw = dict(bound.arguments)
        del kw["self"]
        params, on_nonfinite = kw.pop("params"), kw.pop("on_nonfinite")
        EigenbasisOptimizer.__init__(self, params, Config(**kw), on_nonfinite=on_nonfinite)

    __init__.__signature__ = sig
    return __init__


class EigenbasisOptimizer(PolicyRefreshes, LabOptimizer):
    """The stacked step above, with a config (``Config``: :class:`BasisConfig` or a subclass) and a rule.

    ``EigenbasisOptimizer(params, config=None, *, rule=None, on_nonfinite="raise", **options)``: ``config`` or the
    options of ``Config`` as keywords; ``rule`` (any :class:`.rules.Rule`) is used for every group, else each group's
    config builds its own (``config.rule()``: SOAP's Adam for :class:`BasisConfig`). A subclass that sets
    ``Config`` gets its constructor from it: the config's fields as keywords (:mod:`.config`).

    ``torch.compile(opt.step)`` (with ``on_nonfinite="ignore"``): an ordinary step is one graph, the refreshes run
    outside it, and compiling stops after the first refresh step (docs/compile.md, tests/test_compile.py)."""

    Config = BasisConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" in cls.__dict__ and "__init__" not in cls.__dict__:
            cls.__init__ = _constructor(cls.Config)
            cls.__doc__ = (cls.__doc__ or "").rstrip() + options.args_doc(cls.Config)

    def __init__(self, params: Iterable[Any], config: Optional[BasisConfig] = None, *, rule: Optional[Rule] = None,
                 on_nonfinite: str = "raise", **kwargs: Any):
        if config is None:
            config = self.Config(**kwargs)
        elif kwargs:
            raise TypeError(f"pass options either as config or as keywords, not both (got {sorted(kwargs)})")
        super().__init__(params, dataclasses.asdict(config), on_nonfinite=on_nonfinite)
        self._config_type, self._rule = type(config), rule
        self._option_names = [f.name for f in dataclasses.fields(config) if f.name != "lr"]
        self._configs: Dict[int, tuple] = {}  # per group: (its options but lr, config, rule); rebuilt on a change
        self._stacks = StackCache()  # a cache (see stack.py); never part of state_dict
        self._workspace = Workspace()  # the step's work buffers (5 × the largest stack's M)
        self._refresh_workspace = Workspace()  # the refresh's scratch (2 × the largest stack's factor stack)
        self._check_workspace = Workspace()  # adaptive: P·Q of every factor of the stack being checked
        self._refresh_stats = policies.RefreshStats()  # diagnostics (refresh_stats()); counters in state_dict
        self._offsets: Dict[int, int] = {}  # staggered: the cost model's offset per id(p) (a cache)
        self._flops: Dict[tuple, List[float]] = {}  # per layout: estimated refresh FLOPs of each factor
        for gi, group in enumerate(self.param_groups):
            self._config(gi, group)

    def _config(self, gi: int, group: dict) -> Tuple[BasisConfig, Rule]:
        """Group ``gi``'s config (validated) and rule, built again only when an option other than lr changed (the
        step reads lr off the group: a schedule does not rebuild them)."""
        values = [group[k] for k in self._option_names]
        cached = self._configs.get(gi)
        if cached is None or cached[0] != values:
            cfg = self._config_type.from_group(group)
            policies.check_offsets_length(cfg, len(group["params"]))
            cached = self._configs[gi] = (values, cfg, self._rule or cfg.rule())
        return cached[1], cached[2]

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
    @staticmethod
    def _init_state(state: dict, p: Tensor, layout: kron.KronLayout, rule: Rule) -> None:
        """Zero state under the reference's names; fills in what a checkpoint from an older version lacks."""
        dtype = kron.state_dtype_for(p.dtype)
        if "step" not in state:
            entries = rule.init(layout, dtype=dtype, device=p.device)
            if ENGINE_KEYS & set(entries):
                raise ValueError(f"a rule's state may not be named {sorted(ENGINE_KEYS & set(entries))}")
            state.update(step=0, exp_avg=torch.zeros(layout.shape, dtype=dtype, device=p.device), **entries)
        if "GG" not in state:
            state["GG"] = kron.init_factors(layout, dtype=dtype, device=p.device)
            state.setdefault("Q", None)

    @staticmethod
    def _build(params: List[Tensor], states: List[dict], layout: kron.KronLayout, rule: Rule) -> Stack:
        """A stack of the rule's entries (tensors or per-dimension lists) and the engine's."""
        for st in states:  # a checkpoint may hold None where this version initializes a rule's entry (Shampoo's D)
            if any(v is None for k, v in st.items() if k not in ENGINE_KEYS):
                new = rule.init(layout, dtype=st["exp_avg"].dtype, device=st["exp_avg"].device)
                st.update({k: v for k, v in new.items() if st.get(k) is None})
        names = [k for k in states[0] if k not in ENGINE_KEYS]
        tensors = [k for k in names if isinstance(states[0][k], Tensor)]
        return Stack(params, states, layout, tensors=["exp_avg"] + tensors,
                     lists=["GG", "Q"] + [k for k in names if k not in tensors])

    @staticmethod
    def _rule_names(s: Stack) -> List[str]:
        return [k for k in s.tensor_names + s.list_names if k not in ENGINE_KEYS]

    # -- the step ---------------------------------------------------------------------------------------
    def _update_all(self, items: List[Tuple[dict, Tensor, Tensor]]) -> None:
        index = {id(g): i for i, g in enumerate(self.param_groups)}
        stacks: Dict[StackKey, List[Tuple[Tensor, Tensor]]] = {}
        configs: Dict[int, Tuple[BasisConfig, Rule]] = {}
        for group, p, g in items:
            gi = index[id(group)]
            if gi not in configs:
                configs[gi] = self._config(gi, group)
            cfg, rule = configs[gi]
            layout = self._layout(p, cfg)
            state = self.state[p]
            self._init_state(state, p, layout, rule)
            if cfg.refresh_policy == "staggered" and "refresh_offset" not in state:
                state["refresh_offset"] = self._offset_of(p)
            key = StackKey(gi, layout.shape, layout.precond, state["exp_avg"].dtype, p.dtype, p.device,
                           self._nhwc(p, cfg), state["Q"] is not None, None if cfg.bucket else id(p))
            stacks.setdefault(key, []).append((p, g))
        jobs = []
        for key, members in stacks.items():
            group = self.param_groups[key.group]
            cfg, rule = configs[key.group]
            layout = kron.KronLayout(key.shape, key.precond)
            for s, part in self._stacks_of(key, members, layout, rule):
                states = [self.state[p] for p, _ in part]
                t = states[0]["step"] + (0 if cfg.factor_update == "after" and s.Q is None else 1)
                for st in states:  # one step count per stack, read off its first member (torch.compile: one symbol)
                    st["step"] = t
                jobs.append(Job(s, states, cfg, rule, [g for _, g in part], group["lr"], t))
        due = []  # Shampoo's ordering: the factors take G, then the refreshes due, then the step
        for job in jobs:
            if job.cfg.factor_update == "before" and job.s.layout.n_precond:
                kron.update_factors_(job.s.GG, self._gradients(job)[0], job.cfg.factor_beta, batched=True)
                start = job.cfg.start_preconditioning_step
                if job.t >= start and (job.s.Q is None or self._due(job.cfg, job.t - start)):
                    due.append((job, job.t - start))
        if due:
            self._refresh_all(due)
        due = []
        for job in jobs:
            G = self._gradients(job)
            if job.t:
                self._step(job, G)
            if job.cfg.factor_update == "after":
                kron.update_factors_(job.s.GG, G[0], job.cfg.factor_beta, batched=True)
                if job.t == 0 or (job.s.layout.n_precond and self._due(job.cfg, job.t)):
                    due.append((job, job.t))
        if due:
            self._refresh_all(due)

    def _stacks_of(self, key: StackKey, members: List[Tuple[Tensor, Tensor]], layout: kron.KronLayout,
                   rule: Rule) -> List[Tuple[Stack, List[Tuple[Tensor, Tensor]]]]:
        """``members`` as stacks: one, if it is a stack already (its members were stepped together); else built, one
        per step count (a parameter that had no gradient at some step is stepped apart from the others)."""
        found = self._stacks.find(key, [p for p, _ in members], [self.state[p] for p, _ in members])
        if found is not None:
            return [(found, members)]
        parts: List[List[Tuple[Tensor, Tensor]]] = []
        for p, g in members:
            for part in parts:
                if self.state[part[0][0]]["step"] == self.state[p]["step"]:
                    part.append((p, g))
                    break
            else:
                parts.append([(p, g)])
        out = []
        for part in parts:
            params, states = [p for p, _ in part], [self.state[p] for p, _ in part]
            out.append((self._stacks.get(key, params, states, lambda: self._build(params, states, layout, rule)), part))
        return out

    @staticmethod
    def _due(cfg: BasisConfig, phase: int) -> bool:
        """A refresh (fixed), a check (adaptive) or possibly some members' refreshes (staggered) at this phase."""
        return phase >= 1 and (cfg.refresh_policy == "staggered" or phase % cfg.precondition_frequency == 0)

    def _gradients(self, job: Job) -> List[Tensor]:
        """The step's work buffers (5 × the stack's M), the first holding the gradients in the layout's shape."""
        bufs = self._workspace.buffers(job.s.M, 5)
        for i, (p, g) in enumerate(zip(job.s.params, job.grads)):
            bufs[0][i].copy_(self._to_layout(g, p, job.cfg, job.s.layout))
        return bufs

    def _step(self, job: Job, bufs: List[Tensor]) -> None:
        """Rotate in, the rule, rotate back, step the weights."""
        s, cfg = job.s, job.cfg
        G, b1, b2, b3, b4 = bufs
        Q = s.Q or ()
        if cfg.momentum_space == "eigenbasis":
            g = kron.project(G, Q, batched=True, out=b1, tmp=b2)
            m, free = s.M.lerp_(g, 1 - cfg.betas[0]), [b2, b4, b3]
        else:
            s.M.lerp_(G, 1 - cfg.betas[0])
            g, m, free = None, kron.project(s.M, Q, batched=True, out=b3, tmp=b2), [b1, b2, b4]
        out = job.rule.direction(Step(s.stacked, job.t, cfg, G, m, g=g, momentum=s.M if g is None else None,
                                      bases=s.Q, free=free))
        direction, scale = out if isinstance(out, tuple) else (out, 1.0)
        if direction is not b2 and direction is not b4:  # a tensor of the rule's own: b1 and b3 stay free
            direction = b2.copy_(direction)
        update = kron.project(direction, Q, back=True, batched=True, out=b1, tmp=b3)
        if cfg.normalize_grads:
            update.div_(update.square().mean(dim=per_layer(update), keepdim=True).sqrt().add_(1e-30))
        ups = [self._from_layout(update[i], p, cfg) for i, p in enumerate(s.params)]
        self._apply_updates(s.params, ups, job.lr * scale, job.lr, cfg.weight_decay)

    # -- refreshes (refresh.py decides when; on the host, outside compiled graphs) ----------------------
    @torch.compiler.disable
    def _refresh_all(self, due: List[Tuple[Job, int]]) -> None:
        """The refreshes due at this step: first bases, fixed refreshes, the staggered and adaptive policies'."""
        for job, phase in due:
            s, states, cfg, rule, t = job.s, job.states, job.cfg, job.rule, job.t
            bufs = self._workspace.buffers(s.M, 5)[1:]
            if s.Q is None or cfg.refresh_policy == "fixed":
                self._refresh(s, states, cfg, rule, t, bufs[0], bufs[1])
            elif cfg.refresh_policy == "staggered":
                f = cfg.precondition_frequency
                rows = [i for i, st in enumerate(states) if policies.staggered_due(phase, f, st["refresh_offset"])]
                if len(rows) == len(states):
                    self._refresh(s, states, cfg, rule, t, bufs[0], bufs[1])
                elif rows:
                    self._refresh_members(s, states, cfg, rule, t, [None if q is None else rows for q in s.Q], None,
                                          bufs)
            else:
                self._check_and_refresh(s, states, cfg, rule, t, bufs)

    def _refresh(self, s: Stack, states: List[dict], cfg: BasisConfig, rule: Rule, t: int, buf: Tensor, tmp: Tensor,
                 pq: Optional[List[Optional[Tensor]]] = None) -> None:
        """New bases (the first from eigh); the momentum carried over, the rule's state following the slots.

        The momentum leaves the old basis first (into ``buf``; ``tmp`` is scratch, both shaped like M), so the
        new bases can be written over the old ones (the per-parameter views stay valid) and the refresh
        allocates nothing of size n² (its scratch comes from a second workspace). ``pq``: P·Q per dimension,
        already computed by the adaptive policy's check (:meth:`_check_and_refresh`)."""
        if s.Q is None:
            Q, evals = kron.init_bases(s.GG)
            s.replace("Q", Q, states)
            rule.new_basis(s.stacked, cfg, evals, t)
            return
        carry = cfg.momentum_space == "eigenbasis"
        m_orig = kron.project(s.M, s.Q, back=True, batched=True, out=buf, tmp=tmp) if carry else None
        _, perms, evals = kron.refresh_bases(s.GG, s.Q, cfg.refresh, cfg.qr_method, follow=rule.follows_basis,
                                             out=s.Q, work=self._refresh_workspace.buffers, pq=pq)
        if carry:
            kron.project(m_orig, s.Q, batched=True, out=s.M, tmp=tmp)
        if rule.follows_basis:
            permute_state_(s.stacked, self._rule_names(s), perms, work=buf)
        rule.new_basis(s.stacked, cfg, evals, t)
        self._refresh_stats.stack_refreshed(s.params, lambda: (
            [None if q is None else q.shape[-1] for q in s.Q], len(s.params) * sum(self._factor_flops(s, cfg, rule))))
