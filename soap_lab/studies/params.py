"""Study, notebook and command-line parameters, checked before any work is done.

``papermill -p NAME VALUE`` passes a list or a mapping as its text (``-p frequencies '[1, 10, 100]'`` arrives as
the string ``"[1, 10, 100]"``); ``-y``/``-f`` pass YAML values. So every parameter goes through :func:`coerce`
(text that reads as a YAML/JSON list or mapping becomes one) and a typed check that raises
:class:`ParameterError`: one line naming the parameter, what it got and what is allowed. ``2.5`` is not an
integer (it is never silently truncated), ``0`` is not a list of seeds, ``[0, 32]`` is not a list of batch sizes.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

__all__ = ["ParameterError", "coerce", "integer", "number", "integers", "numbers", "mapping", "choices",
           "field_checks"]


class ParameterError(ValueError):
    """A notebook/CLI parameter that cannot work; the message is one line naming the fix."""


def coerce(value: Any) -> Any:
    """A string that reads as a YAML/JSON list or mapping (``"[1, 10]"``, ``'{"soap": [0.01]}'``) becomes one;
    anything else is returned as is."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)  # first: YAML 1.1 reads 3e-3 as text
        except ValueError:
            pass
        import yaml

        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ParameterError(f"cannot read {value!r} as a list or mapping ({str(e).splitlines()[0]})") from None
    return value


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else f"{value!r} (text)"


def integer(name: str, value: Any, minimum: Optional[int] = None) -> int:
    """An integer (an integral float such as 3.0 and digit strings are accepted; 2.5, True, "3x" are not)."""
    v = coerce(value)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ParameterError(f"{name} must be an integer{'' if minimum is None else f' >= {minimum}'}, got {_show(value)}")
    if minimum is not None and v < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {v}")
    return v


def number(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False) -> float:
    """A finite real number in [low, high] (``low_open``: (low, high])."""
    v = coerce(value)
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ParameterError(f"{name} must be a finite number, got {_show(value)}")
    below = v <= low if (low is not None and low_open) else (low is not None and v < low)
    if below or (high is not None and v > high):
        lo = "-inf" if low is None else f"{low:g}"
        raise ParameterError(f"{name} must be in {'(' if low_open else '['}{lo}, {'inf' if high is None else f'{high:g}'}], got {v}")
    return float(v)


def _sequence(name: str, value: Any, example: str) -> Sequence[Any]:
    v = coerce(value)
    if not isinstance(v, (list, tuple)):
        raise ParameterError(f"{name} must be a list, e.g. {example}; got {_show(value)}")
    if len(v) == 0:
        raise ParameterError(f"{name} is empty: give at least one value, e.g. {example}")
    return v


def integers(name: str, value: Any, minimum: Optional[int] = None, example: str = "[1, 10]") -> Tuple[int, ...]:
    """A non-empty list of integers, each >= ``minimum``."""
    items = _sequence(name, value, example)
    return tuple(integer(f"{name}[{i}]", x, minimum) for i, x in enumerate(items))


def numbers(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
            low_open: bool = False, example: str = "[0.003, 0.01]") -> Tuple[float, ...]:
    """A non-empty list of finite numbers in [low, high] (``low_open``: (low, high])."""
    items = _sequence(name, value, example)
    return tuple(number(f"{name}[{i}]", x, low, high, low_open) for i, x in enumerate(items))


def mapping(name: str, value: Any, example: str = '{"soap": [0.01]}') -> Dict[str, Any]:
    """A mapping (``None`` is the empty one)."""
    v = coerce(value)
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ParameterError(f"{name} must be a mapping, e.g. {example}; got {_show(value)}")
    return dict(v)


def choices(name: str, value: Any, allowed: Sequence[str]) -> Tuple[str, ...]:
    """A non-empty list of names, each one of ``allowed``."""
    items = _sequence(name, value, repr(list(allowed)))
    bad = [x for x in items if x not in allowed]
    if bad:
        raise ParameterError(f"unknown {bad[0]!r} in {name}; allowed: {', '.join(allowed)}")
    return tuple(items)


def device(name: str, device: Any) -> str:
    if not isinstance(device, str) or not (device in ("cpu", "cuda") or device.startswith("cuda:")):
        raise ParameterError(f"{name}: unknown device {device!r}; allowed: cpu, cuda, cuda:N")
    return device


def field_checks() -> Dict[str, Any]:
    """How each ``Scale`` field given as an override is checked (and coerced from text)."""
    from ..train.data import TOKENIZERS
    from ..train.models import PRESETS

    def one_of(allowed):
        def check(name, v):
            if v not in allowed:
                raise ParameterError(f"{name}: unknown {v!r}; allowed: {', '.join(allowed)}")
            return v
        return check

    def lrs(name, v):
        out = {}
        for opt, grid in mapping(name, v).items():
            out[str(opt)] = numbers(f"{name}[{opt!r}]", grid, 0.0, None, low_open=True, example="[3e-3, 1e-2]")
        return out

    pos = lambda n, v: integer(n, v, 1)  # noqa: E731
    seeds = lambda n, v: integers(n, v, 0, example="[0, 1, 2]")  # noqa: E731
    return {"preset": one_of(tuple(PRESETS)), "tokenizer": one_of(TOKENIZERS), "device": device,
            "batch_size": pos, "steps": pos, "eval_every": pos, "eval_batches": pos, "base_frequency": pos,
            "seeds": seeds, "tune_seeds": lambda n, v: None if v is None else seeds(n, v), "lrs": lrs}
