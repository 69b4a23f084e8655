"""Tables behind the figures: the runs of each study, read from stored run records, and the derived numbers.

Everything in the first part reads only what ``soap_lab.results`` stored (``load`` / ``curves``); nothing
trains. Which records belong to a study is decided by the study's configs (``soap_lab.ablations.configs``),
so a figure never picks up an unrelated run from the shared pool ``data/runs/paper_<scale>/``.

The second part produces the two data sets of the equivalence notebook that are not training runs: Claim 1
and how it breaks on the teaching problem (:func:`claim1_study`), and the measured equivalence gap along a
training trajectory as the basis ages between refreshes (:func:`gap_trajectory`). Both are stored as JSON
with provenance under ``data/equivalence/`` (:func:`save_json`) and drawn from there.

torch is imported only by the second part; pandas only where a DataFrame is built.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import ablations, results
from .provenance import provenance

__all__ = [
    "StudyData",
    "study_data",
    "basis_refreshes",
    "lr_table",
    "frequency_table",
    "efficiency_table",
    "step_time_ratio",
    "steps_to_target",
    "batch_size_table",
    "variants_table",
    "minibatch_grads",
    "claim1_study",
    "gap_trajectory",
    "save_json",
    "table",
    "load_json",
    "provenance",
]

EQUIVALENCE_DIR = results.REPO_ROOT / "data" / "equivalence"
OVERHEAD_DIR = results.REPO_ROOT / "data" / "overhead"


# ======================================================================================== run records
@dataclass
class StudyData:
    """The stored runs of one study at one scale."""

    study: str
    scale: Any  # soap_lab.ablations.Scale
    runs: Any  # DataFrame: one row per stored run of the study (results.load columns + label, f)
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
        """Per-step curves of the study's runs (``results.curves``), with ``label`` and ``f`` columns."""
        if which not in self._curves:
            df = results.curves(self.scale.experiment, self.root, which=which)
            if len(df):
                df = df[df["run_id"].isin(self.runs["run_id"])]
                df = df.merge(self.runs[["run_id", "label", "f"]], on="run_id", how="left")
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


def _frequency(cfg) -> Optional[int]:
    return cfg.precondition_frequency


def study_data(study: str, scale, root: Optional[Path] = None, frame=None) -> StudyData:
    """The stored runs of ``study`` at ``scale`` (raises ``ablations.MissingResults`` when the learning-rate
    sweep the study depends on is not stored yet)."""
    import pandas as pd

    cfgs = ablations.configs(study, scale, root)
    ids = [results.run_id(c) for c in cfgs]
    labels = {results.run_id(c): ablations.label(c) for c in cfgs}
    df = frame if frame is not None else results.load(scale.experiment, root)
    if len(df):
        df = df[df["run_id"].isin(ids)].copy()
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
    """Learning-rate sweep: one row per (optimizer, lr) with the final validation loss; ``tuned`` marks the best."""
    df = sd.runs[["run_id", "label", "optimizer", "lr", "final_val_loss", "diverged"]].copy()
    df["tuned"] = False
    for opt, g in df.groupby("optimizer"):
        ok = g[g["final_val_loss"].map(_finite)]
        if len(ok):
            df.loc[ok["final_val_loss"].astype(float).idxmin(), "tuned"] = True
    return df.sort_values(["optimizer", "lr"]).reset_index(drop=True)


def frequency_table(sd: StudyData):
    """Final val loss vs f: one row per (label, f), with the number of basis refreshes of the run."""
    df = sd.runs.copy()
    df["refreshes"] = [basis_refreshes(o, f, s) for o, f, s in zip(df["optimizer"], df["f"], df["steps_done"])]
    return df[["run_id", "label", "optimizer", "f", "lr", "final_val_loss", "steps_done", "refreshes",
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
    from . import efficiency, step_times as stt

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

    Default target: AdamW's final val loss at the smallest batch size (every larger batch, and a better
    optimizer, should reach it within the budget). Columns: label, batch_size, f, final_val_loss, target,
    steps_to_target, how, tokens_to_target.
    """
    import pandas as pd

    runs = sd.runs
    if target is None:
        adam = runs[runs["optimizer"] == "adamw"].sort_values("batch_size")
        adam = adam[adam["final_val_loss"].map(_finite)]
        if not len(adam):
            raise ablations.MissingResults("the batch-size study has no finished AdamW run to define the target loss")
        target = float(adam["final_val_loss"].iloc[0])
    val = sd.curves("val")
    rows = []
    for _, r in runs.iterrows():
        c = val[val["run_id"] == r["run_id"]] if len(val) else val
        step, how = steps_to_target(c["step"], c["val_loss"], target) if len(c) else (float("nan"), "not reached")
        tokens = step * float(r["tokens_per_step"]) if _finite(step) else float("nan")
        rows.append({"run_id": r["run_id"], "label": r["label"], "optimizer": r["optimizer"],
                     "batch_size": int(r["batch_size"]), "f": r["f"], "final_val_loss": r["final_val_loss"],
                     "target": target, "steps_to_target": step, "how": how, "tokens_to_target": tokens})
    return pd.DataFrame(rows)


def variants_table(sd: StudyData):
    """Final val loss and optimizer-state memory of SOAP's variants, Shampoo and AdamW."""
    df = sd.runs[["run_id", "label", "optimizer", "final_val_loss", "optimizer_state_bytes", "num_params",
                  "step_time_mean"]].copy()
    df["state_MB"] = df["optimizer_state_bytes"].astype(float) / 2**20
    df["state_per_param"] = df["optimizer_state_bytes"].astype(float) / (4 * df["num_params"].astype(float))
    return df.reset_index(drop=True)


# ================================================================================ stored data files
def _json_ready(obj: Any) -> Any:
    """NaN/inf floats -> None (strict JSON), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    return obj


def save_json(data: Mapping[str, Any], path) -> Path:
    """Write a data set atomically as compact JSON (one top-level key per line; NaN/inf as null)."""
    import json
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(_json_ready(v), separators=(',', ':'), allow_nan=False, ensure_ascii=False)}"
                      for k, v in data.items())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("{\n" + body + "\n}\n")
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def table(d: Mapping[str, Any], key: str = "rows"):
    """A stored data set's table as a DataFrame: ``d["columns"]`` (column-oriented) or ``d[key]`` (rows)."""
    import pandas as pd

    if "columns" in d:
        return pd.DataFrame(d["columns"])
    return pd.DataFrame(d.get(key, []))


def load_json(path, what: str = "data", make_hint: str = "make ablations SCALE=cpu") -> Dict[str, Any]:
    """Read a stored data set; a missing file raises ``ablations.MissingResults`` naming the command."""
    path = Path(path)
    if not path.is_file():
        raise ablations.MissingResults(f"no {what} at {path}: run `{make_hint}`")
    return results.read_record(path)


# ================================================================== Claim 1 on the teaching problem
def minibatch_grads(prob, W, n_batches: int = 64, gen=None) -> List[Any]:
    """Gradients of the teaching loss (``models.anisotropic_regression``) at W on ``n_batches`` disjoint random
    minibatches of its samples (float64): the "gradient batches" L = E[G Gᵀ], R = E[Gᵀ G] are taken over."""
    import torch

    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    N = prob["X"].shape[0]
    perm = torch.randperm(N, generator=gen)
    X, Y, A = prob["X"].double(), prob["Y"].double(), prob["A"].double()
    out = []
    for idx in perm.chunk(n_batches):
        R = X[idx] @ W.T - Y[idx]  # residuals (b, m)
        out.append(A @ R.T @ X[idx] / len(idx))  # d/dW of 1/(2b) Σ rᵀ A r
    return out


def claim1_study(m: int = 16, n: int = 12, condition: float = 100.0, n_batches: int = 64, noise: float = 0.1,
                 exponents: Sequence[float] = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8),
                 eps_values: Sequence[float] = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                 max_staleness: int = 40, trajectory_lr: float = 0.02, seed: int = 0) -> Dict[str, Any]:
    """Claim 1 on the teaching problem (``models.anisotropic_regression``), and what breaks it.

    Gradient batches are minibatch gradients of the regression loss at a point W. L, R = E[G Gᵀ], E[Gᵀ G];
    rotated by their eigenvectors, Adafactor's row/column statistics equal the eigenvalues, and idealized
    Adafactor in that basis equals idealized Shampoo^½ (√Tr L · L^-½ G R^-½). Then the identity is broken by
    Shampoo's exponent (e ≠ ½), dropping the trace factor, ε on the eigenvalues (relative to their mean),
    and a stale basis: W follows an Adam trajectory, the gradients of step T are preconditioned in the
    eigenbasis of the factors of step T − s (s = staleness).
    """
    import torch

    from . import equivalence as eq
    from .models import anisotropic_regression

    if m < 2 or n < 2:
        raise ValueError(f"the layer must be at least 2×2, got {m}×{n}")
    if n_batches < 2:
        raise ValueError(f"n_batches must be >= 2, got {n_batches}")
    prob = anisotropic_regression(m=m, n=n, n_samples=max(512, 8 * n_batches), condition=condition, noise=noise,
                                  seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)

    # An Adam trajectory from W0 (so the factors, hence the basis, drift), keeping every step's batch gradients.
    W = prob["W0"].double().clone()
    mom, vel = torch.zeros_like(W), torch.zeros_like(W)
    traj: List[List[Any]] = []
    T = max_staleness + 10
    for t in range(1, T + 1):
        grads = minibatch_grads(prob, W, n_batches, gen)
        traj.append(grads)
        G = torch.stack(grads).mean(0)
        mom.mul_(0.9).add_(G, alpha=0.1)
        vel.mul_(0.95).addcmul_(G, G, value=0.05)
        W -= trajectory_lr * (mom / (1 - 0.9**t)) / ((vel / (1 - 0.95**t)).sqrt() + 1e-12)

    batch = traj[-1]
    G = torch.stack(batch).mean(0)
    L, R = eq.gradient_factors(batch)
    QL, QR = eq.eigenbasis(L, R)
    lam = torch.linalg.eigvalsh(L).flip(0)
    mu = torch.linalg.eigvalsh(R).flip(0)
    A, C, total = eq.rotated_statistics(batch, QL, QR)
    ideal = eq.idealized_shampoo_update(G, L, R)
    ada = eq.idealized_eigen_adafactor_update(G, batch)
    out: Dict[str, Any] = {
        "params": {"m": m, "n": n, "condition": condition, "n_batches": n_batches, "noise": noise,
                   "max_staleness": max_staleness, "trajectory_lr": trajectory_lr, "seed": seed},
        "spectrum": {"lambda": lam.tolist(), "A": A.tolist(), "mu": mu.tolist(), "C": C.tolist(),
                     "trace_L": float(torch.trace(L)), "sum_A": float(total)},
        "exact_error": eq.relative_error(ideal, ada),
        "stats_error": max(eq.relative_error(A, lam), eq.relative_error(C, mu)),
        "no_trace_error": eq.relative_error(eq.idealized_shampoo_update(G, L, R, trace_scaling=False), ada),
        "exponent": [{"exponent": float(e), "error": eq.relative_error(eq.idealized_shampoo_update(G, L, R, exponent=e), ada)}
                     for e in exponents],
    }
    scale = float(torch.trace(L)) / m
    out["eps"] = [{"eps_relative": float(e), "eps": float(e) * scale,
                   "error": eq.relative_error(eq.idealized_shampoo_update(G, L, R, eps=float(e) * scale), ada)}
                  for e in eps_values]
    stale = []
    for s in range(0, max_staleness + 1):
        basis = eq.eigenbasis(*eq.gradient_factors(traj[-1 - s]))
        upd = eq.idealized_eigen_adafactor_update(G, batch, basis=basis)
        stale.append({"staleness": s, "error": eq.relative_error(upd, ideal)})
    out["staleness"] = stale
    return out


# ================================================================ the gap along a training trajectory
RANGE_RTOL = 1e-10


def _root_pinv(P, rtol: float = RANGE_RTOL):
    """P^-½ on the range of the symmetric factor P (eigenvalues > rtol·max), 0 on its null space."""
    import torch

    lam, Q = torch.linalg.eigh(P)
    inv = torch.where(lam > rtol * lam.max(), lam.clamp_min(torch.finfo(P.dtype).tiny).rsqrt(), torch.zeros_like(lam))
    return (Q * inv) @ Q.T


def _stale_updates(G, L, R, Q, stats, step: int, beta2: float):
    """The idealized update from the current factors, and three Adafactor updates to compare with it.

    ``ideal``: √Tr L · L^-½ G R^-½, the inverse roots taken on the factors' range (a pseudo-inverse: in a
    GPT the factors are exactly singular along directions the gradient never has, e.g. the all-ones direction
    of a residual-stream output behind mean-subtracting LayerNorms). ``fresh``: Adafactor in the eigenbasis of
    the current factors (Claim 1). ``basis``: Adafactor in the optimizer's (stale) basis ``Q`` with the
    statistics of all past gradients rotated into it — diag(Q_Lᵀ L Q_L), diag(Q_Rᵀ R Q_R), Tr L — so only the
    basis is stale. ``running``: the optimizer's own running row/column statistics (accumulated across older
    bases), updated with the current rotated gradient and bias-corrected, as the practical algorithm uses them.
    Coordinates whose row or column statistic is ≤ ``RANGE_RTOL`` × its max are set to 0 in each (they are
    outside the range). Momentum is left out: each is a preconditioner applied to the current gradient.
    """
    import torch

    from .optim import second_moment

    ideal = torch.trace(L).sqrt() * (_root_pinv(L) @ G @ _root_pinv(R))

    def adafactor_in(QL, QR, A, C, total):
        # V̂ = A Cᵀ / total; coordinates outside the range (a row or column statistic ≤ rtol × its max) -> 0
        keep = torch.outer(A > RANGE_RTOL * A.max(), C > RANGE_RTOL * C.max())
        v = (torch.outer(A, C) / total).clamp_min(torch.finfo(A.dtype).tiny)
        g = QL.T @ G @ QR
        return QL @ torch.where(keep, g / v.sqrt(), torch.zeros_like(g)) @ QR.T

    def factor_stats(QL, QR):
        return (QL * (L @ QL)).sum(0), (QR * (R @ QR)).sum(0), torch.trace(L)

    QL, QR = Q
    u_basis = adafactor_in(QL, QR, *factor_stats(QL, QR))
    st = {"exp_avg_sq_factors": [x.double().clone() for x in stats]}
    second_moment.update_(st, QL.T @ G @ QR, beta2)
    rows, cols = (x / (1 - beta2 ** (step + 1)) for x in st["exp_avg_sq_factors"])  # means: V̂ = r cᵀ / mean
    u_run = adafactor_in(QL, QR, rows, cols, rows.mean())
    FL, FR = torch.linalg.eigh(L)[1], torch.linalg.eigh(R)[1]
    u_fresh = adafactor_in(FL, FR, *factor_stats(FL, FR))
    return ideal, u_basis, u_run, u_fresh


def _teaching_problem(m: int, n: int, condition: float, noise: float, batch: int, seed: int):
    import torch

    from .models import anisotropic_regression

    prob = anisotropic_regression(m=m, n=n, n_samples=4096, condition=condition, noise=noise, seed=seed)
    model = prob["make_model"]().double()
    gen = torch.Generator().manual_seed(seed + 1)
    N = prob["X"].shape[0]
    X, Y, A = prob["X"].double(), prob["Y"].double(), prob["A"].double()

    def loss_fn():
        idx = torch.randint(0, N, (batch,), generator=gen)
        R = model(X[idx]) - Y[idx]
        return 0.5 * ((R @ A) * R).sum(-1).mean()

    return model, loss_fn, {"weight": f"{m}×{n}"}


def _gpt_problem(preset: str, batch: int, seed: int):
    import torch

    from . import batches, data, models

    tok = data.get_tokenizer("char", "austen")
    stream = data.token_stream("austen", "char", split="train")
    cfg = models.gpt_config(preset, tok.vocab_size)
    torch.manual_seed(seed)
    model = models.GPT(cfg).double()
    sampler = batches.BatchSampler(stream, batch, cfg.seq_len, seed=seed)

    def loss_fn():
        x, y = sampler.next()
        _, loss = model(x, y)
        return loss

    names = {id(p): n for n, p in model.named_parameters()}
    return model, loss_fn, names


def gap_trajectory(frequencies: Sequence[int] = (10, 50), refreshes: Sequence[str] = ("qr", "eigh"),
                   problems: Sequence[str] = ("teaching", "gpt"), steps: int = 200, lr: float = 3e-3,
                   betas=(0.95, 0.95), m: int = 32, n: int = 24, condition: float = 100.0, noise: float = 0.1,
                   batch: int = 64, preset: str = "tiny", gpt_batch: int = 16, seed: int = 0,
                   max_layers: Optional[int] = None) -> Dict[str, Any]:
    """The measured gap between practical and idealized Claim 1 along training trajectories.

    Train each of ``problems`` (``"teaching"``: the anisotropic regression, one m×n layer, minibatch ``batch``;
    ``"gpt"``: the GPT of ``preset`` on the Austen characters, ``gpt_batch`` sequences, float64) with
    ``EigenAdafactor`` on its matrices (SOAP's ordering: step in the current basis, then update the factors,
    refresh every f steps by ``refresh``; other parameters AdamW) and before every step compare, per matrix,
    three preconditioned gradients with the idealized Shampoo^½ update √Tr L·L^-½ G R^-½ from the *current*
    factors (the current gradient included):

    - ``gap_fresh``: Adafactor in the eigenbasis of the current factors (Claim 1: 0 up to round-off);
    - ``gap_basis``: Adafactor in the optimizer's (stale) basis, statistics of all past gradients rotated
      into it (only the basis is stale);
    - ``gap_running``: Adafactor in the stale basis with the optimizer's running statistics (the practical
      algorithm: statistics also accumulated in older bases).

    ``age`` = gradients since the basis was computed (1 = built from the factors of the previous step);
    ``period`` = index of the basis (0 = the first one, built from a single gradient). The factors of a GPT
    are exactly singular along directions its gradients never have (embedding rows of characters not seen
    yet, the all-ones direction behind mean-subtracting LayerNorms, the directions QK-LayerNorm removes): the
    inverse roots are taken on the factors' range (:func:`_stale_updates`). A step whose gaps are not finite
    is left out and counted in ``skipped``. Returns ``{"params", "columns", "skipped"}``: a column-oriented table
    (:func:`table`), one row per (problem, f, refresh, step, layer), gaps to 4 significant digits.
    """
    import torch

    from . import equivalence as eq
    from .optim.adafactor import EigenAdafactor

    bad = [p for p in problems if p not in ("teaching", "gpt")]
    if bad or not problems:
        raise ValueError(f"unknown problem {bad[0] if bad else None!r}; allowed: teaching, gpt")
    if not frequencies:
        raise ValueError("frequencies is empty: give at least one precondition frequency, e.g. [10, 50]")
    if any(int(f) < 1 for f in frequencies):
        raise ValueError(f"precondition frequencies must be >= 1, got {list(frequencies)}")
    bad = [r for r in refreshes if r not in ("qr", "eigh")]
    if bad or not refreshes:
        raise ValueError(f"unknown refresh {bad[0] if bad else None!r}; allowed: qr, eigh")
    rows: List[Dict[str, Any]] = []
    skipped: Dict[str, int] = {}
    for problem in problems:
        for f in frequencies:
            for refresh in refreshes:
                if problem == "teaching":
                    model, loss_fn, _ = _teaching_problem(m, n, condition, noise, batch, seed)
                    layer_names = {id(model.weight): "weight"}
                else:
                    model, loss_fn, layer_names = _gpt_problem(preset, gpt_batch, seed)
                params = [p for p in model.parameters() if p.dim() == 2]
                if max_layers is not None:
                    params = params[:max_layers]
                ids = {id(p) for p in params}
                others = [p for p in model.parameters() if id(p) not in ids]
                opt = EigenAdafactor(params, lr=lr, betas=betas, precondition_frequency=int(f), refresh=refresh,
                                     weight_decay=0.0)
                opt_rest = torch.optim.AdamW(others, lr=lr, betas=betas) if others else None
                b2 = betas[1]
                for _ in range(steps):
                    opt.zero_grad(set_to_none=True)
                    if opt_rest is not None:
                        opt_rest.zero_grad(set_to_none=True)
                    loss = loss_fn()
                    loss.backward()
                    for p in params:
                        st = opt.state.get(p, {})
                        if "Q" not in st or any(q is None for q in st["Q"]) or p.grad is None:
                            continue
                        t = st["step"]
                        G = p.grad.double()
                        L = b2 * st["GG"][0].double() + (1 - b2) * G @ G.T
                        R = b2 * st["GG"][1].double() + (1 - b2) * G.T @ G
                        Q = [q.double() for q in st["Q"]]
                        name = layer_names.get(id(p), "?")
                        ideal, u_basis, u_run, u_fresh = _stale_updates(G, L, R, Q, st["exp_avg_sq_factors"], t, b2)
                        gaps = [eq.relative_error(u, ideal) for u in (u_fresh, u_basis, u_run)]
                        if not all(math.isfinite(x) for x in gaps) or not torch.isfinite(ideal).all():
                            key = f"{problem}/{name}"
                            skipped[key] = skipped.get(key, 0) + 1
                            continue
                        rows.append({
                            "problem": problem, "f": int(f), "refresh": refresh, "step": t + 1, "layer": name,
                            "shape": list(p.shape), "age": t + 1 - (t // int(f)) * int(f), "period": t // int(f),
                            "gap_fresh": gaps[0], "gap_basis": gaps[1], "gap_running": gaps[2],
                            "loss": float(loss.detach()),
                        })
                    opt.step()
                    if opt_rest is not None:
                        opt_rest.step()
    shapes = {}
    for r in rows:
        shapes[f"{r['problem']}/{r['layer']}"] = r.pop("shape")
    cols = {k: [r[k] for r in rows] for k in (rows[0] if rows else [])}
    for k in ("gap_fresh", "gap_basis", "gap_running", "loss"):
        if k in cols:
            cols[k] = [float(f"{x:.4g}") for x in cols[k]]
    return {"params": {"frequencies": [int(f) for f in frequencies], "refreshes": list(refreshes),
                       "problems": list(problems), "shapes": shapes, "steps": steps, "lr": lr, "betas": list(betas), "m": m, "n": n,
                       "condition": condition, "noise": noise, "batch": batch, "preset": preset,
                       "gpt_batch": gpt_batch, "seed": seed, "max_layers": max_layers},
            "columns": cols, "skipped": skipped}
