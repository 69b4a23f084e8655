"""Optimizers of the lab, and a registry that builds them by name (used by the training harness).

Names (the paper's optimizers and SOAP variants):
  adamw, adafactor, shampoo, eigen_adafactor, soap, soap_factorized, soap_one_sided,
  soap_factorized_one_sided; and muon (torch's Muon on hidden matrices + AdamW on the rest, a baseline the
  paper predates).

Under torch.distributed, :mod:`soap_lab.optim.zero` runs any of them with ZeRO-1 (each rank keeps and steps its
share of the state), partitioned by the step-cost model of :mod:`soap_lab.optim.cost`.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Iterable, Tuple

import torch

from .adafactor import Adafactor, EigenAdafactor
from .muon import MuonAdamW
from .shampoo import Shampoo
from .soap import SOAP

OPTIMIZERS = (
    "adamw",
    "adafactor",
    "shampoo",
    "eigen_adafactor",
    "soap",
    "soap_factorized",
    "soap_one_sided",
    "soap_factorized_one_sided",
    "muon",
)


def _registry() -> Dict[str, Tuple[type, Dict[str, Any]]]:
    """name -> (optimizer class, keywords that define the variant). The eigenbasis optimizers' keywords are their
    config dataclasses' fields (:mod:`.config`), read here off the constructors' signatures."""
    return {
        "adamw": (torch.optim.AdamW, {}),
        "adafactor": (Adafactor, {}),
        "shampoo": (Shampoo, {}),
        "eigen_adafactor": (EigenAdafactor, {}),
        "soap": (SOAP, {}),
        "soap_factorized": (SOAP, {"factorized": True}),
        "soap_one_sided": (SOAP, {"one_sided": True}),
        "soap_factorized_one_sided": (SOAP, {"factorized": True, "one_sided": True}),
        "muon": (MuonAdamW, {}),
    }


def takes_frequency(name: str) -> bool:
    """True if optimizer ``name`` has a preconditioning frequency f (a ``precondition_frequency`` keyword)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    cls, _ = _registry()[name]
    return "precondition_frequency" in inspect.signature(cls.__init__).parameters


def default_frequency(name: str) -> int:
    """The preconditioning frequency f optimizer ``name`` uses when none is given (its constructor's default)."""
    if not takes_frequency(name):
        raise ValueError(f"optimizer {name!r} takes no precondition_frequency")
    cls, _ = _registry()[name]
    return int(inspect.signature(cls.__init__).parameters["precondition_frequency"].default)


def takes_named_parameters(name: str) -> bool:
    """True if optimizer ``name`` is built from ``model.named_parameters()`` (its split depends on names: muon)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    return bool(getattr(_registry()[name][0], "takes_named_parameters", False))


def keywords(name: str) -> Tuple[str, ...]:
    """The keyword hyperparameters optimizer ``name`` accepts (besides ``params`` and its variant's own)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    cls, variant = _registry()[name]
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(k for k, v in inspect.signature(cls.__init__).parameters.items()
                 if v.kind in named and k not in ("self", "params", *variant))


def build_optimizer(name: str, params: Iterable[Any], **hparams: Any) -> torch.optim.Optimizer:
    """Build optimizer `name` over `params` with its own keyword hyperparameters.

    Raises ValueError listing the allowed names when `name` is unknown.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    cls, variant = _registry()[name]
    return cls(params, **variant, **hparams)
