"""What the refresh policies (:mod:`.refresh`) add to the eigenbasis optimizer: the adaptive policy's check,
refreshes of some members of a stack, the staggered policy's offsets, and the statistics (``refresh_stats()``,
their counters in ``state_dict``). A mixin of :class:`.engine.EigenbasisOptimizer`, whose ``_refresh`` (a whole
stack) and workspaces these methods use."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch

from . import cost, kron
from . import refresh as policies
from .kron import permute_state_
from .stack import Stack

if TYPE_CHECKING:
    from .config import BasisConfig

Tensor = torch.Tensor


class PolicyRefreshes:
    """Methods of :class:`.engine.EigenbasisOptimizer` (see the module docstring)."""

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
        reuse = cfg.refresh == "qr" or rule.follows_basis
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
        method, follow = cfg.refresh, rule.follows_basis
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
            permute_state_(s.stacked, self._rule_names(s), perms, work=buf)
        rule.new_basis(s.stacked, cfg, evals, t, members=members)

    def _factor_flops(self, s: Stack, cfg: BasisConfig, rule) -> List[float]:
        """Estimated FLOPs of refreshing each factor of one member of ``s`` (:func:`.cost.factor_refresh_flops`)."""
        key = (s.layout, cfg.refresh, rule.follows_basis)
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
            for gi, group in enumerate(self.param_groups):
                cfg, rule = self._config(gi, group)
                if cfg.refresh_policy != "staggered":
                    continue
                if cfg.refresh_offsets is not None:
                    offsets.update({id(q): o for q, o in zip(group["params"], cfg.refresh_offsets)})
                    continue
                method, follow = cfg.refresh, rule.follows_basis
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
