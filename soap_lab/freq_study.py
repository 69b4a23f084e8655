"""The seeded frequency study (paper Fig. 1 right, with power): how much SOAP and Shampoo lose as f grows.

The paper's central claim: as the preconditioning frequency f grows, Shampoo degrades a lot and SOAP slowly.
The claim is about the *rise* of each optimizer's final loss, ``rise(f) = loss(f) − loss(1)``, so the study
measures it per seed (same seed: same init, same data order at every f) and compares the rises of SOAP and
Shampoo seed by seed (``soap_lab.stats``). Three arms, all in the pool of their scale (``cpu_freq`` by default),
defined as grids in :mod:`soap_lab.ablations`:

- ``seeded`` (the main arm, ``ablations.frequency_seeded``): SOAP (QR refresh), the paper's Shampoo baseline
  (exponent 1/2.5, ε 1e-12, Adam grafting, preconditioning from step f) at every f of ``scale.frequencies``, and
  AdamW, each at its tuned lr (``ablations.tuned_lr``: the lr sweep at f = base_frequency), for every seed of
  ``scale.seeds``;
- ``batch`` (``ablations.frequency_batch``): SOAP and Shampoo at ``scale.arm_frequencies`` with batch_size ×
  ``scale.batch_multipliers`` (more tokens per step, same steps, the reference batch's tuned lrs), every seed;
- ``long`` (``ablations.frequency_long``): SOAP, Shampoo at ``scale.long_frequencies`` and AdamW with
  ``scale.long_steps`` steps, for ``scale.long_seeds``;
- ``others`` (``ablations.seeded_others``): the paper's other claims at the same scale and seeds — the variants,
  QR vs eigh, the efficiency protocol, the batch sizes — and the lr sweep at every seed
  (:mod:`soap_lab.seeded_claims`).

:func:`order_for_training` sorts a study's runs into the order the issue asks them to be trained in; :func:`run`
trains the missing ones. Command line: ``python -m soap_lab.freq_study`` (``soap_lab.cli``).
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional, Sequence

from . import ablations
from .records import sweep

__all__ = ["ARMS", "order_for_training", "run"]

#: The arms, in the order :func:`run` trains them, and their studies in ``soap_lab.ablations``.
ARM_STUDIES = {"seeded": "frequency_seeded", "batch": "frequency_batch", "long": "frequency_long",
               "others": "seeded_others"}
ARMS = tuple(ARM_STUDIES)


def order_for_training(cfgs: Sequence[Any], first_frequencies: Sequence[int] = (1, 10, 30)) -> List[Any]:
    """The runs of ``cfgs`` in training priority: SOAP and Shampoo at ``first_frequencies`` (seed by seed, so
    every finished seed completes a paired comparison), then the other frequencies, then AdamW."""
    first = {int(f) for f in first_frequencies}

    def key(c):
        if c.precondition_frequency is None:
            group = 2
        else:
            group = 0 if int(c.precondition_frequency) in first else 1
        return (group, c.batch_size, c.seed)

    return sorted(cfgs, key=key)  # sorted is stable: the study's order within a group


def run(scale, arms: Sequence[str] = ARMS, root: Optional[str] = None, log=print) -> None:
    """Train the missing runs: the lr sweep (``scale.lr_seeds``), then each arm of ``arms`` in training order.

    Resumable: finished records are skipped (``sweep.run_sweep``).
    """
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ValueError(f"unknown arm {bad[0]!r}; allowed: {', '.join(ARMS)}")
    sweep.run_sweep(ablations.lr_sweep(scale, root), log=log)
    for arm in arms:
        sweep.run_sweep(order_for_training(ablations.configs(ARM_STUDIES[arm], scale, root)), log=log)


if __name__ == "__main__":
    from .cli import freq_study_main

    sys.exit(freq_study_main())
