"""Stacks: same-layout parameters whose state is stacked along a leading dimension and stepped together.

Every parameter goes through a stack (:class:`soap_lab.optim.engine.EigenbasisOptimizer`): a stack of one where
nothing else shares its layout (shape, preconditioned dimensions, dtypes, device, step), otherwise one batched
matmul (``bmm``) or one elementwise kernel per operation for all its members, with reused work buffers (a
12-layer transformer steps 4 stacks of 12 matrices instead of 48 parameters).

The per-parameter state keeps its names and meaning: ``state["exp_avg"]``, ``state["exp_avg_sq"]``,
``state["GG"][d]``, ``state["Q"][d]`` of each parameter are *views* into the stack's tensors, so ``state_dict()``,
checkpoints and anything reading the state see the usual per-parameter tensors (the reference ``soap.py``'s
names). The stack is only a cache: if any state entry stops being the view it handed out (``load_state_dict``
copies tensors), :meth:`Stack.intact` says so and the optimizer rebuilds the stack from the current state.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

Tensor = torch.Tensor


def _stack_or_none(tensors: Sequence[Optional[Tensor]]) -> Optional[Tensor]:
    return None if tensors[0] is None else torch.stack(list(tensors))


class Workspace:
    """Work buffers shared by all stacks of an optimizer (stacks are stepped one after the other): one flat
    tensor per (dtype, device), grown to the largest request and reused every step. Costs a few times the
    largest stack's entries, not every parameter's."""

    def __init__(self):
        self._flat = {}
        self._views = {}  # (dtype, device, shape, count) -> views of the current flat tensor

    def buffers(self, like: Tensor, count: int = 3) -> List[Tensor]:
        """``count`` disjoint tensors shaped like ``like`` (contents undefined). Under ``torch.compile`` the views are
        made in the graph from the one flat tensor (inputs aliasing each other confuse its backends)."""
        key = (like.dtype, like.device)
        views = self._views.get((*key, like.shape, count))
        if views is not None and not torch.compiler.is_compiling():
            return views
        n = like.numel()
        flat = self._flat.get(key)
        if flat is None or flat.numel() < count * n:
            flat = torch.empty(count * n, dtype=like.dtype, device=like.device)
            self._flat[key] = flat
            self._views = {k: v for k, v in self._views.items() if k[:2] != key}  # views of the old tensor
        views = [flat[i * n:(i + 1) * n].view(like.shape) for i in range(count)]
        if not torch.compiler.is_compiling():
            self._views[(*key, like.shape, count)] = views
        return views

    def aligned(self, likes: Sequence[Tensor]) -> List[Tensor]:
        """One tensor shaped like each of ``likes`` (dtype and device of the first; contents undefined), disjoint,
        each starting on a 64-byte boundary like the first view of :meth:`buffers` (a GEMM writing into any of
        them takes the same code path as one writing into ``buffers(...)[0]``: MKL's round-off may depend on
        alignment). Used by the adaptive refresh policy to hold P·Q of every factor of a stack at once."""
        like0 = likes[0]
        key = (like0.dtype, like0.device)
        shapes = tuple(tuple(x.shape) for x in likes)
        views = self._views.get((*key, "aligned", shapes))
        if views is not None:
            return views
        unit = max(1, 64 // like0.element_size())
        starts, end = [], 0
        for x in likes:
            starts.append(end)
            end += -(-x.numel() // unit) * unit
        flat = self._flat.get(key)
        if flat is None or flat.numel() < end:
            flat = torch.empty(end, dtype=like0.dtype, device=like0.device)
            self._flat[key] = flat
            self._views = {k: v for k, v in self._views.items() if k[:2] != key}
        views = [flat[s:s + x.numel()].view(x.shape) for s, x in zip(starts, likes)]
        self._views[(*key, "aligned", shapes)] = views
        return views


class Stack:
    """Stacked state of same-layout parameters.

    Args:
        params: the parameters, in stacking order.
        states: their state dicts.
        layout: their common :class:`soap_lab.optim.kron.KronLayout`.
        tensors: names of per-parameter tensor entries (layout-shaped or per-coordinate), stacked to
            (batch, ...): e.g. ``"exp_avg"``, SOAP's ``"exp_avg_sq"``.
        lists: names of per-parameter list entries with one optional tensor per layout dimension, stacked per
            dimension: e.g. ``"GG"``, ``"Q"``, Shampoo's ``"D"``, Adafactor's ``"exp_avg_sq_factors"``.
            An entry that is ``None`` as a whole (Shampoo's ``Q`` and ``D`` before preconditioning starts) stays
            ``None`` until :meth:`replace` sets it.

    Each state entry becomes a view of the stacked tensors (same names, same shapes), and :meth:`intact` is False
    as soon as any entry is no longer the view handed out. ``stacked[name]`` holds the stacked tensor, list or
    None; ``M``, ``GG`` and ``Q`` name ``exp_avg``, ``GG`` and ``Q`` (None if absent). A
    refresh writes new bases into Q in place, so the views stay valid.
    """

    def __init__(self, params: List[Tensor], states: List[dict], layout, *, tensors: Sequence[str],
                 lists: Sequence[str]):
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
                raise ValueError(f"state entry {name!r} is None for some members of a stack only")
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
    GG = property(lambda self: self.stacked.get("GG"))
    Q = property(lambda self: self.stacked.get("Q"))

    def _record(self, st: dict) -> tuple:
        lists = []
        for name in self.list_names:
            lst = st.get(name)
            lists.append(None if lst is None else (lst, tuple(lst)))
        return tuple(st.get(name) for name in self.tensor_names), tuple(lists)

    def intact(self, states: List[dict]) -> bool:
        """True if every state entry is still the view (or None) this stack handed out."""
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


class StackCache:
    """The optimizer's stacks, by key (everything that makes parameters stackable but the step count) and
    members (whose step counts are equal when the stack is built, and stay so: they are stepped together). A stack
    is reused while it holds exactly these parameters, in this order, and its views are intact (:meth:`Stack.intact`); otherwise it is rebuilt from the current state, and any stack a member
    belonged to before is dropped (a parameter belongs to one stack at a time). Never part of ``state_dict``.

    Behaves like the ``dict`` of stacks it wraps for ``len``, truth value and :meth:`values`.
    """

    def __init__(self):
        self._stacks: dict = {}
        self._stack_of: dict = {}

    def __len__(self) -> int:
        return len(self._stacks)

    def values(self):
        return self._stacks.values()

    def find(self, key: tuple, params: List[Tensor], states: List[dict]) -> Optional[Stack]:
        """The stack of ``params`` (with state dicts ``states``) under ``key``, if there is one and it is intact."""
        stack = self._stacks.get(tuple(key) + tuple([id(p) for p in params]))
        if stack is not None and all([a is b for a, b in zip(stack.params, params)]) and stack.intact(states):
            return stack
        return None

    def get(self, key: tuple, params: List[Tensor], states: List[dict], build: Callable[[], Stack]) -> Stack:
        """The stack of ``params`` (with state dicts ``states``) under ``key``; ``build()`` makes a new one."""
        stack = self.find(key, params, states)
        if stack is not None:
            return stack
        for p in params:
            old = self._stack_of.pop(id(p), None)
            if old is not None:
                self._stacks.pop(old, None)
        stack = build()
        bkey = tuple(key) + tuple([id(p) for p in params])
        self._stacks[bkey] = stack
        for p in params:
            self._stack_of[id(p)] = bkey
        return stack
