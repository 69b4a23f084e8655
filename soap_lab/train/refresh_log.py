"""What the eigenbasis refreshes did during a run, for its record: counts, FLOPs and staleness along training.

The optimizer keeps per-factor counters and a bounded log of its checks (``refresh_stats()``,
:mod:`soap_lab.optim.refresh`); :class:`RefreshLog` reads the new part of that log at every evaluation and
keeps, for at most about 100 check steps of the run, the mean staleness of each *factor kind* over the layers:
a kind is a parameter's name without its block number plus the factor's side (``attn.qkv.weight:0`` is the
left factor of every block's attention input). :meth:`RefreshLog.summary` adds the totals (refreshes per
factor, refresh and check FLOPs) at the end. Nothing here changes what the optimizer computes.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

__all__ = ["RefreshLog", "kind"]


def kind(name: Optional[str], dim: int) -> str:
    """``blocks.3.mlp.fc1.weight``, side 0 -> ``mlp.fc1.weight:0``."""
    base = re.sub(r"^blocks\.\d+\.", "", name or "?")
    return f"{base}:{dim}"


class RefreshLog:
    """Collects an optimizer's refresh statistics for a run record (a no-op for optimizers without them)."""

    def __init__(self, optimizer, model, steps: int, frequency: Optional[int]):
        self.optimizer = optimizer if hasattr(optimizer, "refresh_stats") else None
        self.names = [n for n, _ in model.named_parameters()]
        f = max(1, int(frequency or 1))
        self.stride = max(f, (max(int(steps), 1) // 100) // f * f)  # about 100 kept check steps
        self.seen = 0

    @property
    def active(self) -> bool:
        return self.optimizer is not None

    def poll(self, rows: List[List[Any]]) -> None:
        """Append ``[step, kind, mean staleness over layers, fraction refreshed]`` for the kept check steps
        since the last poll to ``rows`` (the run's metrics, so a checkpoint carries them)."""
        if self.optimizer is None:
            return
        s = self.optimizer.refresh_stats()
        total = s["log_dropped"] + len(s["log"])
        new = s["log"][max(0, len(s["log"]) - (total - self.seen)):]
        self.seen = total
        acc: Dict[tuple, List[float]] = {}
        for step, index, dim, staleness, refreshed in new:
            if step % self.stride == 0 and staleness is not None:
                key = (int(step), kind(self.names[index] if index < len(self.names) else None, int(dim)))
                acc.setdefault(key, []).append((float(staleness), bool(refreshed)))
        for (step, k), vals in sorted(acc.items()):
            rows.append([step, k, sum(v for v, _ in vals) / len(vals), sum(r for _, r in vals) / len(vals)])

    def summary(self) -> Optional[Dict[str, Any]]:
        """Totals at the end of the run: refreshes, checks and skips, FLOPs, refreshes per factor (mean over every
        preconditioned factor of the model) and per factor kind (summed over layers)."""
        if self.optimizer is None:
            return None
        s = self.optimizer.refresh_stats()
        per: Dict[str, Dict[str, float]] = {}
        n_factors = 0
        for p in s["params"]:
            name = p.get("name") or (self.names[p["index"]] if p["index"] < len(self.names) else None)
            for fac in p["factors"]:
                n_factors += 1
                d = per.setdefault(kind(name, fac["dim"]), {"layers": 0, "refreshes": 0, "checks": 0})
                d["layers"] += 1
                d["refreshes"] += fac["refreshes"]
                d["checks"] += fac["checks"]
        out = {k: s[k] for k in ("refreshes", "checks", "skipped", "check_steps", "refresh_flops", "check_flops",
                                 "skipped_flops")}
        out["factors"] = n_factors
        out["refreshes_per_factor"] = s["refreshes"] / n_factors if n_factors else 0.0
        out["per_kind"] = per
        return out
