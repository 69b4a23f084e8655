"""Buckets: same-shape parameters stacked and stepped together.

A SOAP step is a handful of matmuls and elementwise passes per parameter. Parameters with the same layout
(shape, preconditioned dimensions, dtypes, device) do exactly the same work, so a bucket stacks their state
along a new leading dimension and runs one batched matmul (``bmm``) or one elementwise kernel per operation
for the whole bucket, with preallocated work buffers: a 12-layer transformer has 4 buckets of 12 matrices
instead of 48 parameters, which is what matters on a GPU, where the per-parameter loop launches many small
kernels; on a CPU it removes the per-step allocations.

The per-parameter state keeps its names and meaning: after a bucket is built, ``state["exp_avg"]``,
``state["exp_avg_sq"]``, ``state["GG"][d]`` and ``state["Q"][d]`` of each parameter are *views* into the
bucket's stacked tensors, so ``state_dict()``, checkpoints and anything reading the state see the usual
per-parameter tensors. The bucket is only a cache: if any state entry stops being the view it handed out
(``load_state_dict`` copies tensors; the per-parameter path assigns new ones), :meth:`Bucket.intact` says so
and the optimizer rebuilds the bucket from the current state, by stacking copies.

Buckets hold rank-2 layouts (matrices, rotated on one side, both or neither) and unrotated rank-1 layouts
(AdamW's vectors); the optimizer keeps higher-rank layouts and ``precondition_1d`` vectors on the
per-parameter path (see ``SOAP._bucket_key``). The batched code below still handles a rotated vector.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from .. import kron

Tensor = torch.Tensor


def _stack_or_none(tensors: Sequence[Optional[Tensor]]) -> Optional[Tensor]:
    return None if tensors[0] is None else torch.stack(list(tensors))


class Workspace:
    """Work buffers shared by all buckets of an optimizer (buckets are stepped one after the other): one flat
    tensor per (dtype, device), grown to the largest request and reused every step. Costs 3× the largest
    bucket's entries, not 3× every parameter's."""

    def __init__(self):
        self._flat = {}

    def buffers(self, like: Tensor, count: int = 3) -> List[Tensor]:
        """``count`` disjoint tensors shaped like ``like`` (contents undefined)."""
        key = (like.dtype, like.device)
        n = like.numel()
        flat = self._flat.get(key)
        if flat is None or flat.numel() < count * n:
            flat = torch.empty(count * n, dtype=like.dtype, device=like.device)
            self._flat[key] = flat
        return [flat[i * n:(i + 1) * n].view(like.shape) for i in range(count)]


class Bucket:
    """Stacked state of same-layout parameters (SOAP, Shampoo, EigenAdafactor).

    Args:
        params: the parameters, in stacking order.
        states: their state dicts.
        layout: their common :class:`soap_lab.kron.KronLayout` (rank 1 or 2).
        tensors: names of per-parameter tensor entries (layout-shaped or per-coordinate), stacked to
            (batch, ...); default SOAP's ``"exp_avg"``, ``"exp_avg_sq"``.
        lists: names of per-parameter list entries with one optional tensor per layout dimension, stacked per
            dimension: default ``"GG"``, ``"Q"``; also e.g. Shampoo's ``"D"``, Adafactor's ``"exp_avg_sq_factors"``.
            An entry that is ``None`` as a whole (Shampoo's ``Q`` and ``D`` before preconditioning starts) stays
            ``None`` until :meth:`replace` sets it.

    Each state entry becomes a view of the stacked tensors (same names, same shapes), and :meth:`intact` is False
    as soon as any entry is no longer the view handed out. ``stacked[name]`` holds the stacked tensor, list or
    None; ``M``, ``V``, ``GG`` and ``Q`` name ``exp_avg``, ``exp_avg_sq``, ``GG`` and ``Q`` (None if absent). A
    refresh writes new bases into Q in place (:meth:`refresh_`), so the views stay valid.
    """

    def __init__(self, params: List[Tensor], states: List[dict], layout: kron.KronLayout, *,
                 tensors: Sequence[str] = ("exp_avg", "exp_avg_sq"), lists: Sequence[str] = ("GG", "Q")):
        if len(layout.shape) > 2:
            raise ValueError("buckets hold rank-1 or rank-2 layouts only")
        self.params = list(params)
        self.layout = layout
        self.tensor_names = tuple(tensors)
        self.list_names = tuple(lists)
        self.stacked: dict = {}
        for name in self.tensor_names:
            self.stacked[name] = torch.stack([st[name] for st in states])
        for name in self.list_names:
            present = [st.get(name) is not None for st in states]
            if not any(present):
                self.stacked[name] = None
                continue
            if not all(present):
                raise ValueError(f"state entry {name!r} is None for some members of a bucket only")
            rank = len(states[0][name])
            self.stacked[name] = [_stack_or_none([st[name][d] for st in states]) for d in range(rank)]
        for i, st in enumerate(states):
            for name in self.tensor_names:
                st[name] = self.stacked[name][i]
            for name in self.list_names:
                if self.stacked[name] is not None:
                    st[name] = [None if x is None else x[i] for x in self.stacked[name]]
        self._records = [self._record(st) for st in states]

    # The names the methods below use.
    M = property(lambda self: self.stacked.get("exp_avg"))
    V = property(lambda self: self.stacked.get("exp_avg_sq"))
    GG = property(lambda self: self.stacked.get("GG"))
    Q = property(lambda self: self.stacked.get("Q"))

    def _record(self, st: dict) -> tuple:
        lists = []
        for name in self.list_names:
            lst = st.get(name)
            lists.append(None if lst is None else (lst, tuple(lst)))
        return tuple(st.get(name) for name in self.tensor_names), tuple(lists)

    def intact(self, states: List[dict]) -> bool:
        """True if every state entry is still the view (or None) this bucket handed out."""
        if len(states) != len(self._records):
            return False
        for st, (tensors, lists) in zip(states, self._records):
            if any(st.get(name) is not x for name, x in zip(self.tensor_names, tensors)):
                return False
            for name, rec in zip(self.list_names, lists):
                lst = st.get(name)
                if rec is None:
                    if lst is not None:
                        return False
                    continue
                if lst is not rec[0] or len(lst) != len(rec[1]) or any(a is not b for a, b in zip(lst, rec[1])):
                    return False
        return True

    def replace(self, name: str, new: List[Optional[Tensor]], states: List[dict]) -> None:
        """Adopt freshly computed stacked tensors for list entry ``name`` (a refresh) without copying them: each
        parameter's ``state[name][d]`` is re-pointed to a view of ``new[d]`` (dimensions where ``new[d]`` is None
        keep their tensor; an entry that was None as a whole becomes a new list)."""
        old = self.stacked[name]
        merged = list(new) if old is None else [o if n is None else n for o, n in zip(old, new)]
        self.stacked[name] = merged
        for i, st in enumerate(states):
            if old is None:
                st[name] = [None if x is None else x[i] for x in merged]
            else:
                lst = st[name]
                for d, n in enumerate(new):
                    if n is not None:
                        lst[d] = n[i]
        self._records = [self._record(st) for st in states]

    def __len__(self) -> int:
        return len(self.params)

    # -- rotations ---------------------------------------------------------------------------------------
    def rotate(self, x: Tensor, out: Tensor, tmp: Tensor, *, back: bool = False,
               Q: Optional[List[Optional[Tensor]]] = None) -> Tensor:
        """``Q_Lᵀ X Q_R`` (or ``Q_L X Q_Rᵀ`` with ``back``) for every matrix of the stack ``x``, written to ``out``
        (``tmp`` holds the intermediate product; neither may alias ``x``). Returns ``x`` itself when no
        dimension is rotated. Same order of products as :func:`soap_lab.kron.project` / ``project_back``."""
        Q = self.Q if Q is None else Q
        if len(Q) == 1:
            q = Q[0]
            if q is None:
                return x
            torch.bmm(x.unsqueeze(1), q.mT if back else q, out=out.unsqueeze(1))
            return out
        qL, qR = Q
        if qL is not None and qR is not None:
            torch.bmm(qL if back else qL.mT, x, out=tmp)
            torch.bmm(tmp, qR.mT if back else qR, out=out)
        elif qL is not None:
            torch.bmm(qL if back else qL.mT, x, out=out)
        elif qR is not None:
            torch.bmm(x, qR.mT if back else qR, out=out)
        else:
            return x
        return out

    def refresh_(self, method: str, qr_method: str, buf: Tensor, tmp: Tensor, work) -> List[Optional[Tensor]]:
        """Refresh the bases in place and carry the momentum ``M`` over to them; return the permutations the
        caller applies to its per-coordinate statistics (:func:`soap_lab.kron.refresh_bases`).

        The momentum leaves the old basis first (``buf`` holds it in the original space, ``tmp`` is scratch;
        both shaped like M), so the new bases can be written over the old ones (the per-parameter views stay
        valid) and the refresh allocates nothing of size n²: ``work`` (e.g. :meth:`Workspace.buffers` of a
        workspace not otherwise in use) provides its scratch."""
        m_orig = self.rotate(self.M, out=buf, tmp=tmp, back=True)
        _, perms = kron.refresh_bases(self.GG, self.Q, method, qr_method, out=self.Q, work=work)
        self.rotate(m_orig, out=self.M, tmp=tmp)
        return perms

    def update_factors_(self, G: Tensor, beta: float) -> None:
        """``GG[d] ← β·GG[d] + (1−β)·G_(d) G_(d)ᵀ`` for the stacked gradients ``G`` (batched GEMMs;
        as :func:`soap_lab.kron.update_factors_`, a 1-D parameter's outer product is blended with ``lerp_``)."""
        if len(self.GG) == 1:
            if self.GG[0] is not None:
                self.GG[0].lerp_(torch.bmm(G.unsqueeze(2), G.unsqueeze(1)), 1.0 - beta)
            return
        if self.GG[0] is not None:
            kron.syrk_(self.GG[0], G, beta, 1.0 - beta)
        if self.GG[1] is not None:
            kron.syrk_(self.GG[1], G.mT, beta, 1.0 - beta)


# ----------------------------------------------------------------------------------------------------------
# The bucket cache, shared by every bucketed optimizer
# ----------------------------------------------------------------------------------------------------------
class BucketCache:
    """The optimizer's buckets, by key (everything that makes parameters stackable but the step count) and
    members. A bucket is reused while it holds exactly these parameters, in this order, and its views are
    intact (:meth:`Bucket.intact`); otherwise it is rebuilt from the current state, and any bucket a member
    belonged to before is dropped (a parameter belongs to one bucket at a time). Never part of ``state_dict``.

    Behaves like the ``dict`` of buckets it wraps for ``len``, truth value and :meth:`values`.
    """

    def __init__(self):
        self._buckets: dict = {}
        self._bucket_of: dict = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def values(self):
        return self._buckets.values()

    def get(self, key: tuple, params: List[Tensor], states: List[dict], build: Callable[[], Bucket]) -> Bucket:
        """The bucket of ``params`` (with state dicts ``states``) under ``key``; ``build()`` makes a new one."""
        bkey = tuple(key) + tuple(id(p) for p in params)
        bucket = self._buckets.get(bkey)
        if bucket is not None and all(a is b for a, b in zip(bucket.params, params)) and bucket.intact(states):
            return bucket
        for p in params:
            old = self._bucket_of.pop(id(p), None)
            if old is not None:
                self._buckets.pop(old, None)
        bucket = build()
        self._buckets[bkey] = bucket
        for p in params:
            self._bucket_of[id(p)] = bkey
        return bucket
