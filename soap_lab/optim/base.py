"""What every optimizer of the lab shares outside its update rule: input checks, dtypes, the weight step.

- Sparse or complex gradients raise ``ValueError`` naming the parameter.
- NaN/Inf gradients raise ``FloatingPointError`` naming the parameter and step, *before* any state is touched
  (``on_nonfinite="skip"`` skips the whole step instead and counts it in ``optimizer.skipped_steps``). Both read
  one flag on the host per step (a GPU sync; a graph break under ``torch.compile``); ``on_nonfinite="ignore"``
  checks nothing (as torch's optimizers: a NaN propagates into the state), for compiled steps and CUDA graphs.
- bf16/fp16 parameters: state and linear algebra in float32 (:func:`soap_lab.optim.kron.state_dtype_for`), the
  update computed in float32 and rounded once into the parameter.
- ``load_state_dict`` keeps the saved state's dtypes (torch's default would cast float32 state down to a bf16
  parameter's dtype), so a checkpointed run continues bit-exactly.
"""
from __future__ import annotations

from itertools import chain
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

Tensor = torch.Tensor

NONFINITE_POLICIES = ("raise", "skip", "ignore")


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):  # a copy: the loaded optimizer must not alias the caller's state_dict
        return value.to(device=device, copy=True)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


class LabOptimizer(torch.optim.Optimizer):
    """Base class: subclasses implement :meth:`_update_all` for the checked gradients of a step
    (:class:`soap_lab.optim.engine.EigenbasisOptimizer`)."""

    def __init__(self, params: Iterable[Any], defaults: Dict[str, Any], on_nonfinite: str = "raise"):
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {on_nonfinite!r}")
        super().__init__(params, defaults)
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0

    # ------------------------------------------------------------------------------------------------------
    def _param_name(self, gi: int, pi: int, p: Tensor) -> str:
        names = self.param_groups[gi].get("param_names")
        label = f" {names[pi]!r}" if names else ""
        return f"parameter{label} param_groups[{gi}]['params'][{pi}] (shape {tuple(p.shape)}, {p.dtype})"

    def _checked_grads(self) -> Optional[List[Tuple[dict, Tensor, Tensor]]]:
        """All (group, param, grad) of this step, validated; None if the step is to be skipped."""
        items = []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise ValueError(f"{type(self).__name__} does not support sparse gradients: {self._param_name(gi, pi, p)}")
                if torch.is_complex(g) or torch.is_complex(p):
                    raise ValueError(f"{type(self).__name__} does not support complex parameters: {self._param_name(gi, pi, p)}")
                items.append((gi, pi, group, p, g))
        if not items or self.on_nonfinite == "ignore":
            return [(group, p, g) for _, _, group, p, g in items]
        finite = self._finite_flags([g for *_, g in items])
        if not bool(finite.all()):
            if self.on_nonfinite == "skip":
                self.skipped_steps += 1
                return None
            gi, pi, _, p, _ = items[int((~finite).nonzero()[0, 0])]
            step = self.state[p].get("step", 0) if p in self.state else 0
            raise FloatingPointError(
                f"{type(self).__name__}: non-finite gradient (NaN or Inf) in {self._param_name(gi, pi, p)} "
                f"at step {step} (calls to step() so far on this parameter); optimizer state left untouched. "
                f"Pass on_nonfinite='skip' to skip such steps instead."
            )
        return [(group, p, g) for _, _, group, p, g in items]

    @staticmethod
    def _finite_flags(grads: List[Tensor]) -> Tensor:
        """One flag per gradient: all entries finite.

        Fast path: one fused L2-norm reduction per tensor (a single ``_foreach_norm`` call, no elementwise
        temporaries). A NaN or Inf entry makes the norm non-finite, so a finite norm proves the tensor finite;
        a non-finite norm may also be an overflow of huge finite entries, so those tensors are re-checked
        exactly with ``isfinite``.
        """
        if all(g.numel() > 0 and g.device == grads[0].device for g in grads):
            try:
                norms = torch.stack([n.float() for n in torch._foreach_norm(grads)])
            except (RuntimeError, TypeError, NotImplementedError):  # pragma: no cover - older builds, odd dtypes
                norms = None
            if norms is not None:
                finite = torch.isfinite(norms)
                if bool(finite.all()):
                    return finite
                for i in (~finite).nonzero().flatten().tolist():
                    finite[i] = torch.isfinite(grads[i]).all()
                return finite
        return torch.stack([torch.isfinite(g).all().to(grads[0].device) for g in grads])

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        """One optimization step (the closure, if given, re-evaluates the model and returns the loss)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        items = self._checked_grads()
        if items is not None:
            self._update_all(items)
        return loss

    def _update_all(self, items: List[Tuple[dict, Tensor, Tensor]]) -> None:  # pragma: no cover - abstract
        """Step every (group, parameter, checked gradient) of this step."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------------
    @staticmethod
    def _apply_update(p: Tensor, update: Tensor, step_size: float, lr: float, weight_decay: float) -> None:
        """``W ← W − step_size·N``, then decoupled weight decay ``W ← W − lr·wd·W`` (reference order).

        Low-precision parameters are updated in float32 and rounded once.
        """
        w = p if p.dtype in (torch.float32, torch.float64) else p.float()
        w.add_(update.reshape(p.shape).to(w.dtype), alpha=-step_size)
        if weight_decay > 0:
            w.add_(w, alpha=-lr * weight_decay)
        if w is not p:
            p.copy_(w)

    @classmethod
    def _apply_updates(cls, params: List[Tensor], updates: List[Tensor], step_size: float, lr: float,
                       weight_decay: float) -> None:
        """:meth:`_apply_update` for several parameters at once: one ``foreach`` call per operation when
        every parameter is float32/float64 and its update has its dtype and shape, else one by one."""
        if all(p.dtype in (torch.float32, torch.float64) and u.dtype == p.dtype and u.shape == p.shape
               for p, u in zip(params, updates)):
            torch._foreach_add_(params, updates, alpha=-step_size)
            if weight_decay > 0:
                torch._foreach_add_(params, params, alpha=-lr * weight_decay)
            return
        for p, u in zip(params, updates):
            cls._apply_update(p, u, step_size, lr, weight_decay)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Like torch's, but keeps each saved state tensor's dtype (see module docstring) and gives groups saved
        by an older version this version's defaults for options they lack."""
        saved_state = state_dict["state"]
        saved_ids = list(chain.from_iterable(g["params"] for g in state_dict["param_groups"]))
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # a checkpoint from an older version may lack newer options
            for k, v in self.defaults.items():
                group.setdefault(k, v)
        params = list(chain.from_iterable(g["params"] for g in self.param_groups))
        for pid, p in zip(saved_ids, params):
            if pid in saved_state:
                self.state[p] = _to_device(saved_state[pid], p.device)
