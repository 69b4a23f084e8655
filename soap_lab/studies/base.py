"""What every study file uses: the :class:`Study` it declares, how its runs are configured (the paper's protocol),
the tuned learning rates, and :class:`StudyData` (its stored runs, read back from the records).

Protocol (the paper's, scaled down): the learning rate of each tuned optimizer is chosen by a small sweep at
f = ``scale.base_frequency`` on ``scale.lr_seeds`` (:func:`lr_sweep_configs`, :func:`tuned_lr`); every other run
uses the tuned value. β1 = β2 = 0.95. Shampoo is the paper's baseline (exponent 1/2.5, ε 1e-12, Adam grafting,
preconditioning from step f). Runs with the same seed share the model init and the data order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..optim import takes_frequency
from ..records import store
from ..records.store import CorruptResults, MissingResults
from ..train.config import TrainConfig
from .scales import Scale

__all__ = ["Study", "MissingResults", "CorruptResults", "SHAMPOO_BASELINE", "run_config", "lr_sweep_configs",
           "best_lr", "tuned_lr", "label", "unique", "StudyData", "load", "by_seed", "finite"]

#: The paper's Shampoo baseline (DistributedShampoo with root 2.5, ε 1e-12, Adam grafting).
SHAMPOO_BASELINE = {"exponent": 0.4, "eps": 1e-12, "grafting": "adam"}


@dataclass(frozen=True)
class Study:
    """A question, as one file declares it: its grid, its claims and its figures (``docs/adding-a-study.md``).

    Attributes:
        name: the study's name (the file's; ``python -m soap_lab study run NAME``).
        question: the question in one line, as the results page asks it.
        paper: where the paper makes the claim ("Fig. 1 right"; "not in the paper").
        params: the study's grid parameters per registered scale (``{"cpu_freq": {"frequencies": (1, 10)}}``;
            ``"*"``: any scale); read with ``scale.param(params, key)``, overridden by ``--set key=value``.
        grid: ``grid(scale, root) -> [TrainConfig]``: the runs it needs (None for a study of measured data).
        claims: ``claims(scale, root) -> [row]``: each claim a :func:`soap_lab.stats.claim` row, with its verdict.
        figures: ``{figure name: draw(data, out) -> [paths]}`` with ``data`` ``{scale name: StudyData or None}``.
        measure: for studies whose data are not training runs (timing, Claim 1): ``measure(scale, force) -> path``.
        tables: ``tables(scale, root) -> [(title, markdown)]``: extra tables for the results page.
        summary: ``summary(rows) -> str``: what the claims say in plain words, written from the rows (never by
            hand), at the top of the study's section of the results page.
        tuned: the study's runs use tuned learning rates (the lr sweep is trained first).
        order: position on the results page and in ``make ablations``.
    """

    name: str
    question: str
    paper: str
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    grid: Optional[Callable[..., List[Any]]] = None
    claims: Optional[Callable[..., List[Dict[str, Any]]]] = None
    figures: Mapping[str, Callable[..., List[Path]]] = field(default_factory=dict)
    measure: Optional[Callable[..., Path]] = None
    tables: Optional[Callable[..., List[Tuple[str, str]]]] = None
    summary: Optional[Callable[..., str]] = None
    tuned: bool = True
    order: int = 100

    def param(self, scale: Scale, key: str) -> Any:
        return scale.param(self.params, key)

    def configs(self, scale: Scale, root=None) -> List[Any]:
        """The study's runs at ``scale`` (empty for a study of measured data)."""
        return unique(self.grid(scale, root)) if self.grid else []

    def data(self, scale: Scale, root=None) -> "StudyData":
        """Its stored runs at ``scale`` (raises :class:`MissingResults` without the lr sweep it needs)."""
        return load(self.name, self.configs(scale, root), scale, root)


# ============================================================================================ the protocol
def run_config(scale: Scale, root, optimizer: str, lr: float, **fields: Any) -> TrainConfig:
    """One run of ``scale``: its base setting, ``optimizer`` at ``lr`` (Shampoo as the paper's baseline),
    f = ``scale.base_frequency`` unless ``precondition_frequency`` is given, other TrainConfig ``fields``."""
    hparams = dict(fields.pop("hparams", {}))
    if optimizer == "shampoo":
        hparams = {**SHAMPOO_BASELINE, **hparams}
    f = fields.pop("precondition_frequency", scale.base_frequency)
    base = dict(experiment=scale.experiment, preset=scale.preset, tokenizer=scale.tokenizer,
                batch_size=scale.batch_size, steps=scale.steps, eval_every=scale.eval_every,
                eval_batches=scale.eval_batches, device=scale.device, betas=(0.95, 0.95), out_dir=root, progress=False)
    return TrainConfig(**{**base, **fields}, optimizer=optimizer, lr=float(lr), hparams=hparams,
                       precondition_frequency=f if takes_frequency(optimizer) else None)


def unique(cfgs: Sequence[Any]) -> List[Any]:
    """``cfgs`` without repeated runs (same run id), in order."""
    seen, out = set(), []
    for c in cfgs:
        rid = store.run_id(c)
        if rid not in seen:
            seen.add(rid)
            out.append(c)
    return out


def lr_sweep_configs(scale: Scale, root=None, seeds: Optional[Sequence[int]] = None) -> List[Any]:
    """Each tuned optimizer over its learning-rate grid at f = base_frequency and the reference batch, for every
    seed of ``seeds`` (default ``scale.lr_seeds``, the tuning seeds)."""
    seeds = scale.lr_seeds if seeds is None else seeds
    return [run_config(scale, root, opt, lr, seed=int(s)) for opt, lrs in scale.lrs.items() for lr in lrs
            for s in seeds]


def best_lr(cfgs: Sequence[Any], what: str, hint: str) -> float:
    """The lr of ``cfgs`` (runs of one optimizer over an lr grid, on the tuning seeds) with the lowest mean final
    validation loss; an lr where any seed diverged is out. A missing or corrupt record raises
    :class:`MissingResults` naming it and ``hint`` (the command that trains them): never a choice without it."""
    losses: Dict[float, List[Optional[float]]] = {}
    for cfg in cfgs:
        path = store.record_path(cfg)
        if not path.exists():
            raise MissingResults(f"the learning-rate sweep for {what} is not finished ({path.name} missing): run `{hint}`")
        try:
            rec = store.read_complete_record(path)
        except store.CorruptRecord as e:
            raise CorruptResults(f"cannot tune the lr of {what}: {e} (delete it and rerun `{hint}`)") from None
        losses.setdefault(cfg.lr, []).append(rec["summary"].get("final_val_loss"))
    means = {lr: sum(ls) / len(ls) for lr, ls in losses.items() if all(finite(x) for x in ls)}
    if not means:
        raise MissingResults(f"every run of the learning-rate sweep for {what} diverged")
    return min(means, key=lambda lr: (means[lr], lr))


def tuned_lr(optimizer: str, scale: Scale, root=None) -> float:
    """The lr of the sweep (:func:`lr_sweep_configs`) with the lowest mean final validation loss over
    ``scale.lr_seeds`` for ``optimizer`` (SOAP's variants: SOAP's), by :func:`best_lr`."""
    tuned = "soap" if optimizer.startswith("soap") else optimizer
    if tuned not in scale.lrs:
        raise ValueError(f"no learning-rate grid for {optimizer!r} at scale {scale.name!r}; tuned: {list(scale.lrs)}")
    return best_lr([c for c in lr_sweep_configs(scale, root) if c.optimizer == tuned],
                   f"{tuned} at scale {scale.name!r}", f"python -m soap_lab study run lr_sweep --scale {scale.registered_name}")


_PRETTY = {"adamw": "AdamW", "shampoo": "Shampoo", "adafactor": "Adafactor", "eigen_adafactor": "EigenAdafactor",
           "soap": "SOAP", "soap_factorized": "SOAP factorized", "soap_one_sided": "SOAP one-sided",
           "soap_factorized_one_sided": "SOAP factorized + one-sided", "muon": "Muon"}


def label(config: Any) -> str:
    """A run's optimizer for legends: ``SOAP (eigh)``, ``Shampoo``, ``AdamW``, ``SOAP factorized``, ``Muon``..."""
    d = store.config_dict(config)
    name = d["optimizer"]
    pretty = _PRETTY.get(name, name)
    hp = d.get("hparams") or {}
    if name.startswith("soap") and hp.get("refresh") == "eigh":
        pretty += " (eigh)"
    if hp.get("refresh_policy") not in (None, "fixed"):
        pretty += f" ({hp['refresh_policy']})"
    return pretty


def finite(x: Any) -> bool:
    """A number that is not None, NaN or infinite."""
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


# ============================================================================================ stored runs
@dataclass
class StudyData:
    """The stored runs of one study at one scale."""

    study: str
    scale: Scale
    runs: Any  # DataFrame: one row per stored run (store.load's columns + label, f)
    expected: List[str]
    """Run ids the study consists of."""
    missing: List[str]
    """Run ids whose record is not stored yet."""
    root: Optional[Path] = None
    _curves: Dict[str, Any] = field(default_factory=dict, repr=False)

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
        """The scale, model, steps, device and n, written on every figure."""
        s, r = self.scale, self.runs
        n_params = ""
        if len(r) and "preset" in r:  # the scale's own model (a study may train other presets too)
            r = r[r["preset"].isna() | (r["preset"] == s.preset)]
        if len(r) and "num_params" in r and r["num_params"].notna().any():
            n_params = f", {float(r['num_params'].dropna().median()) / 1e6:.2f}M params"
        seq = f"×{int(r['seq_len_used'].dropna().iloc[0])} tokens" if len(r) and "seq_len_used" in r and \
            r["seq_len_used"].notna().any() else ""
        text = (f"scale {s.name} (preset {s.preset}{n_params}, {s.tokenizer} tokens, {s.steps} steps, batch "
                f"{s.batch_size}{seq}) · device {self.device()}")
        n = int(r["seed"].nunique()) if len(r) and "seed" in r else 0
        text += f" · n = {n} seed{'s' if n != 1 else ''}" + (" (single seed: differences not decided)" if n == 1 else "")
        if self.missing:
            text += f" · {len(self.missing)} of {len(self.expected)} runs missing"
        return text


_FRAMES: Dict[Tuple[str, str], Tuple[Any, Any]] = {}


def _frame(experiment: str, root):
    """``store.load`` of one pool, reused while the pool's files are unchanged (the report reads it per study)."""
    base = store.runs_root(root) / experiment
    stamp = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in base.glob("*.json"))) if base.is_dir() else ()
    key = (experiment, str(root))
    if key not in _FRAMES or _FRAMES[key][0] != stamp:
        _FRAMES[key] = (stamp, store.load(experiment, root))
    return _FRAMES[key][1]


def load(name: str, cfgs: Sequence[Any], scale: Scale, root=None) -> StudyData:
    """The stored runs among ``cfgs`` (a study's configs) at ``scale``, in the configs' order; records under the
    older naming count (matched on the config hash)."""
    import pandas as pd

    ids = [store.run_id(c) for c in cfgs]
    labels = {store.run_id(c): label(c) for c in cfgs}
    by_key = {store.run_key(rid): rid for rid in ids}
    df = _frame(scale.experiment, root)
    if len(df):
        df = df[df["run_key"].isin(by_key)].copy()
        df["run_id"] = df["run_key"].map(by_key)
    else:
        df = pd.DataFrame(columns=["run_id", "run_key"])
    df["label"] = df["run_id"].map(labels)
    df["f"] = df["precondition_frequency"] if "precondition_frequency" in df else None
    order = {rid: i for i, rid in reversed(list(enumerate(ids)))}
    df = df.drop_duplicates("run_id")
    df = df.iloc[sorted(range(len(df)), key=lambda i: order[df["run_id"].iloc[i]])].reset_index(drop=True)
    unique_ids = list(dict.fromkeys(ids))
    present = set(df["run_id"])
    return StudyData(name, scale, df, unique_ids, [r for r in unique_ids if r not in present],
                     Path(root) if root is not None else None)


def by_seed(df) -> Dict[int, Optional[float]]:
    """``{seed: final validation loss}`` of a run table (None where not finite)."""
    return {int(s): (float(v) if finite(v) else None) for s, v in zip(df["seed"], df["final_val_loss"])}
