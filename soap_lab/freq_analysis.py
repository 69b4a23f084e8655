"""Tables of the seeded frequency study (``soap_lab.freq_study``): rises with f, paired over seeds.

For each batch size (and step budget) and each preconditioned optimizer, ``rise(f) = loss(f) − loss(f₀)`` per
seed, f₀ the smallest frequency of that arm (1 in the main and batch arms, 2 in the long arm). The paper's claim
(Fig. 1 right) is that SOAP's rise is smaller than Shampoo's: the difference of rises ``rise_SOAP − rise_Shampoo``
per seed, its mean and 95% t-interval (``soap_lab.stats``) and the verdict on "< 0". The same tables give the
other two claims of the figure: SOAP and Shampoo below AdamW at every f, SOAP and Shampoo close at f₀.

Input: ``analysis.StudyData`` of one or more arms (their ``runs`` frames are concatenated). Nothing trains.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence

from . import stats

__all__ = ["CLOSE_MARGIN", "final_losses", "rise_table", "rise_difference_table", "versus_table", "claims",
           "markdown"]

#: "Close" in "SOAP and Shampoo are close at f = 1": |difference of final losses| below this (nats).
CLOSE_MARGIN = 0.02


def final_losses(datas: Iterable[Any]):
    """One row per stored run of the arms: optimizer, label, f, seed, batch_size, steps, final_val_loss."""
    import pandas as pd

    frames = [sd.runs for sd in datas if sd is not None and len(sd.runs)]
    cols = ["run_id", "optimizer", "label", "f", "seed", "batch_size", "steps", "final_val_loss"]
    if not frames:
        return pd.DataFrame(columns=cols)
    df = pd.concat(frames, ignore_index=True).drop_duplicates("run_id")
    return df[cols].reset_index(drop=True)


def _by_seed(df) -> Dict[int, Optional[float]]:
    out = {}
    for s, v in zip(df["seed"], df["final_val_loss"]):
        out[int(s)] = float(v) if v is not None and math.isfinite(float(v)) else None
    return out


def _groups(df):
    """(batch_size, steps) pairs present, sorted."""
    return sorted({(int(b), int(s)) for b, s in zip(df["batch_size"], df["steps"])})


def _freqs(df, opt) -> List[int]:
    g = df[(df["optimizer"] == opt) & df["f"].notna()]
    return sorted({int(f) for f in g["f"]})


def _row(iv: stats.Interval, claim: str, margin: float = 0.0, **keys) -> Dict[str, Any]:
    return {**keys, "n": iv.n, "mean": iv.mean, "low": iv.low, "high": iv.high, "values": iv.values,
            "verdict": stats.verdict(iv, claim, margin)}


def rise_table(df, optimizers: Sequence[str] = ("soap", "shampoo")) -> List[Dict[str, Any]]:
    """Per (batch_size, steps, optimizer, f > f₀): rise = loss(f) − loss(f₀) per seed, mean, 95% CI, n, and the
    verdict on "the loss rises" (> 0)."""
    rows = []
    for b, steps in _groups(df):
        g = df[(df["batch_size"] == b) & (df["steps"] == steps)]
        for opt in optimizers:
            fs = _freqs(g, opt)
            if len(fs) < 2:
                continue
            base = _by_seed(g[(g["optimizer"] == opt) & (g["f"] == fs[0])])
            for f in fs[1:]:
                d = stats.paired_differences(_by_seed(g[(g["optimizer"] == opt) & (g["f"] == f)]), base)
                if d:
                    rows.append(_row(stats.mean_interval(list(d.values())), "greater", batch_size=b, steps=steps,
                                     optimizer=opt, f=f, f0=fs[0], seeds=list(d)))
    return rows


def rise_difference_table(df) -> List[Dict[str, Any]]:
    """Per (batch_size, steps, f > f₀): rise_SOAP − rise_Shampoo per seed, mean, 95% CI, n, and the verdict on
    the paper's claim that it is < 0 (SOAP degrades more slowly)."""
    rows = []
    for b, steps in _groups(df):
        g = df[(df["batch_size"] == b) & (df["steps"] == steps)]
        fs = sorted(set(_freqs(g, "soap")) & set(_freqs(g, "shampoo")))
        if len(fs) < 2:
            continue

        def rises(opt, f):
            return stats.paired_differences(_by_seed(g[(g["optimizer"] == opt) & (g["f"] == f)]),
                                            _by_seed(g[(g["optimizer"] == opt) & (g["f"] == fs[0])]))

        for f in fs[1:]:
            d = stats.paired_differences(rises("soap", f), rises("shampoo", f))
            if d:
                rows.append(_row(stats.mean_interval(list(d.values())), "less", batch_size=b, steps=steps, f=f,
                                 f0=fs[0], seeds=list(d)))
    return rows


def versus_table(df, a: str, b: str, claim: str = "less", margin: float = 0.0) -> List[Dict[str, Any]]:
    """Per (batch_size, steps, f): final loss of ``a`` − final loss of ``b`` per seed (``b`` may be ``"adamw"``,
    which has no f: the same AdamW runs serve every f), mean, 95% CI, n, verdict on ``claim``."""
    rows = []
    for bs, steps in _groups(df):
        g = df[(df["batch_size"] == bs) & (df["steps"] == steps)]
        fs = _freqs(g, a) if b == "adamw" else sorted(set(_freqs(g, a)) & set(_freqs(g, b)))
        for f in fs:
            other = g[g["optimizer"] == b] if b == "adamw" else g[(g["optimizer"] == b) & (g["f"] == f)]
            d = stats.paired_differences(_by_seed(g[(g["optimizer"] == a) & (g["f"] == f)]), _by_seed(other))
            if d:
                rows.append(_row(stats.mean_interval(list(d.values())), claim, margin, batch_size=bs, steps=steps,
                                 f=f, f0=fs[0], a=a, b=b, seeds=list(d)))
    return rows


def claims(df) -> List[Dict[str, Any]]:
    """The three claims of Fig. 1 right, one row per (claim, batch_size, steps, f) with interval and verdict."""
    out = []
    for r in rise_difference_table(df):
        out.append({"claim": "SOAP's rise with f is smaller than Shampoo's (rise_SOAP − rise_Shampoo < 0)", **r})
    for opt in ("soap", "shampoo"):
        for r in versus_table(df, opt, "adamw", "less"):
            out.append({"claim": f"{opt} beats AdamW at every f ({opt} − AdamW < 0)", **r})
    for r in versus_table(df, "soap", "shampoo", "equal", CLOSE_MARGIN):
        if r["f"] == r["f0"]:
            out.append({"claim": f"SOAP and Shampoo close at the smallest f (abs(SOAP − Shampoo) < {CLOSE_MARGIN})", **r})
    return out


def markdown(df) -> str:
    """The rises and the claims as Markdown tables (mean ± half-width of the 95% CI, [low, high], n, verdict)."""
    def ci(r):
        if r["n"] < 2:
            return f"{r['mean']:+.4f} (n = 1)", "—"
        return f"{r['mean']:+.4f} ± {(r['high'] - r['low']) / 2:.4f}", f"[{r['low']:+.4f}, {r['high']:+.4f}]"

    out = ["| batch | steps | optimizer | f | rise = loss(f) − loss(f₀) | 95% CI | n | rises? |", "|---|---|---|---|---|---|---|---|"]
    for r in rise_table(df):
        m, c = ci(r)
        out.append(f"| {r['batch_size']} | {r['steps']} | {r['optimizer']} | {r['f0']} → {r['f']} | {m} | {c} | {r['n']} | {r['verdict']} |")
    out += ["", "| claim | batch | steps | f | mean difference | 95% CI | n | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in claims(df):
        m, c = ci(r)
        out.append(f"| {r['claim']} | {r['batch_size']} | {r['steps']} | {r['f']} | {m} | {c} | {r['n']} | {r['verdict']} |")
    return "\n".join(out)
