"""The frequency claim across widths (paper Fig. 1 right, tested as the model widens): does SOAP's smaller
degradation with f appear as d_model grows?

At the seeded CPU scale the claim is inconclusive (the frequency study). The paper's effect is reported at
360M–660M parameters; Khona et al. 2026 (arXiv 2607.20548) see stale bases hurt more at scale. This study keeps
everything of ``cpu_freq`` but the width: the same GPT at each preset of ``presets`` (2 layers, heads of 32), its
learning rates re-tuned per width at f = ``base_frequency`` over ``lrs`` on the tuning seeds and checked on
``check_seeds``; SOAP and Shampoo at ``frequencies`` and AdamW, ``n_seeds`` seeds per width. The scale's own preset
is the frequency study's runs (its lr sweep and seeds). On a GPU scale the same grid runs at GPU widths.

Claims, paired by seed: at each width rise_SOAP − rise_Shampoo at the largest f < 0 (rise = loss(f) − loss(f₀));
and the trend across widths: each seed's least-squares slope of that difference on log2(width) (seeds present at
every width with at least ``MIN_TREND_SEEDS`` seeds), its mean and interval: < 0 means the paper's ordering
appears as the model widens.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping

from .. import stats
from ..train.models import PRESETS
from .base import MissingResults, Study, best_lr, by_seed, run_config, tuned_lr

PARAMS = {"cpu_freq": dict(presets=("mini", "2L-d128", "2L-d256"), n_seeds={"2L-d128": 5, "2L-d256": 3},
                           width_lrs=(3e-3, 1e-2, 3e-2), check_seeds=(1, 2), frequencies=(1, 30)),
          "*": dict(presets=(), n_seeds={}, width_lrs=(3e-3, 1e-2, 3e-2), check_seeds=(), frequencies=(1, 30))}
OPTIMIZERS = ("adamw", "soap", "shampoo")
#: The seeds a width needs before it joins the trend across widths (the issue's minimum per width).
MIN_TREND_SEEDS = 3


def width(preset: str) -> int:
    return int(PRESETS[preset]["d_model"])


def _p(scale, key):
    v = scale.param(PARAMS, key)
    return dict(v) if key == "n_seeds" else v


def sweep(scale, root, preset: str, seeds=None) -> List[Any]:
    """The lr sweep at ``preset``: each optimizer over ``width_lrs`` at f = base_frequency."""
    return [run_config(scale, root, o, lr, seed=int(s), preset=preset) for o in OPTIMIZERS
            for lr in _p(scale, "width_lrs") for s in (scale.lr_seeds if seeds is None else seeds)]


def lr_at(scale, root, preset: str, optimizer: str) -> float:
    """The tuned lr of ``optimizer`` at ``preset`` (the scale's own preset: the lr sweep study's)."""
    if preset == scale.preset:
        return tuned_lr(optimizer, scale, root)
    return best_lr([c for c in sweep(scale, root, preset) if c.optimizer == optimizer],
                   f"{optimizer} at {preset}", f"python -m soap_lab study run width --scale {scale.registered_name}")


def seeds_at(scale, preset: str) -> List[int]:
    if preset == scale.preset:
        from .frequency import PARAMS as FREQ

        return list(scale.param(FREQ, "seeds"))
    return list(range(int(_p(scale, "n_seeds").get(preset, len(scale.seeds)))))


def grid(scale, root=None) -> List[Any]:
    """Per width: its lr sweep (and the check on other seeds), then, once the sweep is stored, the runs at the tuned
    lrs (``registry.train`` asks again after each round, so one command trains both)."""
    out = []
    for preset in _p(scale, "presets"):
        if preset != scale.preset:
            out += sweep(scale, root, preset) + sweep(scale, root, preset, _p(scale, "check_seeds"))
        try:
            lr = {o: lr_at(scale, root, preset, o) for o in OPTIMIZERS}
        except MissingResults:
            if preset == scale.preset:
                raise
            continue
        for s in seeds_at(scale, preset):
            out.append(run_config(scale, root, "adamw", lr["adamw"], seed=s, preset=preset))
            out += [run_config(scale, root, o, lr[o], seed=s, preset=preset, precondition_frequency=int(f))
                    for f in _p(scale, "frequencies") for o in ("soap", "shampoo")]
    return out


def differences(df, f0: int, f1: int) -> Dict[int, float]:
    """``{seed: rise_SOAP − rise_Shampoo}`` from f0 to f1 on the runs of one width."""
    def rise(label):
        g = df[df["label"] == label]
        return stats.paired_differences(by_seed(g[g["f"] == f1]), by_seed(g[g["f"] == f0]))

    return stats.paired_differences(rise("SOAP"), rise("Shampoo"))


def _full(scale, df, preset):
    return df[(df["preset"] == preset) & (df["steps"] == scale.steps) & (df["batch_size"] == scale.batch_size)
              & (df["budget_fraction"] == 1.0)]


def claims(scale, root=None) -> List[Dict[str, Any]]:
    df = STUDY.data(scale, root).runs
    if not len(df):
        return []
    f0, f1 = min(_p(scale, "frequencies")), max(_p(scale, "frequencies"))
    per: Dict[str, Dict[int, float]] = {}
    rows = []
    for preset in _p(scale, "presets"):
        d = differences(_full(scale, df, preset), f0, f1)
        if d:
            per[preset] = d
            rows.append(stats.claim("SOAP's rise with f is smaller than Shampoo's (rise_SOAP − rise_Shampoo < 0)", d,
                                    "less", where=f"d_model {width(preset)}, f = {f0} → {f1}", preset=preset))
        if preset != scale.preset:
            g = df[(df["preset"] == preset) & (df["f"].isna() | (df["f"] == scale.base_frequency))]
            for o in OPTIMIZERS:
                try:
                    lr = lr_at(scale, root, preset, o)
                except MissingResults:  # the sweep is not finished at this width: no check yet
                    continue
                mine = g[g["optimizer"] == o]
                for other in _p(scale, "width_lrs"):
                    if other != lr:
                        dd = stats.paired_differences(by_seed(mine[mine["lr"] == other]), by_seed(mine[mine["lr"] == lr]))
                        if len(dd) > 1:
                            rows.append(stats.claim(f"{o} at d_model {width(preset)}: the tuned lr {lr:g} beats lr "
                                                    f"{other:g} (loss(lr) − loss(tuned) > 0)", dd, "greater",
                                                    where=f"{o} lr {other:g}, d_model {width(preset)}"))
    presets = sorted((p for p in per if len(per[p]) >= MIN_TREND_SEEDS), key=width)
    if len(presets) > 1:  # a width joins the trend once it has MIN_TREND_SEEDS seeds (a width still training waits)
        common = sorted(set.intersection(*(set(per[p]) for p in presets)))
        if len(common) > 1:
            iv = stats.slope([math.log2(width(p)) for p in presets], {s: [per[p][s] for p in presets] for s in common})
            row = stats.claim("the difference of rises falls as the model widens (slope on log2 d_model < 0)",
                              dict(zip(common, iv.values)), "less", unit="slope", headline=True,
                              where=f"d_model {', '.join(str(width(p)) for p in presets)}, f = {f0} → {f1}")
            rows.append(row)
    return rows


def summary(rows: List[Dict[str, Any]]) -> str:
    from .report import says

    per = [r for r in rows if r["claim"].startswith("SOAP's rise")]
    trend = [r for r in rows if r["claim"].startswith("the difference of rises falls")]
    if not per:
        return ""
    text = ("**In plain words.** The paper's Fig. 1 right at each width, rise_SOAP − rise_Shampoo (< 0: SOAP degrades "
            "less): " + "; ".join(f"{r['where']}: {says(r)}" for r in per) + ". ")
    if trend:
        text += (f"Per doubling of d_model that difference changes by {says(trend[0])} (each seed's slope on log2 "
                 "d_model, seeds present at every width): a negative slope would mean the paper's ordering appears "
                 "as the model widens.")
    return text


def draw(data: Mapping[str, Any], out, name: str = "width"):
    """Left: rise_SOAP − rise_Shampoo at the largest f against d_model (each seed a point, seeds present at every
    width joined, the mean with its interval). Right: final losses against d_model (SOAP and Shampoo at each f,
    AdamW), the mean with its interval."""
    import matplotlib.pyplot as plt

    from ..figures import seeds as S
    from ..figures import style

    key, sd = next(((k, v) for k, v in data.items() if v is not None and len(v.runs)), (None, None))
    if sd is None:
        raise style.MissingResults(f"{name}: no stored runs: run `{style.missing_hint(next(iter(data)), 'width')}`")
    sc, df = sd.scale, sd.runs
    fs = _p(sc, "frequencies")
    presets = [p for p in sorted(_p(sc, "presets"), key=width) if len(_full(sc, df, p))]
    ws = [width(p) for p in presets]
    with style.style():
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.8, 4.2))
        per = {p: differences(_full(sc, df, p), min(fs), max(fs)) for p in presets}
        for s in sorted(set().union(*(set(v) for v in per.values())) if per else []):
            pts = [(width(p), per[p][s]) for p in presets if s in per[p]]
            ax.plot(*zip(*pts), color="0.6", lw=0.6, alpha=0.6, marker=".", ms=4)
        stat = [S.mean_ci(list(per[p].values())) for p in presets]
        ax.errorbar(ws, [m for m, _, _ in stat], yerr=[h for _, h, _ in stat], color="k", marker="o", capsize=4,
                    label="mean ± 95% CI")
        for w, (m, _, n) in zip(ws, stat):
            ax.annotate(f"n={n}", (w, m), textcoords="offset points", xytext=(6, 4), fontsize=6.5)
        ax.axhline(0, color="0.3", lw=0.8)
        style.log_axis(ax, ws, base=2)
        ax.set_xlabel("d_model (2 layers, heads of 32)")
        ax.set_ylabel(f"rise_SOAP − rise_Shampoo, f = {min(fs)} → {max(fs)}\n(< 0: SOAP degrades less)")
        ax.set_title(f"The frequency claim across widths [{key}]\nthin: one seed each; joined: the same seed")
        ax.legend(fontsize=6.5)
        for lab, f in [("AdamW", None)] + [(o, f) for o in ("SOAP", "Shampoo") for f in fs]:
            stat = []
            for p in presets:
                g = _full(sc, df, p)
                g = g[(g["label"] == lab) & (g["f"].isna() if f is None else g["f"] == f)]
                try:  # the tuned lr's runs only (the sweep's other lrs share steps and batch)
                    g = g[g["lr"] == lr_at(sc, sd.root, p, lab.lower())]
                except MissingResults:
                    g = g.iloc[:0]
                stat.append(S.mean_ci(g["final_val_loss"].astype(float).tolist()))
            bx.errorbar(ws, [m for m, _, _ in stat], yerr=[h for _, h, _ in stat], color=style.color(lab), capsize=3,
                        marker="o" if f == min(fs) else "s", ls="-" if f != max(fs) else "--", lw=1.2,
                        label=lab + (f" f={f}" if f else ""))
        style.log_axis(bx, ws, base=2)
        bx.set_xlabel("d_model")
        bx.set_ylabel("final validation loss")
        bx.set_title(f"Final loss against width [{key}]\n{S.n_text([len(v) for v in per.values()], where=' per width')}")
        bx.legend(fontsize=6.5)
        lines = [sd.caption()] + [f"{r['claim']} [{r['where']}]: {r['mean']:+.4f} (95% CI [{r['low']:+.4f}, "
                                  f"{r['high']:+.4f}], n = {r['n']}): {r['verdict']}"
                                  for r in claims(sc, sd.root) if "tuned lr" not in r["claim"]]
        style.footer(fig, lines)
        return style.save(fig, out, name)


STUDY = Study(name="width", order=25, paper="Fig. 1 right, across widths (not in the paper)",
              question="Does SOAP's smaller degradation with f appear as the model widens?",
              params=PARAMS, grid=grid, claims=claims, summary=summary, figures={"width": draw})
