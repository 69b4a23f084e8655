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

from typing import List, Optional, Sequence

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
    """Stacked state of same-layout parameters.

    Attributes:
        params: the parameters, in stacking order.
        layout: their common :class:`soap_lab.kron.KronLayout` (rank 1 or 2).
        M, V: stacked ``exp_avg`` and ``exp_avg_sq`` (batch, *layout.shape).
        GG, Q: per layout dimension, stacked factors and bases (batch, n_d, n_d), or None. A refresh writes the
            new bases into Q in place (so the per-parameter views stay valid).
    """

    def __init__(self, params: List[Tensor], states: List[dict], layout: kron.KronLayout):
        if len(layout.shape) > 2:
            raise ValueError("buckets hold rank-1 or rank-2 layouts only")
        self.params = list(params)
        self.layout = layout
        self.M = torch.stack([st["exp_avg"] for st in states])
        self.V = torch.stack([st["exp_avg_sq"] for st in states])
        self.GG: List[Optional[Tensor]] = [_stack_or_none([st["GG"][d] for st in states]) for d in range(len(layout.shape))]
        self.Q: List[Optional[Tensor]] = [_stack_or_none([st["Q"][d] for st in states]) for d in range(len(layout.shape))]
        self._views = []
        for i, st in enumerate(states):
            st["exp_avg"] = self.M[i]
            st["exp_avg_sq"] = self.V[i]
            st["GG"] = [None if x is None else x[i] for x in self.GG]
            st["Q"] = [None if x is None else x[i] for x in self.Q]
            self._views.append((st["exp_avg"], st["exp_avg_sq"], st["GG"], tuple(st["GG"]), st["Q"], tuple(st["Q"])))

    def __len__(self) -> int:
        return len(self.params)

    def intact(self, states: List[dict]) -> bool:
        """True if every state entry is still the view this bucket handed out (so the bucket is current)."""
        if len(states) != len(self._views):
            return False
        for st, (m, v, gg_list, gg, q_list, q) in zip(states, self._views):
            if st.get("exp_avg") is not m or st.get("exp_avg_sq") is not v:
                return False
            if st.get("GG") is not gg_list or st.get("Q") is not q_list:
                return False
            if len(gg_list) != len(gg) or any(a is not b for a, b in zip(gg_list, gg)):
                return False
            if len(q_list) != len(q) or any(a is not b for a, b in zip(q_list, q)):
                return False
        return True

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
