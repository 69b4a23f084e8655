"""Refresh on demand (not in the paper): does an adaptive refresh reach fixed f's loss with fewer refreshes?

The refresh is SOAP's main cost and f the paper's central knob. A fixed f refreshes bases that are still good
and leaves stale ones that have turned; Purifying Shampoo (Eschenhagen et al. 2025, arXiv 2506.03595) refreshes
a Kronecker factor only where its relative off-diagonal mass in the current basis exceeds τ
(``refresh_policy="adaptive"``, :mod:`soap_lab.optim.refresh`; f is then the check interval). Khona et al. 2026
(arXiv 2607.20548) report loss spikes from bases ≈ 10 steps stale at scale.

Grid (per scale, ``PARAMS``): SOAP and Shampoo at fixed f (the frequency study's runs, and f = 100), and adaptive
with check intervals ``intervals`` at tolerances ``tolerances``; adaptive with τ = 0 at every check interval and at
f = ``staleness_f``: bit for bit the fixed run, with every factor's staleness logged (the staleness figure), and
trained on the same commit and machine as the adaptive runs. The same config rerun on another CPU or commit moves
its final loss by up to ≈ 0.008 here (round-off amplified over 1000 steps; measured on the f = 10 runs), so every
comparison uses, at each f, the τ = 0 run as the fixed one where it is stored.

Claims, paired by seed:
- "adaptive reaches the loss of fixed f with fewer refreshes": the refreshes per factor each seed's fixed-f curve
  needs to reach the adaptive run's loss (the curve made monotone, then interpolated on log refreshes) minus the
  adaptive run's own; > 0. A loss outside the fixed curve's range is not solved (the seed is left out, said so);
- "SOAP tolerates a staler basis than Shampoo": log10 of the τ at which each loses 0.01 against its own fixed
  f = 1 run (interpolated on log τ at check interval 1; clamped to the grid's ends, said so), SOAP − Shampoo > 0.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import stats
from .base import Study, finite, run_config, tuned_lr

LOSS_TOLERATED = 0.01
"""How much final loss a stale basis may cost before it counts as too stale (nats)."""

PARAMS = {"cpu_freq": dict(fixed=(1, 3, 10, 30, 100), intervals=(1, 10), tolerances=(0.01, 0.03, 0.1, 0.3),
                           staleness_f=10, seeds=(0, 1, 2)),
          "*": dict(fixed=(1, 3, 10, 30, 100), intervals=(1, 10), tolerances=(0.01, 0.03, 0.1, 0.3),
                    staleness_f=10, seeds=None)}
OPTIMIZERS = ("soap", "shampoo")


def adaptive(tolerance: float) -> Dict[str, Any]:
    return {"refresh_policy": "adaptive", "refresh_tolerance": float(tolerance)}


def grid(scale, root=None) -> List[Any]:
    p = lambda k: scale.param(PARAMS, k)  # noqa: E731
    out = []
    for opt in OPTIMIZERS:
        lr = tuned_lr(opt, scale, root)
        for s in p("seeds"):
            out += [run_config(scale, root, opt, lr, precondition_frequency=int(f), seed=int(s)) for f in p("fixed")]
            out += [run_config(scale, root, opt, lr, precondition_frequency=int(f), seed=int(s), hparams=adaptive(t))
                    for f in p("intervals") for t in p("tolerances")]
            out += [run_config(scale, root, opt, lr, precondition_frequency=int(f), seed=int(s), hparams=adaptive(0.0))
                    for f in sorted({*p("intervals"), int(p("staleness_f"))})]
    return out


# ================================================================================================ tables
def refreshes(row: Mapping[str, Any]) -> float:
    """Refreshes per preconditioned factor in a run (the first basis not counted): the record's count where it
    has one, else the fixed schedule's: SOAP (steps − 1) // f, Shampoo (first basis at step f) steps // f − 1."""
    r = row.get("refresh")
    if isinstance(r, dict) and finite(r.get("refreshes_per_factor")):
        return float(r["refreshes_per_factor"])
    f, steps = int(row["f"]), int(row["steps_done"])
    return float((steps - 1) // f if row["optimizer"] != "shampoo" else steps // f - 1)


def frame(scale, root=None):
    """One row per stored run: optimizer, policy, f, τ, seed, refreshes per factor, final loss."""
    df = STUDY.data(scale, root).runs.copy()
    if not len(df):
        return df
    pol = df["hparams.refresh_policy"] if "hparams.refresh_policy" in df else None
    df["policy"] = pol.fillna("fixed") if pol is not None else "fixed"
    df["tau"] = df["hparams.refresh_tolerance"] if "hparams.refresh_tolerance" in df else float("nan")
    df["refreshes"] = [refreshes(r) for r in df.to_dict("records")]
    return df


def _monotone(xs: Sequence[float], ys: Sequence[float]) -> List[float]:
    """Pool-adjacent-violators: the non-increasing fit of ``ys`` (losses) over increasing ``xs``."""
    blocks: List[List[float]] = []
    for y in ys:
        blocks.append([y, 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            (a, na), (b, nb) = blocks[-2], blocks[-1]
            blocks[-2:] = [[(a * na + b * nb) / (na + nb), na + nb]]
    return [v for v, n in blocks for _ in range(int(n))]


def refreshes_needed(fixed: Sequence[Tuple[float, float]], loss: float) -> Optional[float]:
    """The refreshes per factor a fixed-f curve ``[(refreshes, loss)]`` needs to reach ``loss`` (linear in log
    refreshes between the points of its monotone fit); None outside the curve's range."""
    pts = sorted((r, l) for r, l in fixed if r > 0 and finite(l))
    if len(pts) < 2:
        return None
    xs = [math.log10(r) for r, _ in pts]
    ys = _monotone(xs, [l for _, l in pts])
    if not ys[-1] <= loss <= ys[0]:
        return None
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y1 <= loss <= y0:
            return 10 ** (x0 if y0 == y1 else x0 + (y0 - loss) / (y0 - y1) * (x1 - x0))
    return None


def fixed_runs(df, opt: str):
    """``opt``'s fixed-f runs, each replaced by the τ = 0 adaptive run at the same f and seed where one is stored
    (the same trajectory, computed on the adaptive runs' commit and machine; module docstring)."""
    fixed = df[(df["optimizer"] == opt) & (df["policy"] == "fixed")]
    same = df[(df["optimizer"] == opt) & (df["policy"] == "adaptive") & (df["tau"] == 0)]
    keys = set(zip(same["f"], same["seed"]))
    import pandas as pd

    return pd.concat([fixed[[k not in keys for k in zip(fixed["f"], fixed["seed"])]], same], ignore_index=True)


def _saving_rows(df, opt: str, interval: int, tau: float) -> Optional[Dict[str, Any]]:
    fixed = fixed_runs(df, opt)
    ada = df[(df["optimizer"] == opt) & (df["policy"] == "adaptive") & (df["f"] == interval) & (df["tau"] == tau)]
    saved, unsolved = {}, []
    for _, r in ada.iterrows():
        curve = [(x["refreshes"], x["final_val_loss"]) for _, x in fixed[fixed["seed"] == r["seed"]].iterrows()]
        need = refreshes_needed(curve, float(r["final_val_loss"])) if finite(r["final_val_loss"]) else None
        if need is None:
            unsolved.append(int(r["seed"]))
        else:
            saved[int(r["seed"])] = need - float(r["refreshes"])
    if not saved:
        return None
    where = f"{opt}, check every {interval}, τ = {tau:g}" + (f" (seeds {unsolved} outside the fixed curve)" if unsolved else "")
    return stats.claim("adaptive reaches fixed f's loss with fewer refreshes (refreshes saved per factor > 0)",
                       saved, "greater", where=where, unit="refreshes", optimizer=opt, interval=interval, tau=tau)


def _cost_row(df, opt: str, interval: int, tau: float) -> Optional[Dict[str, Any]]:
    """Adaptive at check interval f against fixed f itself, paired by seed: its loss costs less than
    :data:`LOSS_TOLERATED` (loss_adaptive − loss_fixed < 0.01), with the share of fixed's refreshes it made."""
    fixed = fixed_runs(df, opt)
    fixed = fixed[fixed["f"] == interval]
    ada = df[(df["optimizer"] == opt) & (df["policy"] == "adaptive") & (df["f"] == interval) & (df["tau"] == tau)]
    by = lambda g, col: {int(s): float(v) for s, v in zip(g["seed"], g[col]) if finite(v)}  # noqa: E731
    d = stats.paired_differences(by(ada, "final_val_loss"), by(fixed, "final_val_loss"))
    if not d:
        return None
    share = sum(by(ada, "refreshes").values()) / max(sum(by(fixed, "refreshes").values()), 1e-9)
    return stats.claim(f"adaptive costs less than {LOSS_TOLERATED} of loss against fixed f at the same interval "
                       f"(loss_adaptive − loss_fixed < {LOSS_TOLERATED})", d, "less", -LOSS_TOLERATED,
                       where=f"{opt}, f = {interval}, τ = {tau:g}: {100 * share:.0f}% of fixed's refreshes",
                       optimizer=opt, interval=interval, tau=tau, refresh_share=share)


def tolerated_tau(df, opt: str, seed: int, interval: int = 1) -> Optional[Tuple[float, bool]]:
    """``(log10 τ*, clamped)``: where the seed's adaptive runs (check interval ``interval``) lose
    :data:`LOSS_TOLERATED` against its fixed f = 1 run, interpolated on log τ; clamped to the grid's ends."""
    base = fixed_runs(df, opt)
    base = base[(base["f"] == 1) & (base["seed"] == seed)]
    ada = df[(df["optimizer"] == opt) & (df["policy"] == "adaptive") & (df["f"] == interval) & (df["seed"] == seed)
             & (df["tau"] > 0)].sort_values("tau")
    if not len(base) or len(ada) < 2:
        return None
    loss = [float(v) - float(base["final_val_loss"].iloc[0]) for v in ada["final_val_loss"]]
    lt = [math.log10(float(t)) for t in ada["tau"]]
    if loss[0] >= LOSS_TOLERATED:
        return lt[0], True
    for (x0, y0), (x1, y1) in zip(zip(lt, loss), zip(lt[1:], loss[1:])):
        if y0 < LOSS_TOLERATED <= y1:
            return x0 + (LOSS_TOLERATED - y0) / (y1 - y0) * (x1 - x0), False
    return lt[-1], True


def claims(scale, root=None) -> List[Dict[str, Any]]:
    df = frame(scale, root)
    if not len(df):
        return []
    rows = [r for opt in OPTIMIZERS for i in scale.param(PARAMS, "intervals")
            for t in scale.param(PARAMS, "tolerances") if (r := _saving_rows(df, opt, int(i), float(t)))]
    rows += [r for opt in OPTIMIZERS for i in scale.param(PARAMS, "intervals")
             for t in scale.param(PARAMS, "tolerances") if (r := _cost_row(df, opt, int(i), float(t)))]
    taus = {o: {s: tolerated_tau(df, o, s) for s in sorted(set(df["seed"]))} for o in OPTIMIZERS}
    d = {s: taus["soap"][s][0] - taus["shampoo"][s][0] for s in taus["soap"] if taus["soap"][s] and taus["shampoo"].get(s)}
    if d:
        clamped = sorted(s for s in d if taus["soap"][s][1] or taus["shampoo"][s][1])
        rows.append(stats.claim(f"SOAP tolerates a staler basis than Shampoo (log10 τ at which each loses "
                                f"{LOSS_TOLERATED}: SOAP − Shampoo > 0)", d, "greater", unit="log10 tau",
                                where="check every step" + (f" (clamped to the τ grid on seeds {clamped})" if clamped else ""),
                                headline=True))
    return rows


def summary(rows: List[Dict[str, Any]]) -> str:
    """The study's answer in words: the read-off against the fixed curve (counted by verdict), the well-conditioned
    comparison at the same interval (which settings keep the loss, with how many refreshes), the staleness."""
    from .report import says

    saved = [r for r in rows if r["claim"].startswith("adaptive reaches")]
    cost = [r for r in rows if r["claim"].startswith("adaptive costs")]
    tol = [r for r in rows if r["claim"].startswith("SOAP tolerates")]
    text = "**In plain words.** "
    if saved:
        count = {v: sum(r["verdict"] == v for r in saved) for v in (stats.REPRODUCED, stats.CONTRADICTED)}
        off = sum("outside the fixed curve" in r["where"] for r in saved)
        text += (f"Read off the fixed-f curve (the refreshes a fixed f needs for the adaptive run's loss), adaptive "
                 f"saves refreshes in {count[stats.REPRODUCED]} of {len(saved)} settings, saves none or needs more in "
                 f"{count[stats.CONTRADICTED]}, and is inconclusive in the rest; in {off} of them some seeds' "
                 "losses lie outside the fixed curve, which is nearly flat between f = 1 and f = 10 at this size, so "
                 "that read-off is ill-conditioned here. ")
    if cost:
        keep = [r for r in cost if r["verdict"] == stats.REPRODUCED and r["refresh_share"] < 0.995]
        lose = [r for r in cost if r["verdict"] == stats.CONTRADICTED]
        text += ("Against fixed f at the same interval (the well-conditioned comparison), adaptive keeps the loss "
                 "within 0.01 with fewer refreshes at " + ("; ".join(f"{r['where']} ({says(r)})" for r in keep)
                                                             or "no setting") + ". ")
        if lose:
            text += "It loses more than 0.01 at " + "; ".join(f"{r['where']} ({says(r)})" for r in lose) + ". "
    if tol:
        text += f"The staleness each optimizer tolerates before losing {LOSS_TOLERATED} (log10 τ, SOAP − Shampoo): {says(tol[0])}."
    return text if text != "**In plain words.** " else ""


def tables(scale, root=None) -> List[Tuple[str, str]]:
    """The frontier: final loss (mean ± 95% CI) and refreshes per factor for each fixed f and each adaptive τ."""
    from ..figures.seeds import mean_ci

    df = frame(scale, root)
    if not len(df):
        return []
    out = ["| optimizer | policy | f / check interval | τ | refreshes per factor | final loss | n |",
           "|---|---|---|---|---|---|---|"]
    for (opt, pol, f, tau), g in df.groupby(["optimizer", "policy", "f", "tau"], dropna=False, sort=True):
        m, h, n = mean_ci(g["final_val_loss"].astype(float).tolist())
        rm, rh, _ = mean_ci(g["refreshes"].astype(float).tolist())
        out.append(f"| {opt} | {pol} | {int(f)} | {'' if not finite(tau) else f'{tau:g}'} | {rm:.1f} ± {rh:.1f} | "
                   f"{m:.4f} ± {h:.4f} | {n} |")
    return [("The frontier: final loss against refreshes per factor (mean ± 95% CI over seeds)", "\n".join(out))]


# ================================================================================================ figures
def draw_frontier(data: Mapping[str, Any], out, name: str = "refresh_frontier"):
    """Final loss against refreshes per factor (log), one panel per optimizer: fixed f as a curve (each seed thin,
    the mean with its 95% interval, f written), adaptive as points (the mean with its interval in both
    directions; marker: check interval, colour: τ)."""
    import matplotlib.pyplot as plt

    from ..figures import seeds as S
    from ..figures import style

    key, sd = next(((k, v) for k, v in data.items() if v is not None and len(v.runs)), (None, None))
    if sd is None:
        raise style.MissingResults(f"{name}: no stored runs: run `{style.missing_hint(next(iter(data)), 'refresh')}`")
    df = frame(sd.scale, sd.root)
    taus = sorted({float(t) for t in df["tau"].dropna() if t > 0})
    cmap = plt.get_cmap("viridis")
    with style.style():
        fig, axes = plt.subplots(1, len(OPTIMIZERS), figsize=(5.6 * len(OPTIMIZERS), 4.4), squeeze=False)
        for ax, opt in zip(axes[0], OPTIMIZERS):
            fx = fixed_runs(df, opt)
            label = "SOAP" if opt == "soap" else "Shampoo"
            c = style.color(label)
            S.seed_lines(ax, fx, "refreshes", "final_val_loss", c)
            summ = S.summarize(fx, ["f"]).sort_values("f")
            xs = fx.groupby("f")["refreshes"].mean().reindex(summ["f"]).to_numpy()
            S.mean_errorbar(ax, xs, summ, c, label=f"{label}, fixed f: mean ± 95% CI", marker="o", ms=4, lw=1.4)
            for x, f, y in zip(xs, summ["f"], summ["mean"]):
                ax.annotate(f"f={int(f)}", (x, y), textcoords="offset points", xytext=(4, 5), fontsize=6.5, color=c)
            ad = df[(df["optimizer"] == opt) & (df["policy"] == "adaptive") & (df["tau"] > 0)]  # τ = 0 is fixed
            for (interval, tau), g in ad.groupby(["f", "tau"], sort=True):
                m, h, n = S.mean_ci(g["final_val_loss"].astype(float).tolist())
                rm, rh, _ = S.mean_ci(g["refreshes"].astype(float).tolist())
                ax.errorbar([rm], [m], xerr=[rh], yerr=[h], color=cmap(taus.index(float(tau)) / max(1, len(taus) - 1)),
                            marker="o" if int(interval) == 1 else "s", ms=6, capsize=2.5, lw=1.1, ls="none",
                            label=f"adaptive, check every {int(interval)}, τ = {tau:g} (n = {n})")
            ax.set_xscale("log")
            ax.margins(x=0.1)
            ax.set_xlabel("refreshes per factor in the run (log; the first basis not counted)")
            ax.set_ylabel("final validation loss")
            ax.set_title(f"{label}: loss against refreshes [{key}]\n{S.n_text(summ['n'], where=' per point')}")
            ax.legend(fontsize=6, ncol=1)
        style.footer(fig, [sd.caption(), "Adaptive (Purifying Shampoo's test): every check interval, a factor is "
                           "refreshed where ‖QᵀPQ − diag‖_F / ‖P‖_F exceeds τ. Thin lines: one seed each; the same "
                           "seed shares init and data order in every run."])
        return style.save(fig, out, name)


def draw_staleness(data: Mapping[str, Any], out, name: str = "refresh_staleness"):
    """Staleness of each factor kind along training at fixed f (the τ = 0 adaptive runs, which are the fixed runs
    with every check logged): the mean over layers and seeds at each kept check step, one panel per optimizer."""
    import matplotlib.pyplot as plt

    from ..figures import style
    from ..records import store

    key, sd = next(((k, v) for k, v in data.items() if v is not None and len(v.runs)), (None, None))
    if sd is None:
        raise style.MissingResults(f"{name}: no stored runs: run `{style.missing_hint(next(iter(data)), 'refresh')}`")
    f0 = int(sd.scale.param(PARAMS, "staleness_f"))
    df = frame(sd.scale, sd.root)
    with style.style():
        fig, axes = plt.subplots(1, len(OPTIMIZERS), figsize=(5.6 * len(OPTIMIZERS), 4.0), squeeze=False, sharey=True)
        for ax, opt in zip(axes[0], OPTIMIZERS):
            runs = df[(df["optimizer"] == opt) & (df["policy"] == "adaptive") & (df["tau"] == 0) & (df["f"] == f0)]
            per: Dict[str, Dict[int, List[float]]] = {}
            for path in runs["record"]:
                for step, kind, value, _ in store.read_record(path)["metrics"].get("staleness", []):
                    per.setdefault(kind, {}).setdefault(int(step), []).append(float(value))
            for i, (kind, steps) in enumerate(sorted(per.items())):
                xs = sorted(steps)
                base, side = kind.rsplit(":", 1)
                ax.plot(xs, [sum(steps[x]) / len(steps[x]) for x in xs], lw=1.1, color=f"C{i // 2}",
                        ls="-" if side == "0" else "--", label=f"{base.replace('.weight', '')} ({'left' if side == '0' else 'right'})")
            ax.set_xlabel("step")
            ax.set_ylabel(f"staleness after {f0} steps (‖offdiag QᵀPQ‖ / ‖P‖)")
            ax.set_title(f"{'SOAP' if opt == 'soap' else 'Shampoo'}: staleness at f = {f0} [{key}]\n"
                         f"n = {len(runs)} seed{'s' if len(runs) != 1 else ''}, mean over layers and seeds")
            ax.legend(fontsize=6, ncol=2)
        style.footer(fig, [sd.caption(), "Solid: the left factor (rows), dashed: the right (columns); each kind is "
                           "one matrix of every block (attn.qkv, attn.proj, mlp.fc1, mlp.fc2) or the embedding / head."])
        return style.save(fig, out, name)


STUDY = Study(name="refresh", order=60, paper="not in the paper (Purifying Shampoo's adaptive refresh, arXiv 2506.03595)",
              question="Does an adaptive refresh reach fixed f's loss with fewer refreshes?", params=PARAMS, grid=grid,
              claims=claims, tables=tables, summary=summary,
              figures={"refresh_frontier": draw_frontier, "refresh_staleness": draw_staleness})
