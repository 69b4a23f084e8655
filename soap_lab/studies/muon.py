"""SOAP against Muon (not in the paper, which predates Muon): at this size, which reaches the lower loss, in how
many steps, and at what cost per step?

Muon is what many users pick today (``torch.optim.Muon`` on the 2-D hidden matrices, AdamW on embeddings, head and
1-D parameters: the split of the modded-nanogpt records; :mod:`soap_lab.optim.muon`). Frans et al. 2025
(arXiv 2510.25000) and Khona et al. 2026 (arXiv 2607.20548) compare the two at scale, without seeds.

Protocol: Muon's lr is tuned over ``lrs`` on the tuning seeds (its AdamW part at AdamW's tuned lr, β1 = 0.95 as
Muon's momentum), then checked on ``check_seeds``; it runs on every seed of ``seeds``, paired with the frequency
study's SOAP (f = 1 and 10) and AdamW runs. Claims, paired by seed: SOAP − Muon final loss at equal steps (< 0);
the steps SOAP needs to reach Muon's loss (the efficiency protocol: SOAP's budget fractions fitted per seed,
:mod:`soap_lab.studies.efficiency`, > 0 saved); the time per training step of SOAP (f = 10) over Muon's, per round
of the side-by-side timing study (:mod:`soap_lab.studies.overhead`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

from .. import stats
from . import efficiency as E
from .base import MissingResults, Study, best_lr, by_seed, run_config, tuned_lr
from .overhead import load_timing, time_ratios

PARAMS = {"cpu_freq": dict(muon_lrs=(0.01, 0.03, 0.1), seeds=tuple(range(10)), check_seeds=(1, 2), frequencies=(1, 10)),
          "*": dict(muon_lrs=(0.01, 0.03, 0.1), seeds=None, check_seeds=(), frequencies=(1, 10))}


def _muon(scale, root, lr: float, seed: int):
    return run_config(scale, root, "muon", lr, seed=int(seed), hparams={"adamw_lr": tuned_lr("adamw", scale, root)})


def sweep(scale, root=None, seeds=None) -> List[Any]:
    """Muon over its lr grid on ``seeds`` (default the tuning seeds)."""
    return [_muon(scale, root, lr, s) for lr in scale.param(PARAMS, "muon_lrs")
            for s in (scale.lr_seeds if seeds is None else seeds)]


def tuned(scale, root=None) -> float:
    return best_lr(sweep(scale, root), f"muon at scale {scale.name!r}",
                   f"python -m soap_lab study run muon --scale {scale.registered_name}")


def grid(scale, root=None) -> List[Any]:
    """Muon's lr sweep and its check, then (once the sweep is stored: ``registry.train`` asks again) Muon at the
    tuned lr on every seed, beside the runs of SOAP and AdamW it is compared with."""
    p = lambda k: scale.param(PARAMS, k)  # noqa: E731
    out = sweep(scale, root) + sweep(scale, root, p("check_seeds"))
    try:
        out += [_muon(scale, root, tuned(scale, root), s) for s in p("seeds")]
    except MissingResults:
        return out
    lr = {o: tuned_lr(o, scale, root) for o in ("adamw", "soap")}
    out += [run_config(scale, root, "adamw", lr["adamw"], seed=int(s)) for s in p("seeds")]
    out += [run_config(scale, root, "soap", lr["soap"], precondition_frequency=int(f), seed=int(s))
            for f in p("frequencies") for s in p("seeds")]
    out += [c for c in E.STUDY.configs(scale, root) if c.optimizer == "soap"]  # SOAP's budgets: the steps claim
    return out


def claims(scale, root=None) -> List[Dict[str, Any]]:
    df = STUDY.data(scale, root).runs
    if not len(df):
        return []
    try:
        lr = tuned(scale, root)
    except MissingResults:
        return []
    full = df[(df["budget_fraction"] == 1.0) & (df["batch_size"] == scale.batch_size)]
    muon = by_seed(full[(full["label"] == "Muon") & (full["lr"] == lr)])
    rows = []
    for f in scale.param(PARAMS, "frequencies"):
        d = stats.paired_differences(by_seed(full[(full["label"] == "SOAP") & (full["f"] == f)]), muon)
        if d:
            rows.append(stats.claim("SOAP beats Muon at equal steps (SOAP − Muon < 0)", d, "less", where=f"f = {f}",
                                    f=int(f), headline=int(f) == scale.base_frequency))
    d = stats.paired_differences(muon, by_seed(full[full["label"] == "AdamW"]))
    if d:
        rows.append(stats.claim("Muon beats AdamW (Muon − AdamW < 0)", d, "less", where=f"Muon lr {lr:g}"))
    ref = df[df["batch_size"] == scale.batch_size]
    solves = E.solve_seeds(ref[(ref["label"] != "Muon") | (ref["lr"] == lr)], scale.base_frequency, "Muon")
    if solves:
        rows.append(E.saving_row("SOAP needs fewer steps than Muon (saved > 0)", solves, 0.0,
                                 where=f"steps vs Muon, f = {scale.base_frequency}", baseline="Muon"))
    ratios = time_ratios(load_timing(scale), scale.base_frequency, "Muon")
    if len(ratios) > 1:
        rows.append(stats.claim("SOAP's training step takes longer than Muon's (time ratio − 1 > 0)",
                                {r: v - 1 for r, v in enumerate(ratios)}, "greater", unit="ratio",
                                where=f"f = {scale.base_frequency}, timing rounds"))
    for other in scale.param(PARAMS, "muon_lrs"):
        if other != lr:
            d = stats.paired_differences(by_seed(df[(df["label"] == "Muon") & (df["lr"] == other)]),
                                         by_seed(df[(df["label"] == "Muon") & (df["lr"] == lr)]))
            if len(d) > 1:
                rows.append(stats.claim(f"muon: the tuned lr {lr:g} beats lr {other:g} (loss(lr) − loss(tuned) > 0)",
                                        d, "greater", where=f"muon lr {other:g}"))
    return rows


def summary(rows: List[Dict[str, Any]]) -> str:
    from .report import says

    out = [f"{r['claim'].split(' (')[0]} [{r['where']}]: {says(r)}" for r in rows if not r["claim"].startswith("muon:")]
    return ("**In plain words.** SOAP against Muon at this size, paired by seed: " + "; ".join(out) + ".") if out else ""


def draw(data: Mapping[str, Any], out, name: str = "muon"):
    """Left: final loss of AdamW, Muon and SOAP (f = 1, 10) per seed, each seed's runs joined, the means with their
    intervals. Right: SOAP's final loss at its budget fractions against Muon's (the steps claim's fit, per seed)."""
    import matplotlib.pyplot as plt

    from ..figures import seeds as S
    from ..figures import style

    key, sd = next(((k, v) for k, v in data.items() if v is not None and len(v.runs)), (None, None))
    if sd is None:
        raise style.MissingResults(f"{name}: no stored runs: run `{style.missing_hint(next(iter(data)), 'muon')}`")
    sc, df = sd.scale, sd.runs
    lr = tuned(sc, sd.root)
    full = df[(df["budget_fraction"] == 1.0) & (df["batch_size"] == sc.batch_size)]
    arms = [("AdamW", full[full["label"] == "AdamW"]), ("Muon", full[(full["label"] == "Muon") & (full["lr"] == lr)])]
    arms += [(f"SOAP f={f}", full[(full["label"] == "SOAP") & (full["f"] == f)]) for f in sc.param(PARAMS, "frequencies")]
    with style.style():
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.8, 4.2))
        by = {lab: dict(zip(g["seed"].astype(int), g["final_val_loss"].astype(float))) for lab, g in arms}
        for s in sorted(set.intersection(*(set(v) for v in by.values())) if by else []):
            ax.plot(range(len(arms)), [by[lab][s] for lab, _ in arms], color="0.6", lw=0.6, alpha=0.6)
        for i, (lab, g) in enumerate(arms):
            m, h, n = S.mean_ci(g["final_val_loss"].astype(float).tolist())
            ax.errorbar([i], [m], yerr=[h], color=style.color(lab.split(" ")[0]), marker="o", capsize=4, lw=1.6,
                        label=f"{lab}: {S.pm(m, h, n)} (n = {n})")
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([lab for lab, _ in arms])
        ax.set_ylabel("final validation loss")
        ax.set_title(f"SOAP against Muon [{key}]\nthin lines: one seed each (same init and data order)")
        ax.legend(fontsize=6.5)
        soap = df[(df["label"] == "SOAP") & (df["f"] == sc.base_frequency) & (df["batch_size"] == sc.batch_size)]
        summ = S.summarize(soap, ["steps_total"])
        S.seed_lines(bx, soap, "steps_total", "final_val_loss", style.color("SOAP"))
        S.mean_errorbar(bx, summ["steps_total"].astype(float), summ, style.color("SOAP"), marker="o",
                        label=f"SOAP f={sc.base_frequency} at its budget fractions")
        m, h, n = S.mean_ci(arms[1][1]["final_val_loss"].astype(float).tolist())
        bx.axhline(m, color=style.color("Muon"), ls="--", label=f"Muon at the full budget {S.pm(m, h, n)}")
        if h:
            bx.axhspan(m - h, m + h, color=style.color("Muon"), alpha=0.15, lw=0)
        bx.set_xlabel("steps N (each budget with its own schedule)")
        bx.set_ylabel("final validation loss")
        bx.set_title(f"Steps SOAP needs to reach Muon's loss [{key}]\n"
                     f"{S.n_text(summ['n'], where=' per budget')}")
        bx.legend(fontsize=6.5)
        lines = [sd.caption()] + [f"{r['claim']} [{r.get('where', '')}]: {r['mean']:+.3f} "
                                  f"(95% CI [{r['low']:+.3f}, {r['high']:+.3f}], n = {r['n']}): {r['verdict']}"
                                  for r in claims(sc, sd.root) if not r["claim"].startswith("muon:")]
        style.footer(fig, lines)
        return style.save(fig, out, name)


STUDY = Study(name="muon", order=80, paper="not in the paper (Muon: Jordan et al. 2024; torch.optim.Muon)",
              question="SOAP against Muon at this size: lower loss, fewer steps, at what cost per step?",
              params=PARAMS, grid=grid, claims=claims, summary=summary, figures={"muon": draw})
