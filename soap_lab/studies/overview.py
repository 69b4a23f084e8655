"""Every claim of every study at one scale, at a glance (the figure ``claims``): no runs of its own.

The rows are the studies' own claims (:func:`soap_lab.studies.report.claim_rows`) but the learning-rate checks,
which test the protocol rather than the paper, and Claim 1's exact identities, which have no interval; drawn as a
forest plot by :func:`soap_lab.figures.claims.forest`, one panel per unit.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..records.store import MissingResults
from .base import Study


def draw(data: Mapping[str, Any], out, name: str = "claims"):
    from ..figures.claims import forest
    from .registry import get
    from .report import claim_rows

    sd = next((v for v in data.values() if v is not None), None)
    if sd is None:
        raise MissingResults(f"{name}: no scale to draw")
    rows, notes = claim_rows(sd.scale, root=sd.root)
    rows = [r for r in rows if r["study"] != "lr_sweep" and not r.get("exact")]  # exact identities: no interval
    ns = sorted({int(r["n"]) for r in rows})
    model = get("frequency").data(sd.scale, sd.root).caption()
    return forest(rows, out, name, f"Every claim at scale {sd.scale.name}: n = {'–'.join(map(str, ns))} per claim",
                  [model, *notes])


STUDY = Study(name="overview", order=1000, paper="every claim of the studies above", tuned=False,
              question="Every claim at a glance: where does each interval lie?", figures={"claims": draw})
