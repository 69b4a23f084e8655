"""Optimizers of the lab, and a registry that builds them by name (used by the training harness).

Names (the paper's optimizers and SOAP variants):
  adamw, adafactor, shampoo, eigen_adafactor, soap, soap_factorized, soap_one_sided,
  soap_factorized_one_sided.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable

import torch

OPTIMIZERS = (
    "adamw",
    "adafactor",
    "shampoo",
    "eigen_adafactor",
    "soap",
    "soap_factorized",
    "soap_one_sided",
    "soap_factorized_one_sided",
)


def _factories() -> Dict[str, Callable[..., torch.optim.Optimizer]]:
    # Imported lazily so that `soap_lab.optim` stays importable while modules are added.
    from .adafactor import Adafactor, EigenAdafactor
    from .shampoo import Shampoo
    from .soap import SOAP

    return {
        "adamw": torch.optim.AdamW,
        "adafactor": Adafactor,
        "shampoo": Shampoo,
        "eigen_adafactor": EigenAdafactor,
        "soap": SOAP,
        "soap_factorized": lambda params, **kw: SOAP(params, factorized=True, **kw),
        "soap_one_sided": lambda params, **kw: SOAP(params, one_sided=True, **kw),
        "soap_factorized_one_sided": lambda params, **kw: SOAP(params, factorized=True, one_sided=True, **kw),
    }


def build_optimizer(name: str, params: Iterable[Any], **hparams: Any) -> torch.optim.Optimizer:
    """Build optimizer `name` over `params` with its own keyword hyperparameters.

    Raises ValueError listing the allowed names when `name` is unknown.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    return _factories()[name](params, **hparams)
