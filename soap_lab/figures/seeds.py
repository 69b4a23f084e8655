"""Seeds on every figure: every seed drawn thin, the mean with its 95% interval, and n.

The lab's standard for a figure: where a configuration ran with several seeds, each seed is drawn thin or
transparent (a line for a curve, a small point for a bar or marker), the mean over the seeds is drawn with its
two-sided 95% Student-t interval (:func:`soap_lab.stats.mean_interval`), and the figure says n. With one seed the
one run is drawn as before and the figure says n = 1 (no interval).

- :func:`mean_ci` — mean, half-width of the interval (0 with one value) and n of a list of values;
- :func:`summarize` — one row per configuration of a run table: the mean, interval, n, and every seed's value;
- :func:`n_text` — "n = 3 seeds", "n = 1 seed", "n = 1–3 seeds";
- :func:`pm` — "1.559 ± 0.012" (n ≥ 2) or "1.559" (n = 1);
- :func:`dodge` — small horizontal offsets on a log axis, so markers at the same x do not hide each other;
- :func:`seeds_of` — the sorted seeds of a run table;
- :func:`mean_curve` — the mean over seeds of curves (validation loss), at the steps every seed evaluated.

Nothing here imports matplotlib: the drawing functions take the axes they draw on.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from .. import stats

__all__ = ["SEED_ALPHA", "SEED_LW", "mean_ci", "summarize", "n_text", "how_drawn", "pm", "dodge", "seeds_of", "finite",
           "seed_lines", "mean_errorbar", "mean_curve"]

#: How a single seed is drawn: thin and transparent.
SEED_ALPHA = 0.35
SEED_LW = 0.8


def finite(x: Any) -> bool:
    """A number that is not None, NaN or infinite."""
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def mean_ci(values: Sequence[float], level: float = 0.95) -> Tuple[float, float, int]:
    """``(mean, half-width of the Student-t interval, n)`` of the finite ``values``; half-width 0 with one value,
    ``(nan, 0, 0)`` with none."""
    vals = [float(v) for v in values if finite(v)]
    if not vals:
        return float("nan"), 0.0, 0
    iv = stats.mean_interval(vals, level)
    return iv.mean, (iv.half_width if iv.n > 1 else 0.0), iv.n


def summarize(df, keys: Sequence[str], value: str = "final_val_loss"):
    """One row per group of ``keys`` in ``df`` (sorted by the keys): ``mean``, ``half`` (95% half-width, 0 when
    n = 1), ``low``, ``high``, ``n`` (finite values), ``n_runs`` (runs in the group, diverged included),
    ``values`` and ``seeds`` (the finite values, by seed)."""
    import pandas as pd

    rows = []
    for k, g in df.groupby(list(keys), sort=True, dropna=False):
        k = k if isinstance(k, tuple) else (k,)
        g = g.sort_values("seed") if "seed" in g else g
        ok = [(int(s), float(v)) for s, v in zip(g["seed"] if "seed" in g else range(len(g)), g[value]) if finite(v)]
        m, h, n = mean_ci([v for _, v in ok])
        rows.append({**dict(zip(keys, k)), "mean": m, "half": h, "low": m - h, "high": m + h, "n": n,
                     "n_runs": len(g), "values": [v for _, v in ok], "seeds": [s for s, _ in ok]})
    cols = [*keys, "mean", "half", "low", "high", "n", "n_runs", "values", "seeds"]
    return pd.DataFrame(rows, columns=cols)


def n_text(ns: Iterable[int], unit: str = "seed", where: str = "") -> str:
    """``n = 3 seeds`` (one n), ``n = 1–3 seeds`` (several), ``n = 1 seed (no interval)``; ``where`` follows the
    unit (" per point")."""
    ns = sorted({int(n) for n in ns if n})
    if not ns:
        return f"n = 0 {unit}s{where}"
    if len(ns) == 1:
        return f"n = {ns[0]} {unit}{'s' if ns[0] != 1 else ''}{where}" + (" (no interval)" if ns[0] == 1 else "")
    return f"n = {ns[0]}–{ns[-1]} {unit}s{where}"


def how_drawn(key: str, what: str = "seed") -> str:
    """The footer line saying how seeds are drawn (for a scale with several seeds)."""
    return (f"[{key}] thin lines / small points: one {what} each; markers with error bars (or bands): the mean over "
            f"{what}s with its 95% Student-t interval (soap_lab.stats.mean_interval)")


def pm(mean: float, half: float, n: int, digits: int = 3) -> str:
    """``1.559 ± 0.012`` (n ≥ 2: the 95% half-width) or ``1.559`` (n = 1)."""
    if not finite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def dodge(x, i: int, k: int, width: float = 0.03):
    """``x`` moved by the ``i``-th of ``k`` offsets spread over ``width`` decades (log axis); x itself when k = 1."""
    import numpy as np

    if k <= 1:
        return np.asarray(x, float)
    return np.asarray(x, float) * 10 ** (width * (i - (k - 1) / 2))


def seeds_of(df) -> List[int]:
    """The sorted seeds of a run table (``[0]`` without a seed column)."""
    if "seed" not in df or not len(df):
        return [0]
    return sorted({int(s) for s in df["seed"].dropna()})


def seed_lines(ax, df, x: str, y: str, color, xfun=None, **kw) -> None:
    """One thin transparent line per seed of ``df`` (sorted by seed, then ``x``); ``xfun`` maps the x values."""
    for _, g in df.groupby("seed", sort=True):
        g = g[g[y].map(finite)].sort_values(x)
        if len(g):
            xs = g[x].astype(float).to_numpy()
            ax.plot(xfun(xs) if xfun else xs, g[y].astype(float), color=color, lw=SEED_LW, alpha=SEED_ALPHA, **kw)


def mean_errorbar(ax, xs, summary, color, label: Optional[str] = None, **kw):
    """The means of a :func:`summarize` table at ``xs`` with their 95% intervals as error bars (none where n = 1)."""
    return ax.errorbar(xs, summary["mean"].astype(float), yerr=summary["half"].astype(float), color=color, capsize=3,
                       label=label, **kw)


def mean_curve(curves, x: str = "step"):
    """The mean over seeds of val-loss curves at the steps every seed evaluated: rows ``step, x (its mean), mean,
    half, n`` from a frame with ``run_id``, ``step``, ``x`` and ``val_loss`` (one run per seed)."""
    import pandas as pd

    k, rows = curves["run_id"].nunique(), []
    for step, g in curves.groupby("step", sort=True):
        if g["run_id"].nunique() == k:
            m, h, n = mean_ci(g["val_loss"].astype(float).tolist())
            rows.append({"step": float(step), "x": float(g[x].astype(float).mean()), "mean": m, "half": h, "n": n})
    return pd.DataFrame(rows, columns=["step", "x", "mean", "half", "n"])
