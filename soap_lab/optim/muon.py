"""Muon for the hidden matrices, AdamW for the rest: the split the modded-nanogpt records use.

Muon (Jordan et al. 2024; ``torch.optim.Muon``, whose Newton–Schulz iteration is used as is) orthogonalizes the
momentum of each 2-D hidden weight matrix. It is not meant for embeddings, the output head or 1-D parameters
(norm gains, biases), which every Muon record trains with AdamW. :class:`MuonAdamW` is that composite as one
``torch.optim.Optimizer``-like object, so the lab's harness, checkpoints and schedule treat it like any other
optimizer. The paper predates Muon; it is here as the baseline users choose today (Frans et al. 2025,
arXiv 2510.25000; Khona et al. 2026, arXiv 2607.20548 compare the two at scale).

Which parameter goes where is decided from its name, so the optimizer takes ``model.named_parameters()``
(:data:`MuonAdamW.takes_named_parameters`): a 2-D parameter whose name contains none of ``adamw_names``
goes to Muon, everything else to AdamW. Plain tensors carry no name; give param groups with a ``"muon"``
flag instead (``[{"params": hidden, "muon": True}, {"params": rest, "muon": False}]``).

The schedule: the harness sets every group's ``lr`` to the scheduled Muon lr times the group's ``lr_scale``
(1 for Muon's groups, ``adamw_lr / lr`` for AdamW's), so both parts follow the same warmup and decay.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

Tensor = torch.Tensor

__all__ = ["MuonAdamW", "split_parameters"]

#: Name fragments of 2-D parameters that stay on AdamW: token/position embeddings and the output head.
ADAMW_NAMES = ("emb", "lm_head")


def split_parameters(named: Iterable[Tuple[str, Tensor]],
                     adamw_names: Sequence[str] = ADAMW_NAMES) -> Tuple[List[Tuple[str, Tensor]], List[Tuple[str, Tensor]]]:
    """``(muon, adamw)`` lists of ``(name, parameter)``: 2-D parameters whose name contains none of
    ``adamw_names`` go to Muon; embeddings, the head and every parameter of another rank go to AdamW."""
    muon, adamw = [], []
    for name, p in named:
        hidden = p.dim() == 2 and not any(frag in name for frag in adamw_names)
        (muon if hidden else adamw).append((name, p))
    return muon, adamw


def _groups(params: Any, adamw_names: Sequence[str]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    items = list(params)
    if not items:
        raise ValueError("muon: got an empty parameter list")
    if all(isinstance(x, dict) for x in items):
        if any("muon" not in g for g in items):
            raise ValueError("muon: every param group needs a 'muon': True/False flag (or pass named parameters)")
        muon = [{k: v for k, v in g.items() if k != "muon"} for g in items if g["muon"]]
        adamw = [{k: v for k, v in g.items() if k != "muon"} for g in items if not g["muon"]]
        for g in muon:
            g["params"] = list(g["params"])
            bad = [tuple(p.shape) for p in g["params"] if p.dim() != 2]
            if bad:
                raise ValueError(f"muon: Muon takes 2-D matrices only, got a parameter of shape {bad[0]}")
        muon = [g for g in muon if g["params"]]
    elif all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in items):
        m, a = split_parameters(items, adamw_names)
        muon = [{"params": [p for _, p in m], "param_names": [n for n, _ in m]}] if m else []
        adamw = [{"params": [p for _, p in a], "param_names": [n for n, _ in a]}] if a else []
    else:
        raise ValueError("muon needs named parameters (model.named_parameters()) or param groups with a 'muon' "
                         "flag, to keep embeddings, the head and 1-D parameters on AdamW")
    if not muon:
        raise ValueError("muon: no 2-D hidden matrix among the parameters (Muon would train nothing); use adamw")
    return muon, [g for g in adamw if list(g["params"])]


class MuonAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on the 2-D hidden matrices, ``torch.optim.AdamW`` on the rest (module docstring).

    Args (defaults in brackets):
        params: ``model.named_parameters()``, or param groups with a ``"muon"`` flag.
        lr (0.02): Muon's learning rate (with torch's default ``adjust_lr_fn``: Keller Jordan's
            ``sqrt(max(1, rows/cols))`` scaling).
        betas ((0.95, 0.95)): β1 is Muon's momentum and AdamW's β1; β2 is AdamW's.
        eps (1e-8): AdamW's ε (Muon's Newton–Schulz ε stays torch's).
        weight_decay (0.01): decoupled, for both parts (torch's AdamW default; the lab's other optimizers use it too).
        adamw_lr (None): AdamW's learning rate; ``None`` means ``lr``.
        nesterov (True), ns_steps (5), adjust_lr_fn (None): passed to ``torch.optim.Muon``.
        adamw_names (``("emb", "lm_head")``): name fragments of 2-D parameters kept on AdamW.
    """

    #: The harness passes ``model.named_parameters()`` (names decide the split).
    takes_named_parameters = True

    def __init__(self, params: Any, lr: float = 0.02, betas: Tuple[float, float] = (0.95, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.01, adamw_lr: Optional[float] = None, nesterov: bool = True,
                 ns_steps: int = 5, adjust_lr_fn: Optional[str] = None,
                 adamw_names: Sequence[str] = ADAMW_NAMES) -> None:
        for name, value in (("lr", lr), ("adamw_lr", lr if adamw_lr is None else adamw_lr)):
            if not (isinstance(value, (int, float)) and value > 0 and value < float("inf")):
                raise ValueError(f"muon: {name} must be a positive finite number, got {value!r}")
        muon_groups, adamw_groups = _groups(params, tuple(adamw_names))
        adamw_lr = float(lr if adamw_lr is None else adamw_lr)
        self.muon = torch.optim.Muon(muon_groups, lr=lr, weight_decay=weight_decay, momentum=betas[0],
                                     nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        self.adamw = (torch.optim.AdamW(adamw_groups, lr=adamw_lr, betas=tuple(betas), eps=eps,
                                        weight_decay=weight_decay) if adamw_groups else None)
        for g in self.muon.param_groups:
            g["lr_scale"] = 1.0
        for g in (self.adamw.param_groups if self.adamw else []):
            g["lr_scale"] = adamw_lr / float(lr)
        self.defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, adamw_lr=adamw_lr,
                             nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        # Not Optimizer.__init__: the two parts own the state; these views keep the harness's reads working.
        self._parts = [self.muon] + ([self.adamw] if self.adamw else [])
        self._optimizer_step_pre_hooks: Dict[int, Any] = {}
        self._optimizer_step_post_hooks: Dict[int, Any] = {}

    @property
    def param_groups(self) -> List[Dict[str, Any]]:  # type: ignore[override]
        return [g for part in self._parts for g in part.param_groups]

    @param_groups.setter
    def param_groups(self, value: Any) -> None:  # Optimizer internals may assign; the parts own the groups
        pass

    @property
    def state(self) -> Dict[Tensor, Any]:  # type: ignore[override]
        return {p: s for part in self._parts for p, s in part.state.items()}

    @state.setter
    def state(self, value: Any) -> None:
        pass

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self._parts:
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:  # type: ignore[override]
        for part in self._parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> Dict[str, Any]:  # type: ignore[override]
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict() if self.adamw else None}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:  # type: ignore[override]
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError(f"muon: not a MuonAdamW state_dict (keys {sorted(state_dict)})")
        self.muon.load_state_dict(state_dict["muon"])
        if (state_dict["adamw"] is None) != (self.adamw is None):
            raise ValueError("muon: the state_dict's AdamW part does not match this optimizer's parameters")
        if self.adamw is not None:
            self.adamw.load_state_dict(state_dict["adamw"])

    def __repr__(self) -> str:
        return f"MuonAdamW(muon={self.muon!r}, adamw={self.adamw!r})"
