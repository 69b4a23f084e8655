"""Preconditioning frequency (paper Fig. 1 right, Fig. 7 right): does SOAP degrade more slowly than Shampoo as f grows?

The claim is about the *rise* of each optimizer's final loss, ``rise(f) = loss(f) − loss(f₀)`` (f₀ the smallest f
of the arm), measured per seed (same seed: same init and data order at every f) and compared seed by seed:
rise_SOAP − rise_Shampoo < 0. Holm's correction over the frequencies of an arm says which verdicts survive
testing the family. The same runs give the figure's other claims: both beat AdamW at every f, they are close at
f₀, and SOAP's QR refresh is as good as a full eigh (Fig. 7 right).

Arms (per scale, ``PARAMS``): the main one (every f at the reference batch, AdamW beside it; at ``cpu_freq``
10 seeds, the eigh runs on 3); more tokens per step (batch × ``batch_multipliers`` at ``arm_frequencies``); a long
run (``long_steps`` at ``long_frequencies``, the paper's f = 100 refreshing ≥ 30 times).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

from .. import stats
from .base import Study, by_seed, finite, run_config, tuned_lr

CLOSE_MARGIN = 0.02
""""Close" and "as good as": |difference of final losses| below this (nats)."""

PARAMS = {
    "cpu_freq": dict(frequencies=(1, 3, 10, 30), seeds=tuple(range(10)), eigh_seeds=(0, 1, 2),
                     batch_multipliers=(4, 16), arm_frequencies=(1, 30), arm_seeds=(0, 1, 2), long_steps=3000,
                     long_frequencies=(2, 100), long_seeds=(0, 1)),
    "*": dict(frequencies=(1, 3, 10, 30, 100), seeds=None, eigh_seeds=None, batch_multipliers=(),
              arm_frequencies=(1, 30), arm_seeds=None, long_steps=None, long_frequencies=(2, 100), long_seeds=None),
}


def grid(scale, root=None) -> List[Any]:
    p = lambda k: scale.param(PARAMS, k)  # noqa: E731
    lr = {o: tuned_lr(o, scale, root) for o in ("adamw", "soap", "shampoo")}

    def arm(frequencies, seeds, adamw: bool, eigh_seeds=(), **fields):
        out = [run_config(scale, root, "adamw", lr["adamw"], seed=int(s), **fields) for s in seeds] if adamw else []
        for f in frequencies:
            for opt in ("shampoo", "soap"):
                out += [run_config(scale, root, opt, lr[opt], precondition_frequency=int(f), seed=int(s), **fields)
                        for s in seeds]
            out += [run_config(scale, root, "soap", lr["soap"], precondition_frequency=int(f), seed=int(s),
                               hparams={"refresh": "eigh"}, **fields) for s in eigh_seeds]
        return out

    seeds = p("seeds")  # the other arms' seeds default to the main arm's
    out = arm(p("frequencies"), seeds, True, p("eigh_seeds") or seeds)
    for m in p("batch_multipliers"):
        out += arm(p("arm_frequencies"), p("arm_seeds") or seeds, False, batch_size=scale.batch_size * int(m))
    if p("long_steps"):
        out += arm(p("long_frequencies"), p("long_seeds") or seeds, True, steps=int(p("long_steps")))
    return out


# ================================================================================================ tables
def _arms(df) -> List[Tuple[int, int]]:
    """(batch_size, steps) of each arm present, sorted."""
    return sorted({(int(b), int(s)) for b, s in zip(df["batch_size"], df["steps"])})


def _freqs(df, label: str) -> List[int]:
    return sorted({int(f) for f in df[(df["label"] == label) & df["f"].notna()]["f"]})


def _at(df, label: str, f=None) -> Dict[int, Any]:
    g = df[df["label"] == label]
    return by_seed(g if f is None else g[g["f"] == f])


def _where(bs: int, steps: int, f=None) -> str:
    return f"batch {bs}, {steps} steps" + (f", f = {f}" if f is not None else "")


def rise_rows(df) -> List[Dict[str, Any]]:
    """Per arm, optimizer and f > f₀: rise = loss(f) − loss(f₀) per seed; the verdict on "the loss rises" (> 0)."""
    rows = []
    for bs, steps in _arms(df):
        g = df[(df["batch_size"] == bs) & (df["steps"] == steps)]
        for label in ("SOAP", "Shampoo"):
            fs = _freqs(g, label)
            for f in fs[1:]:
                d = stats.paired_differences(_at(g, label, f), _at(g, label, fs[0]))
                if d:
                    rows.append(stats.claim(f"{label}'s loss rises from f = {fs[0]} to f = {f}", d, "greater",
                                            where=_where(bs, steps, f), batch_size=bs, steps=steps, f=f, f0=fs[0],
                                            optimizer=label))
    return rows


def claim_rows(df) -> List[Dict[str, Any]]:
    """The claims of Fig. 1 right and Fig. 7 right on the runs of ``df``, one row per (claim, arm, f)."""
    rows: List[Dict[str, Any]] = []
    for bs, steps in _arms(df):
        g = df[(df["batch_size"] == bs) & (df["steps"] == steps)]
        fs = sorted(set(_freqs(g, "SOAP")) & set(_freqs(g, "Shampoo")))
        family = []
        for f in fs[1:]:
            rise = {o: stats.paired_differences(_at(g, o, f), _at(g, o, fs[0])) for o in ("SOAP", "Shampoo")}
            d = stats.paired_differences(rise["SOAP"], rise["Shampoo"])
            if d:
                family.append(stats.claim("SOAP's rise with f is smaller than Shampoo's (rise_SOAP − rise_Shampoo < 0)",
                                          d, "less", where=_where(bs, steps, f), batch_size=bs, steps=steps, f=f,
                                          f0=fs[0], headline=(f == fs[-1] and bs == int(df["batch_size"].min()))))
        rows += stats.holm(family) if len(family) > 1 else family
        for label in ("SOAP", "Shampoo"):
            for f in _freqs(g, label):
                d = stats.paired_differences(_at(g, label, f), _at(g, "AdamW"))
                if d:
                    rows.append(stats.claim(f"{label} beats AdamW at every f ({label} − AdamW < 0)", d, "less",
                                            where=_where(bs, steps, f), batch_size=bs, steps=steps, f=f))
        if fs:
            d = stats.paired_differences(_at(g, "SOAP", fs[0]), _at(g, "Shampoo", fs[0]))
            if d:
                rows.append(stats.claim(f"SOAP and Shampoo close at the smallest f (abs(SOAP − Shampoo) < "
                                        f"{CLOSE_MARGIN})", d, "equal", CLOSE_MARGIN, where=_where(bs, steps, fs[0]),
                                        batch_size=bs, steps=steps, f=fs[0]))
        for f in _freqs(g, "SOAP (eigh)"):
            d = stats.paired_differences(_at(g, "SOAP", f), _at(g, "SOAP (eigh)", f))
            if d:
                rows.append(stats.claim(f"QR refresh as good as eigh (abs(SOAP QR − SOAP eigh) < {CLOSE_MARGIN})", d,
                                        "equal", CLOSE_MARGIN, where=_where(bs, steps, f), batch_size=bs, steps=steps,
                                        f=f))
    return rows


def summary(rows: List[Dict[str, Any]]) -> str:
    """The main arm's answer in words, from the claim rows."""
    from .report import says

    rise = [r for r in rows if r["claim"].startswith("SOAP's rise")]
    if not rise:
        return ""
    bs, st = min((r["batch_size"], r["steps"]) for r in rise)  # the main arm: the reference batch, the shortest run
    main = [r for r in rise if (r["batch_size"], r["steps"]) == (bs, st)]
    beat = [r for r in rows if "beats AdamW" in r["claim"] and (r["batch_size"], r["steps"]) == (bs, st)]
    text = (f"**In plain words.** At batch {bs} and {st} steps, the paper's claim that SOAP degrades more slowly than "
            f"Shampoo as f grows (rise_SOAP − rise_Shampoo < 0, rise = loss(f) − loss({main[0]['f0']}), paired by seed) "
            "reads: " + "; ".join(f"f = {r['f']}: {says(r)}" for r in main) + ". ")
    held = [r for r in main if "holm_verdict" in r]
    if held:
        changed = [f"f = {r['f']} ({r['verdict']} → {r['holm_verdict']})" for r in held
                   if r["holm_verdict"] != r["verdict"]]
        text += (f"Holm's correction over these {len(held)} frequencies changes "
                 + (", ".join(changed) if changed else "none of the verdicts") + ". ")
    if any(r["verdict"] == stats.CONTRADICTED for r in main):
        text += ("Where the interval lies above zero, SOAP's loss rises *more* with f than Shampoo's: the opposite "
                 "of the paper's Fig. 1 right at this size. ")
    if beat:
        text += (f"Both beat AdamW at every f (differences {min(r['mean'] for r in beat):+.3f} to "
                 f"{max(r['mean'] for r in beat):+.3f}, {sum(r['verdict'] == stats.REPRODUCED for r in beat)} of "
                 f"{len(beat)} reproduced).")
    return text


def _runs(scale, root):
    return STUDY.data(scale, root).runs


def claims(scale, root=None) -> List[Dict[str, Any]]:
    return claim_rows(_runs(scale, root))


def tables(scale, root=None) -> List[Tuple[str, str]]:
    from .report import markdown_rows

    return [("The rise of each optimizer's final loss with f (per seed, then mean and 95% CI)",
             markdown_rows(rise_rows(_runs(scale, root))))]


# ================================================================================================ figure
def draw(data: Mapping[str, Any], out, name: str = "frequency"):
    """One row per arm and scale: left, final loss vs f (each seed thin, the mean with its 95% interval; AdamW's
    mean named, drawn only where it does not flatten the axis); right, rise_SOAP − rise_Shampoo per seed with its
    mean, interval and verdict (and Holm's, where the arm tests several f)."""
    import matplotlib.pyplot as plt

    from ..figures import seeds as S
    from ..figures import style

    rows = [(k, sd, bs, st) for k, sd in data.items() if sd is not None and len(sd.runs)
            for bs, st in _arms(sd.runs)]
    if not rows:
        raise style.MissingResults(f"{name}: no stored runs: run `{style.missing_hint(next(iter(data)), 'frequency')}`")
    with style.style():
        fig, axes = plt.subplots(len(rows), 2, figsize=(10.6, 3.9 * len(rows)), squeeze=False)
        lines: List[str] = []
        for (key, sd, bs, steps), (ax, bx) in zip(rows, axes):
            g = sd.runs[(sd.runs["batch_size"] == bs) & (sd.runs["steps"] == steps)]
            pre = g[g["f"].notna()].copy()
            pre["f"] = pre["f"].astype(int)
            labels = [lb for lb in ("Shampoo", "SOAP", "SOAP (eigh)") if (pre["label"] == lb).any()]
            ns: List[int] = []
            for i, label in enumerate(labels):
                o, c = pre[pre["label"] == label], style.color(label)
                dx = lambda x, i=i: S.dodge(x, i, len(labels), 0.015)  # noqa: E731
                if len(S.seeds_of(o)) > 1:
                    S.seed_lines(ax, o, "f", "final_val_loss", c, xfun=dx)
                summ = S.summarize(o, ["f"])
                ok = summ[summ["n"] > 0]
                ns += list(ok["n"])
                S.mean_errorbar(ax, dx(ok["f"]), ok, c, marker=style.MARKERS.get(label, "o"), ms=5, lw=1.5,
                                label=f"{label}{' (QR)' if label == 'SOAP' else ''}: mean ± 95% CI")
            adam = g[(g["label"] == "AdamW") & g["final_val_loss"].map(finite)]
            if len(adam):
                m, h, n = S.mean_ci(adam["final_val_loss"].astype(float).tolist())
                lo, hi = ax.get_ylim()
                text = f"AdamW (tuned) {S.pm(m, h, n)}, n = {n}"
                if m - h < hi + 0.5 * (hi - lo):  # close enough to draw without flattening the rises
                    ax.axhline(m, color=style.color("AdamW"), ls="--", label=text)
                    if h:
                        ax.axhspan(m - h, m + h, color=style.color("AdamW"), alpha=0.12, lw=0)
                else:
                    ax.plot([], [], color=style.color("AdamW"), ls="--", label=text + " (far above: not drawn)")
            fs = sorted(pre["f"].unique())
            style.log_axis(ax, fs, [f"{f}\n{max(steps - 1, 0) // f}" for f in fs])
            ax.set_xlabel("precondition frequency f  (second line: SOAP basis refreshes in the run)")
            ax.set_ylabel("final validation loss")
            ax.set_title(f"Final loss vs f [{key}, batch {bs}, {steps} steps]\n{S.n_text(ns, where=' per point')}")
            ax.legend(fontsize=6.5)
            diff = [r for r in claim_rows(g) if r["claim"].startswith("SOAP's rise")]
            for i, r in enumerate(diff):
                bx.scatter([r["f"]] * len(r["values"]), r["values"], color="0.45", s=12, zorder=3,
                           label="one seed" if i == 0 else None)
                err = (r["high"] - r["mean"]) if r["n"] > 1 else 0.0
                bx.errorbar([r["f"]], [r["mean"]], yerr=[err], color="k", marker="o", capsize=4, zorder=4,
                            label="mean ± 95% CI" if i == 0 else None)
                holm = f"\nHolm: {r['holm_verdict']}" if "holm_verdict" in r else ""
                bx.annotate(f"n={r['n']}\n{r['verdict']}{holm}", (r["f"], r["mean"]), textcoords="offset points",
                            xytext=(6, 4), fontsize=6)
                lines.append(f"[{key} batch {bs}, {steps} steps] f = {r['f']}: rise_SOAP − rise_Shampoo = "
                             f"{stats.format_interval(stats.Interval(r['mean'], r['low'], r['high'], r['n']))}: "
                             f"{r['verdict']}" + (f" (Holm over {len(diff)} f: {r['holm_verdict']})" if holm else ""))
            bx.axhline(0.0, color="0.3", lw=0.8)
            bx.set_xscale("log")
            if diff:
                style.log_axis(bx, [r["f"] for r in diff])
                bx.legend(fontsize=6.5, loc="best")
                bx.margins(x=0.25)
            f0 = diff[0]["f0"] if diff else "f₀"
            bx.set_title(f"Difference of rises, SOAP − Shampoo [{key}, batch {bs}]\n"
                         f"rise = loss(f) − loss({f0}), same seed")
            bx.set_xlabel("precondition frequency f")
            bx.set_ylabel("difference of rises (< 0: SOAP degrades less)")
            lines.append(sd.caption())
        lines.append("Seeds are paired: the same seed gives the same init and data order at every f and for every "
                     "optimizer. Thin lines / grey points: one seed each; intervals: Student t over seeds. Shampoo "
                     "recomputes its roots steps//f times from step f.")
        notes = [f"scale {k}: no results (run `{style.missing_hint(k, 'frequency')}`)" for k, v in data.items()
                 if v is None or not len(v.runs)]
        style.footer(fig, lines + notes)
        return style.save(fig, out, name)


STUDY = Study(
    name="frequency", order=20, paper="Fig. 1 right, Fig. 7 right",
    question="Does SOAP degrade more slowly than Shampoo as the preconditioning frequency f grows?",
    params=PARAMS, grid=grid, claims=claims, tables=tables, summary=summary, figures={"frequency": draw})
