"""Tables behind the figures: the runs of each study, read from stored run records, and the derived numbers.

Everything here reads only what ``soap_lab.records.store`` stored (``load`` / ``curves``); nothing trains. Which
records belong to a study is decided by the study's configs (``soap_lab.ablations.configs``), so a figure
never picks up an unrelated run from the shared pool ``data/runs/paper_<scale>/``.

The data sets of the equivalence notebook that are not training runs (Claim 1 and the gap along a training
trajectory) are computed by :mod:`soap_lab.equivalence.experiments` and stored under ``data/equivalence/`` (:mod:`soap_lab.records.datasets`).
pandas is imported only where a DataFrame is built.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from . import ablations, efficiency
from .records import store
from . import step_times as stt

__all__ = [
    "StudyData",
    "study_data",
    "basis_refreshes",
    "lr_table",
    "tuned_lrs",
    "frequency_table",
    "efficiency_table",
    "step_time_ratio",
    "steps_to_target",
    "batch_size_table",
    "variants_table",
]


@dataclass
class StudyData:
    """The stored runs of one study at one scale."""

    study: str
    scale: Any  # soap_lab.ablations.Scale
    runs: Any  # DataFrame: one row per stored run of the study (store.load columns + label, f)
    expected: List[str]
    """Run ids the study consists of."""
    missing: List[str]
    """Run ids whose record is not stored yet."""
    root: Optional[Path] = None
    _curves: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def complete(self) -> bool:
        return not self.missing

    def curves(self, which: str = "val"):
        """Per-step curves of the study's runs (``store.curves``), with ``label`` and ``f`` columns."""
        if which not in self._curves:
            df = store.curves(self.scale.experiment, self.root, which=which)
            if len(df):  # matched on the config hash, then named by today's run ids (as ``runs`` is)
                df = df[df["run_key"].isin(self.runs["run_key"])].drop(columns="run_id")
                df = df.merge(self.runs[["run_key", "run_id", "label", "f"]], on="run_key", how="left")
            self._curves[which] = df
        return self._curves[which]

    def device(self) -> str:
        """The device the runs trained on, as recorded (type and model)."""
        if not len(self.runs):
            return str(self.scale.device)
        names = self.runs["device_name"].dropna().unique().tolist() if "device_name" in self.runs else []
        types = self.runs["device"].dropna().unique().tolist() if "device" in self.runs else []
        name = names[0] if len(names) == 1 else (f"{len(names)} devices" if names else "?")
        return f"{'/'.join(map(str, types)) or self.scale.device}: {name}"

    def caption(self) -> str:
        """Scale and device line written on every figure."""
        s = self.scale
        seq = ""
        if len(self.runs) and "seq_len_used" in self.runs:
            seq = f"×{int(self.runs['seq_len_used'].dropna().iloc[0])} tokens" if self.runs["seq_len_used"].notna().any() else ""
        text = (f"scale {s.name} (preset {s.preset}, {s.tokenizer} tokens, {s.steps} steps, batch {s.batch_size}{seq}) "
                f"· device {self.device()}")
        n = int(self.runs["seed"].nunique()) if len(self.runs) and "seed" in self.runs else 0
        text += f" · n = {n} seed{'s' if n != 1 else ''}" + (" (single seed: differences not decided)" if n == 1 else "")
        if self.missing:
            text += f" · {len(self.missing)} of {len(self.expected)} runs missing"
        return text


def study_data(study: str, scale, root: Optional[Path] = None, frame=None) -> StudyData:
    """The stored runs of ``study`` at ``scale`` (raises ``ablations.MissingResults`` when the learning-rate
    sweep the study depends on is not stored yet)."""
    import pandas as pd

    cfgs = ablations.configs(study, scale, root)
    ids = [store.run_id(c) for c in cfgs]
    labels = {store.run_id(c): ablations.label(c) for c in cfgs}
    by_key = {store.run_key(rid): rid for rid in ids}
    df = frame if frame is not None else store.load(scale.experiment, root)
    if len(df):  # matched on the config hash: records named under the older scheme count as the same runs
        df = df[df["run_key"].isin(by_key)].copy()
        df["run_id"] = df["run_key"].map(by_key)
    else:
        df = pd.DataFrame(columns=["run_id"])
    df["label"] = df["run_id"].map(labels)
    if "precondition_frequency" in df:
        df["f"] = df["precondition_frequency"]
    else:
        df["f"] = None
    # keep the study's order (configs order), dropping duplicates (a config may appear twice in a study)
    order = {rid: i for i, rid in reversed(list(enumerate(ids)))}
    df = df.drop_duplicates("run_id")
    df = df.iloc[sorted(range(len(df)), key=lambda i: order[df["run_id"].iloc[i]])].reset_index(drop=True)
    unique_ids = list(dict.fromkeys(ids))
    missing = [rid for rid in unique_ids if rid not in set(df["run_id"])]
    return StudyData(study, scale, df, unique_ids, missing, Path(root) if root is not None else None)


# ---------------------------------------------------------------------------------------- helpers
def basis_refreshes(optimizer: str, f: Optional[float], steps: int) -> int:
    """How many times the basis is recomputed in a run of ``steps`` optimizer calls (initial eigh excluded).

    SOAP (and its variants, EigenAdafactor): the first call only builds the basis, the step counter t then runs
    1..steps-1 and the basis is refreshed when t % f == 0, so ``(steps-1) // f`` refreshes. Shampoo (the
    paper's baseline, preconditioning from step f): eigh at steps f, 2f, ..., so ``steps // f``.
    """
    if f is None or (isinstance(f, float) and math.isnan(f)) or optimizer == "adamw":
        return 0
    f = int(f)
    if optimizer == "shampoo":
        return int(steps) // f
    return max(int(steps) - 1, 0) // f


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def lr_table(sd: StudyData):
    """Learning-rate sweep: one row per run (optimizer, lr, seed) with the final validation loss; ``tuned`` marks the
    best run of each optimizer (with several seeds, ``tuned_lrs`` gives the lr the studies use)."""
    df = sd.runs[["run_id", "label", "optimizer", "lr", "seed", "final_val_loss", "diverged"]].copy()
    df["tuned"] = False
    for opt, g in df.groupby("optimizer"):
        ok = g[g["final_val_loss"].map(_finite)]
        if len(ok):
            df.loc[ok["final_val_loss"].astype(float).idxmin(), "tuned"] = True
    return df.sort_values(["optimizer", "lr", "seed"]).reset_index(drop=True)


def tuned_lrs(sd: StudyData) -> Dict[str, float]:
    """``{label: lr}`` as ``ablations.tuned_lr`` chooses it, from the sweep's runs in ``sd``: the lowest mean final
    validation loss over the tuning seeds ``sd.scale.lr_seeds`` (an lr where any of them diverged is out)."""
    runs = sd.runs[sd.runs["seed"].isin(list(sd.scale.lr_seeds))]
    out: Dict[str, float] = {}
    for label, g in runs.groupby("label", sort=True):
        means = {float(lr): gl["final_val_loss"].astype(float).mean() for lr, gl in g.groupby("lr", sort=True)
                 if gl["final_val_loss"].map(_finite).all()}
        if means:
            out[str(label)] = min(means, key=lambda lr: (means[lr], lr))
    return out


def frequency_table(sd: StudyData):
    """Final val loss vs f: one row per (label, f), with the number of basis refreshes of the run."""
    df = sd.runs.copy()
    df["refreshes"] = [basis_refreshes(o, f, s) for o, f, s in zip(df["optimizer"], df["f"], df["steps_done"])]
    return df[["run_id", "label", "optimizer", "f", "lr", "seed", "final_val_loss", "steps_done", "refreshes",
               "opt_time_total", "step_time_mean", "wall_time"]].reset_index(drop=True)


def efficiency_table(sd: StudyData, baselines: Sequence[str] = ("AdamW", "Shampoo")) -> List[Dict[str, Any]]:
    """The paper's efficiency protocol (Fig. 2) on the comparison study, one dict per baseline.

    SOAP's final val losses at the budget fractions are fitted with a + b·N^-β (``soap_lab.efficiency``) and
    solved for the baseline's final val loss at the full budget. Step times: median over every run of the
    optimizer at the batch size in the pool, with their range (``soap_lab.step_times``); ``wallclock`` holds
    the saving's range and whether it is decided. Keys: baseline, target, reached (False when the fit's
    asymptote lies above the target), steps_needed, steps_saved, wallclock_saved, wallclock, fit (a, b, beta,
    5 significant digits: the figure is the same bytes on any CPU) or error (why no fit), points.
    """
    runs = sd.runs
    bs = int(sd.scale.batch_size)
    pool = {lab: stt.pool_step_times(sd, lab, bs, sd.scale.base_frequency) for lab in ("SOAP", *baselines)}
    soap = runs[(runs["optimizer"] == "soap")].sort_values("budget_fraction")
    soap = soap[soap["final_val_loss"].map(_finite)]
    full = soap[soap["budget_fraction"] == 1.0]
    out = []
    for base in baselines:
        b = runs[(runs["label"] == base) & (runs["budget_fraction"] == 1.0)]
        row: Dict[str, Any] = {"baseline": base, "points": list(zip(soap["steps_total"].astype(int), soap["final_val_loss"].astype(float)))}
        if not len(b) or not _finite(b["final_val_loss"].iloc[0]):
            row["error"] = f"no finished {base} run"
            out.append(row)
            continue
        target = float(b["final_val_loss"].iloc[0])
        n_full = int(b["steps_total"].iloc[0])
        row["target"] = target
        row["full_steps"] = n_full
        t_soap, t_base = (pool[k].median if pool[k] else None for k in ("SOAP", base))
        row["soap_step_time"], row["baseline_step_time"] = t_soap, t_base
        if len(full):
            row["soap_final"] = float(full["final_val_loss"].iloc[0])
        try:
            with warnings.catch_warnings():  # 3-5 points for 3 parameters: scipy cannot estimate a covariance
                warnings.simplefilter("ignore")
                s = efficiency.savings(soap["steps_total"].astype(float), soap["final_val_loss"].astype(float), target,
                                       n_full, t_soap, t_base)
        except (ValueError, RuntimeError) as e:
            row["error"] = f"no fit: {e}"
            out.append(row)
            continue
        w = stt.wallclock_saving(s.step_fraction, pool["SOAP"], pool[base]) if pool["SOAP"] and pool[base] else None
        row.update(reached=math.isfinite(s.steps_needed), steps_needed=float(f"{s.steps_needed:.5g}"), step_fraction=s.step_fraction,
                   steps_saved=s.steps_saved, wallclock_saved=s.wallclock_saved, wallclock=stt.as_dict(w),
                   step_times={k: stt.as_dict(pool[k]) for k in ("SOAP", base)},
                   fit={k: float(f"{v:.5g}") for k, v in (("a", s.fit.a), ("b", s.fit.b), ("beta", s.fit.beta))})
        out.append(row)
    return out


def step_time_ratio(overhead: Optional[Mapping[str, Any]], f: int) -> Optional[float]:
    """SOAP's training-step time over AdamW's at frequency ``f`` from a stored timing study
    (``soap_lab.overhead``): (forward+backward + SOAP step) / (forward+backward + AdamW step); None if not measured."""
    if not overhead:
        return None
    row = next((r for r in overhead.get("summary", []) if int(r["f"]) == int(f)), None)
    if row is None or "soap_step_s" not in row:
        return None
    fb, adam = overhead["forward_backward_s"], overhead["adamw_step_s"]
    return (fb + row["soap_step_s"]) / (fb + adam)


def steps_to_target(steps: Sequence[float], losses: Sequence[float], target: float) -> Tuple[float, str]:
    """First step at which a validation curve reaches ``target`` (linear interpolation between evaluations).

    Returns ``(step, how)`` with ``how`` one of ``"interpolated"``, ``"first eval"`` (already below the target
    at the first evaluation: the step is an upper bound) or ``"not reached"`` (step is NaN).
    """
    pts = [(float(s), float(l)) for s, l in zip(steps, losses) if _finite(l)]
    pts.sort()
    if not pts:
        return float("nan"), "not reached"
    if pts[0][1] <= target:
        return pts[0][0], "first eval"
    for (s0, l0), (s1, l1) in zip(pts, pts[1:]):
        if l1 <= target < l0:
            return s0 + (l0 - target) / (l0 - l1) * (s1 - s0), "interpolated"
    return float("nan"), "not reached"


def batch_size_table(sd: StudyData, target: Optional[float] = None):
    """Steps to reach the target val loss per (optimizer, batch size), and the final val losses.

    Default target: AdamW's final val loss at the smallest batch size of the same seed (every larger batch, and a
    better optimizer, should reach it within the budget; a seed without that run gets no target, how = "no
    target"). Columns: label, seed, batch_size, f, final_val_loss, target, steps_to_target, how, tokens_to_target.
    """
    import pandas as pd

    runs = sd.runs
    seeds = runs["seed"] if "seed" in runs else pd.Series([0] * len(runs), index=runs.index)
    if target is None:
        adam = runs[(runs["optimizer"] == "adamw") & runs["final_val_loss"].map(_finite)]
        if not len(adam):
            raise ablations.MissingResults("the batch-size study has no finished AdamW run to define the target loss")
        targets = {}
        for s, g in adam.assign(_seed=seeds[adam.index]).groupby("_seed", sort=True):
            targets[int(s)] = float(g.sort_values("batch_size")["final_val_loss"].iloc[0])
    val = sd.curves("val")
    rows = []
    for i, r in runs.iterrows():
        t = float(target) if target is not None else targets.get(int(seeds[i]), float("nan"))
        c = val[val["run_id"] == r["run_id"]] if len(val) else val
        if not _finite(t):
            step, how = float("nan"), "no target"
        else:
            step, how = steps_to_target(c["step"], c["val_loss"], t) if len(c) else (float("nan"), "not reached")
        tokens = step * float(r["tokens_per_step"]) if _finite(step) else float("nan")
        rows.append({"run_id": r["run_id"], "label": r["label"], "optimizer": r["optimizer"], "seed": int(seeds[i]),
                     "batch_size": int(r["batch_size"]), "f": r["f"], "final_val_loss": r["final_val_loss"],
                     "target": t, "steps_to_target": step, "how": how, "tokens_to_target": tokens})
    return pd.DataFrame(rows)


def variants_table(sd: StudyData):
    """Final val loss and optimizer-state memory of SOAP's variants, Shampoo and AdamW."""
    df = sd.runs[["run_id", "label", "optimizer", "seed", "final_val_loss", "optimizer_state_bytes", "num_params",
                  "step_time_mean"]].copy()
    df["state_MB"] = df["optimizer_state_bytes"].astype(float) / 2**20
    df["state_per_param"] = df["optimizer_state_bytes"].astype(float) / (4 * df["num_params"].astype(float))
    return df.reset_index(drop=True)
