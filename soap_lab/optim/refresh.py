"""WHEN to refresh the eigenbasis: the paper's fixed schedule, a staggered one, and an adaptive staleness test.

The refresh (one power step + QR, or an eigh; :func:`.kron.refresh_bases`) is SOAP's main overhead (Vyas et al.
2024, Fig. 7 left: the overhead falls with the refresh interval f toward the per-step floor). What a refresh *is*
stays the optimizer's own (SOAP: Algorithm 4's sort, the permutation of the rule's state and one QR; eigh where
configured; Shampoo: eigh and new inverse roots; :meth:`.engine.EigenbasisOptimizer._refresh`). This module
decides *when*, per Kronecker factor (each side L, R, … of each parameter), through the option
``refresh_policy`` of every eigenbasis optimizer's config (:class:`.engine.BasisConfig`):

``"fixed"`` (default) — the paper's: every f steps, every factor. Exactly today's behaviour, bit for bit.

``"staggered"`` — the same count and spacing per parameter as fixed, but each parameter at its own offset
    o ∈ [0, f), so that no step pays every refresh at once (the amortized cost is unchanged; the step-time
    spikes are flattened). Offsets come from ``refresh_offsets`` (one per parameter of the group, in group
    order) or, by default, from the cost model (:func:`assign_offsets`: parameters by estimated refresh FLOPs,
    :func:`.cost.factor_refresh_flops`, largest first, each to the offset with the least load so far; ties to
    the lowest offset). The unit is the parameter, not the stack of same-layout parameters (:mod:`.stack`): a
    GPT's largest layout holds ≈ 40% of all refresh work (gpt10m and gpt124m shapes), ≈ 4× the mean load of a
    step at f = 10, where per-parameter offsets reach 1.33× and 1.10× (cost model). The ordinary step keeps
    its stacks; a refresh step refreshes just the due members of a stack (batched over runs of consecutive
    members). Offsets are deterministic given the parameters and the config, and kept in each parameter's state
    (``state["refresh_offset"]``), so ``state_dict`` carries them and a resumed run keeps them. Under ZeRO-1
    (:mod:`.zero`) each rank assigns the cost-model offsets over its own share (explicit ``refresh_offsets``, one
    per parameter of the whole group, do not fit a rank's share and are refused there).

``"adaptive"`` — Purifying Shampoo's criterion (Eschenhagen et al. 2025, arXiv 2506.03595, §5: the
    termination test of a warm-started QR algorithm). Every f steps (f is then the *check* interval) each factor
    P with basis Q is checked: B = QᵀPQ, staleness = ‖B − diag B‖_F / ‖B‖_F ∈ [0, 1] (relative off-diagonal
    mass; 0 for P = 0), and the factor is refreshed iff ``not staleness < τ`` (``refresh_tolerance``). So τ = 0
    refreshes every factor at every check (it *is* fixed, bit for bit, with the staleness logged), τ > 1 never
    refreshes after the first basis; Purifying Shampoo skips where staleness ≤ τ — the same but at equality.
    Stacks: per-factor exactness — each factor of each member is decided alone; a stack refreshes only the
    members/sides that need it (the whole stack, on the fixed code path, when all of them do). Shampoo keeps
    the eigenvalues of a kept basis from its last refresh (plain adaptive; re-estimating them from diag B each
    step would be a different optimizer and is not implemented).

Schedules. t counts steps (the first weight update is step 1); t0 is the step of the first basis: 0 with SOAP's
ordering (``factor_update="after"``: the first call builds it), ``start_preconditioning_step`` with Shampoo's
(``"before"``); phase = t − t0. A first basis is always built at t0 (an eigh, every policy). Then:

    fixed       refresh every factor at phase ≥ 1 with phase % f == 0               (t0+f, t0+2f, …)
    adaptive    check every factor at the same steps; refresh where not staleness < τ
    staggered   refresh a parameter with offset o at phase ≥ 1 with (phase − o) % f == 0:
                t0+o, t0+o+f, … for o ≥ 1 and t0+f, t0+2f, … for o = 0 (= fixed). Every window of f steps
                t0+kf+1 … t0+(k+1)f holds exactly one refresh of each parameter, as with fixed.

Staleness, computed from what the check needs anyway: P·Q (which a QR refresh, or a sort before eigh, then
reuses) and d = diag(QᵀPQ) = :func:`.kron.rotated_diagonal` (the eigenvalue estimates Algorithm 4 sorts by).
Since ‖B‖_F = ‖P‖_F for orthogonal Q, ‖B − diag B‖²_F = ‖P‖²_F − ‖d‖² (:func:`staleness`, ``direct=False``):
O(n²) beyond P·Q. It cancels where the staleness is small: the squares are summed in float64 (row norms in the
state's dtype, then float64; a float32 ‖P‖_F read off one float32 reduction was 1e-4 off), but the inputs carry
float32 round-off (Q orthogonal to ~eps·√n, P·Q rounded), measured on rotated factors with n = 64…1536: 0.1%
relative error at staleness 1e-2, 5% at 1e-3, nothing resolved below 3e-4 (reads 0). So below
:data:`DIRECT_BELOW` (1e-2 for float32 state, 1e-6 for float64) the policy computes B = Qᵀ(P·Q) itself and
reads the off-diagonal mass directly off B with its diagonal zeroed (``direct=True``: 2n³ more per check; no
cancellation; measured within 1e-3 relative down to 1e-4 in float32). ``tests/test_refresh.py`` checks both
against the closed form of a diagonal factor P = diag(a_1, b_1, a_2, b_2, …) in a basis that rotates each plane
(a_i, b_i) by θ: each 2×2 block of QᵀPQ is [[a c² + b s², (b − a) s c], [(b − a) s c, a s² + b c²]]
(c = cos θ, s = sin θ), so staleness = |sin 2θ| / √2 · √(Σ (a − b)²) / √(Σ (a² + b²)).

Cost. A check costs P·Q (2n³, reused by a QR refresh that follows) + O(n²) (+2n³ direct); a skipped SOAP refresh
saves the orthonormalization, the momentum's rotations and the state's permutation
(:func:`.cost.factor_refresh_flops`). Checks are batched: one GPU→CPU transfer (``tolist``) per stack per check.
The adaptive policy holds P·Q of every factor of the stack being checked (+ the largest stack's factor size in
scratch memory; a work buffer, not state).

Statistics (:class:`RefreshStats`, ``optimizer.refresh_stats()``): refresh and check counts per factor, per
parameter (index in ``param_groups`` order, name from ``param_names`` where given), the staleness of every
check in a bounded log (the most recent :data:`LOG_MAX` entries; older ones are counted, and summarized per
factor as last/max/mean), estimated FLOPs of the refreshes done, of the checks, and of the refreshes skipped.
The counters (totals; per factor: refreshes, checks, last/max/sum of staleness) travel in the optimizer's
``state_dict`` (key ``"refresh_stats"``, parameters by index) so a resumed run counts on from the checkpoint; the
log does not (its entries before the checkpoint are counted in ``log_dropped``). A checkpoint without the key (older
versions) starts the counters at zero; so does a ZeRO-1 checkpoint (torch's consolidation keeps ``state`` and
``param_groups`` only).
"""
from __future__ import annotations

import copy
import numbers
from collections import deque
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from . import kron

Tensor = torch.Tensor

REFRESH_POLICIES = ("fixed", "adaptive", "staggered")

#: Below this tolerance (per state dtype) the staleness is computed directly from B = Qᵀ(P·Q): the subtraction
#: ‖P‖² − ‖diag B‖² cannot resolve it (see the module docstring for the measured floor).
DIRECT_BELOW = {torch.float32: 1e-2, torch.float64: 1e-6}

#: Entries kept in the staleness log of :class:`RefreshStats` (the most recent; older ones are counted).
LOG_MAX = 10_000


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def validate(cfg) -> None:
    """Check a config's refresh options (called by :class:`.engine.BasisConfig`); one-line ``ValueError``s."""
    if cfg.refresh_policy not in REFRESH_POLICIES:
        _fail("refresh_policy", cfg.refresh_policy, f"one of {REFRESH_POLICIES}")
    tau = cfg.refresh_tolerance
    if not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and tau >= 0):  # NaN fails >= 0
        _fail("refresh_tolerance", tau, "a number ≥ 0 (not NaN)")
    if tau != 0 and cfg.refresh_policy != "adaptive":
        _fail("refresh_tolerance", tau, f"0 unless refresh_policy='adaptive' (it is {cfg.refresh_policy!r})")
    offsets, f = cfg.refresh_offsets, cfg.precondition_frequency
    if offsets is None:
        return
    if cfg.refresh_policy != "staggered":
        _fail("refresh_offsets", offsets, f"None unless refresh_policy='staggered' (it is {cfg.refresh_policy!r})")
    if not isinstance(offsets, tuple) or not all(isinstance(o, int) and not isinstance(o, bool) and 0 <= o < f
                                                 for o in offsets):
        _fail("refresh_offsets", offsets, f"None or a sequence of integers in [0, precondition_frequency={f})")


def offsets_option(offsets: Optional[Iterable[Any]]) -> Optional[Tuple[Any, ...]]:
    """The ``refresh_offsets`` keyword as the config stores it: a tuple, integers (numpy's too) as ``int``; anything
    else is left for :func:`validate` to reject (an integral float is not an offset)."""
    if offsets is None or isinstance(offsets, (str, bytes)) or not isinstance(offsets, Iterable):
        return offsets
    return tuple(int(o) if isinstance(o, numbers.Integral) and not isinstance(o, bool) else o for o in offsets)


def check_offsets_length(cfg, n_params: int) -> None:
    """Explicit offsets must name one offset per parameter of their group."""
    if cfg.refresh_offsets is not None and len(cfg.refresh_offsets) != n_params:
        _fail("refresh_offsets", cfg.refresh_offsets, f"one offset per parameter of the group ({n_params})")


# ----------------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------------
def staggered_due(phase: int, f: int, offset: int) -> bool:
    """``staggered``: a parameter with ``offset`` refreshes at this phase (t − t0 ≥ 1; see the module docstring)."""
    return phase >= 1 and (phase - offset) % f == 0


def check_due(phase: int, f: int) -> bool:
    """``fixed``/``adaptive``: this phase refreshes (or checks) every factor."""
    return phase >= 1 and phase % f == 0


def needs_refresh(staleness: float, tolerance: float) -> bool:
    """``adaptive``: refresh unless the staleness is below τ (NaN refreshes; τ = 0 always refreshes)."""
    return not staleness < tolerance


def assign_offsets(costs: Sequence[float], f: int) -> List[int]:
    """Offsets in [0, f) for units with estimated refresh ``costs``: largest first (ties: lower index first), each
    to the offset with the least load so far (ties: the lowest offset). Units that cost nothing get offset 0.
    Deterministic; the heaviest offset's load is at most the mean load + the largest cost."""
    load = [0.0] * f
    out = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        if costs[i] <= 0:
            continue
        o = min(range(f), key=lambda j: (load[j], j))
        out[i] = o
        load[o] += costs[i]
    return out


# ----------------------------------------------------------------------------------------------------------
# Staleness
# ----------------------------------------------------------------------------------------------------------
def uses_direct(tolerance: float, dtype: torch.dtype) -> bool:
    """Whether the check computes the off-diagonal mass directly (τ below :data:`DIRECT_BELOW`; τ = 0 decides
    nothing and uses the subtraction, for the log)."""
    return 0 < tolerance < DIRECT_BELOW.get(dtype, DIRECT_BELOW[torch.float32])


def staleness(P: Tensor, Q: Tensor, PQ: Tensor, *, direct: bool = False, work: Optional[Tensor] = None) -> Tensor:
    """Relative off-diagonal mass ‖B − diag B‖_F / ‖B‖_F of B = QᵀPQ, per matrix of a stack, in float64.

    ``PQ`` is P·Q (computed by the caller, reused by the refresh); ``work`` (shaped like P, optional) is scratch.
    ``direct=False``: ‖P‖²_F − ‖diag(QᵀPQ)‖² (O(n²) more; resolves ≳ 1e-3 with float32 state);
    ``direct=True``: B = Qᵀ(P·Q) formed (2n³ more), its diagonal zeroed, the rest's norm read off (no
    cancellation). Row norms are taken in P's dtype and their squares summed in float64. P = 0 gives 0."""
    if direct:
        Bm = torch.matmul(Q.mT, PQ, out=work)
        diag = Bm.diagonal(dim1=-2, dim2=-1)
        d2 = diag.double().square().sum(-1)
        diag.zero_()
        off2 = torch.linalg.vector_norm(Bm, dim=-1).double().square().sum(-1)
        total = off2 + d2
    else:
        d2 = kron.rotated_diagonal(Q, PQ, work=work).double().square().sum(-1)
        total = torch.linalg.vector_norm(P, dim=-1).double().square().sum(-1)
        off2 = total - d2
    return (off2 / total.clamp_min(torch.finfo(torch.float64).tiny)).clamp_(0.0, 1.0).sqrt_()


# ----------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------
class _Factor:
    __slots__ = ("size", "refreshes", "checks", "last", "max", "sum")

    def __init__(self, size: int):
        self.size, self.refreshes, self.checks = size, 0, 0
        self.last: Optional[float] = None
        self.max = 0.0
        self.sum = 0.0


class RefreshStats:
    """Counts and a bounded staleness log of one optimizer's refreshes and checks (see the module docstring).

    Keyed by parameter identity; :meth:`summary` turns that into indices in ``param_groups`` order. A whole-stack
    refresh (the fixed policy's every refresh) costs one counter increment (:meth:`stack_refreshed`), not one per
    factor: the fixed path stays as cheap as before."""

    def __init__(self, log_max: int = LOG_MAX):
        self.factors: Dict[int, Dict[int, _Factor]] = {}
        self.stacks: Dict[int, list] = {}  # id(stack's params list) -> [params, sizes per dim, flops, count]
        self.log: deque = deque(maxlen=log_max)
        self.logged = 0
        self.check_steps = 0
        self.refresh_flops = 0.0
        self.check_flops = 0.0
        self.skipped_flops = 0.0

    def _factor(self, p: Tensor, d: int, size: int) -> _Factor:
        per = self.factors.setdefault(id(p), {})
        fac = per.get(d)
        if fac is None:
            fac = per[d] = _Factor(size)
        return fac

    def refreshed(self, p: Tensor, d: int, size: int, flops: float) -> None:
        """One factor refreshed (a partial refresh of a stack)."""
        self._factor(p, d, size).refreshes += 1
        self.refresh_flops += flops

    def stack_refreshed(self, params: List[Tensor], describe: Callable[[], Tuple[List[Optional[int]], float]]) -> None:
        """Every factor of every member of a stack refreshed. ``params`` is the stack's own list (held here, so its
        id stays unique); ``describe()`` -> (factor sizes per dimension, None where not preconditioned; estimated
        FLOPs of the whole stack's refresh), called once per stack."""
        rec = self.stacks.get(id(params))
        if rec is None:
            rec = self.stacks[id(params)] = [params, *describe(), 0]
        rec[3] += 1
        self.refresh_flops += rec[2]

    def checked(self, t: int, p: Tensor, d: int, size: int, value: float, refreshed: bool, check_flops: float,
                skipped_flops: float) -> None:
        fac = self._factor(p, d, size)
        fac.checks += 1
        fac.last = value
        if value == value:  # not NaN
            fac.max = max(fac.max, value)
            fac.sum += value
        self.check_flops += check_flops
        if not refreshed:
            self.skipped_flops += skipped_flops
        self.log.append((t, id(p), d, value, refreshed))
        self.logged += 1

    def _per_param(self, param_groups: Sequence[dict]):
        """(index of each id(p) -> (i, group, position, p); id(p) -> {dim: _Factor} with whole-stack refreshes added)."""
        index: Dict[int, Tuple[int, int, int, Tensor]] = {}
        i = 0
        for gi, group in enumerate(param_groups):
            for pi, p in enumerate(group["params"]):
                index[id(p)] = (i, gi, pi, p)
                i += 1
        per: Dict[int, Dict[int, _Factor]] = {pid: {d: copy.copy(fac) for d, fac in facs.items()}
                                              for pid, facs in self.factors.items() if pid in index}
        for members, sizes, _, n in self.stacks.values():
            for p in members:
                for d, size in enumerate(sizes):
                    if size is not None and id(p) in index:
                        per.setdefault(id(p), {}).setdefault(d, _Factor(size)).refreshes += n
        return index, per

    _TOTALS = ("check_steps", "refresh_flops", "check_flops", "skipped_flops", "logged")

    def state_dict(self, param_groups: Sequence[dict]) -> Dict[str, Any]:
        """The counters, parameters by index in ``param_groups`` order (as the optimizer's ``state``); not the log."""
        index, per = self._per_param(param_groups)
        return {"factors": {index[pid][0]: {d: [f.size, f.refreshes, f.checks, f.last, f.max, f.sum]
                                            for d, f in facs.items()} for pid, facs in per.items()},
                **{k: getattr(self, k) for k in self._TOTALS}}

    def load_state_dict(self, sd: Dict[str, Any], param_groups: Sequence[dict]) -> None:
        """Continue from :meth:`state_dict`'s counters (this instance's are replaced; the log starts empty)."""
        params = [p for group in param_groups for p in group["params"]]
        self.__init__(self.log.maxlen)
        for i, facs in sd["factors"].items():
            for d, (size, refreshes, checks, last, mx, total) in facs.items():
                fac = self._factor(params[int(i)], int(d), size)
                fac.refreshes, fac.checks, fac.last, fac.max, fac.sum = refreshes, checks, last, mx, total
        for k in self._TOTALS:
            setattr(self, k, type(getattr(self, k))(sd[k]))

    def summary(self, param_groups: Sequence[dict]) -> Dict[str, Any]:
        index, merged = self._per_param(param_groups)
        params = []
        for pid, per in merged.items():
            i, gi, pi, p = index[pid]
            names = param_groups[gi].get("param_names")
            params.append({
                "index": i, "group": gi, "name": names[pi] if names else None, "shape": tuple(p.shape),
                "policy": param_groups[gi].get("refresh_policy", "fixed"),
                "factors": [{"dim": d, "size": fac.size, "refreshes": fac.refreshes, "checks": fac.checks,
                             "last_staleness": fac.last, "max_staleness": fac.max if fac.checks else None,
                             "mean_staleness": fac.sum / fac.checks if fac.checks else None}
                            for d, fac in sorted(per.items())],
            })
        params.sort(key=lambda r: r["index"])
        facs = [f for r in params for f in r["factors"]]
        return {
            "refreshes": sum(f["refreshes"] for f in facs),
            "checks": sum(f["checks"] for f in facs),
            "skipped": sum(f["checks"] for f in facs) - sum(f["refreshes"] for f in facs if f["checks"]),
            "check_steps": self.check_steps,
            "refresh_flops": self.refresh_flops,
            "check_flops": self.check_flops,
            "skipped_flops": self.skipped_flops,
            "params": params,
            "log": [(t, index[pid][0], d, v, r) for t, pid, d, v, r in self.log if pid in index],
            "log_dropped": self.logged - len(self.log),
        }
