"""Run records and sweeps.

One training run = one JSON record at ``<root>/<experiment>/<run_id>.json`` (``root`` defaults to
``<repo>/data/runs``). The ``run_id`` is a readable, deterministic function of the run's config
(``soap_f10_lr0.01_s0_b1.0_3f2a9c1e``: optimizer, preconditioning frequency, lr, seed, budget fraction,
then a short hash of the whole config), so a sweep can skip every run whose record already exists: an
interrupted sweep resumes where it stopped and nothing finished is recomputed. Records are written
atomically (a temporary file in the same directory, then ``os.replace``), so a killed process never
leaves a half-written record behind.

A sweep is a grid (optimizers x frequencies x lrs x seeds x budget fractions, on top of one base config);
``shard(grid, i, n)`` hands grid point ``k`` to shard ``k % n``, so ``n`` processes, GPUs or cluster array
jobs split one grid without talking to each other.

``load(experiment)`` reads the records back as a pandas DataFrame (one row per run: flattened config and
summary metrics); ``curves(experiment)`` gives the per-step curves in long format.

This module imports neither torch nor pandas at import time (plotting code reads results without them).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .distributed import broadcast_from_rank0, init_distributed_for
from .optim import takes_frequency

__all__ = [
    "REPO_ROOT",
    "DEFAULT_RUNS_ROOT",
    "config_dict",
    "config_hash",
    "run_id",
    "runs_root",
    "record_path",
    "write_json_atomic",
    "read_record",
    "CorruptRecord",
    "read_complete_record",
    "has_record",
    "iter_records",
    "load",
    "curves",
    "git_info",
    "environment_info",
    "grid",
    "parse_shard",
    "shard",
    "run_sweep",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS_ROOT = REPO_ROOT / "data" / "runs"

# Config fields that do not change what a run computes (where it is written, whether a bar is drawn).
# Where and how a run is written or executed, not what it computes (``zero`` divides the optimizer's work
# across ranks; the results are the same up to round-off, as with the world size, which is no field at all).
_NOT_HASHED = ("experiment", "out_dir", "progress", "save", "zero", "checkpoint_every")


# --------------------------------------------------------------------------------------------- ids


def config_dict(config: Any) -> Dict[str, Any]:
    """A JSON-ready dict of a config (a dataclass such as ``TrainConfig``, or a mapping)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        d = dataclasses.asdict(config)
    elif isinstance(config, Mapping):
        d = dict(config)
    else:
        raise TypeError(f"expected a dataclass or a mapping, got {type(config).__name__}")
    return json.loads(json.dumps(d, default=str))  # tuples -> lists, anything odd -> str


def config_hash(config: Any, length: int = 8) -> str:
    """Short sha256 of the config's content, ignoring where/how it is written (``_NOT_HASHED``).

    Fields that are ``None`` or empty dicts are left out, so adding a new config field whose default is
    ``None`` (or ``{}``) keeps the ids of all existing records.
    """
    d = {
        k: v
        for k, v in config_dict(config).items()
        if k not in _NOT_HASHED and v is not None and v != {}
    }
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _num(x: Any) -> str:
    return repr(float(x)) if isinstance(x, float) else str(x)


def run_id(config: Any) -> str:
    """``<optimizer>[_f<freq>]_lr<lr>_s<seed>_b<budget_fraction>_<hash>``, e.g. ``soap_f10_lr0.01_s0_b1.0_1a2b3c4d``."""
    d = config_dict(config)
    parts = [str(d["optimizer"])]
    if d.get("precondition_frequency") is not None:
        parts.append(f"f{d['precondition_frequency']}")
    parts.append(f"lr{_num(float(d['lr']))}")
    parts.append(f"s{d['seed']}")
    parts.append(f"b{_num(float(d.get('budget_fraction', 1.0)))}")
    parts.append(config_hash(config))
    return "_".join(parts)


def runs_root(root: Optional[os.PathLike] = None) -> Path:
    """``root`` if given, else ``<repo>/data/runs``."""
    return Path(root) if root is not None else DEFAULT_RUNS_ROOT


def record_path(config: Any, root: Optional[os.PathLike] = None) -> Path:
    """Where the record of ``config`` lives: ``<root>/<experiment>/<run_id>.json``.

    ``root`` defaults to the config's ``out_dir`` and then to ``<repo>/data/runs``.
    """
    d = config_dict(config)
    base = runs_root(root if root is not None else d.get("out_dir"))
    return base / str(d["experiment"]) / f"{run_id(config)}.json"


# ----------------------------------------------------------------------------------------- records


def _finite(obj: Any) -> Any:
    """Replace NaN/inf floats by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(obj: Any, path: os.PathLike) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically: temporary file in the same directory, fsync, os.replace.

    Readers see either the old file or the complete new one, never a partial write. Non-finite floats
    are written as null.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_finite(obj), f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; records are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


class CorruptRecord(ValueError):
    """A stored JSON file that cannot be used; the message is one line naming the file and what is wrong."""


def read_record(path: os.PathLike) -> Dict[str, Any]:
    """The JSON object stored at ``path``; unreadable or invalid JSON raises :class:`CorruptRecord` naming the file."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise CorruptRecord(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise CorruptRecord(f"{path}: not UTF-8 text ({e.reason})") from None
    if not isinstance(obj, dict):
        raise CorruptRecord(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


#: What a run record must hold to be used (``train.RunResult.record``).
RECORD_KEYS = ("config", "summary", "metrics")


def read_complete_record(path: os.PathLike) -> Dict[str, Any]:
    """A run record with its config, summary and metrics; anything less raises :class:`CorruptRecord` naming the file."""
    rec = read_record(path)
    missing = [k for k in RECORD_KEYS if not isinstance(rec.get(k), dict)]
    if missing:
        raise CorruptRecord(f"{path}: incomplete run record (no {', '.join(missing)})")
    if "final_val_loss" not in rec["summary"]:
        raise CorruptRecord(f"{path}: incomplete run record (summary has no final_val_loss)")
    return rec


def warn(message: str) -> None:
    """One line on stderr: ``soap_lab: warning: <message>``."""
    print(f"soap_lab: warning: {message}", file=sys.stderr)


def has_record(config: Any, root: Optional[os.PathLike] = None) -> bool:
    """True when a complete, readable record of ``config`` exists."""
    path = record_path(config, root)
    if not path.is_file():
        return False
    try:
        read_complete_record(path)
    except (OSError, CorruptRecord):
        return False
    return True


def iter_records(experiment: str, root: Optional[os.PathLike] = None) -> Iterable[Tuple[Path, Dict[str, Any]]]:
    """(path, record) for every complete record of ``experiment``, sorted by file name.

    A corrupt or incomplete record is skipped with a one-line warning naming the file (:func:`warn`).
    """
    directory = runs_root(root) / experiment
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            rec = read_complete_record(path)
        except CorruptRecord as e:
            warn(f"skipping {e}")
            continue
        yield path, rec


# ------------------------------------------------------------------------------------- DataFrames


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = tuple(v)  # hashable, so groupby works on e.g. betas
        else:
            out[key] = v
    return out


_PROVENANCE_COLUMNS = ("git_commit", "git_dirty", "start_time", "end_time", "world_size")


def _row(path: Path, rec: Mapping[str, Any]) -> Dict[str, Any]:
    row: Dict[str, Any] = {"run_id": rec.get("run_id", path.stem)}
    row.update(_flatten(rec.get("config", {})))
    prov = rec.get("provenance", {})
    for key in _PROVENANCE_COLUMNS:
        row[key] = prov.get(key)
    row["device_name"] = prov.get("device", {}).get("name")
    for k, v in rec.get("summary", {}).items():
        if k in row:
            raise ValueError(f"{path}: summary key {k!r} collides with a config field")
        row[k] = v
    return row


def load(experiment: str, root: Optional[os.PathLike] = None):
    """All records of ``experiment`` as a DataFrame: one row per run.

    Columns: ``run_id``, every config field (nested dicts flattened as ``hparams.<key>``, lists as tuples),
    provenance (``git_commit``, ``git_dirty``, ``start_time``, ``end_time``, ``world_size``,
    ``device_name``) and the summary metrics (``final_val_loss``, ``final_train_loss``, ``steps_done``,
    ``wall_time``, ``opt_time_share``, ``tokens_per_s``, ``optimizer_state_bytes``, ...).
    An experiment with no records gives an empty DataFrame.
    """
    import pandas as pd

    rows = [_row(p, rec) for p, rec in iter_records(experiment, root)]
    return pd.DataFrame(rows)


_TRAIN_CURVE = ("step", "loss", "lr", "time", "step_time", "opt_time", "grad_norm")
_VAL_CURVE = ("val_step", "val_loss", "val_time")


def curves(
    experiment: str,
    root: Optional[os.PathLike] = None,
    which: str = "train",
    with_config: bool = True,
):
    """Per-step curves of ``experiment`` in long format: one row per (run, step).

    ``which="train"``: columns ``run_id, step, loss, lr, time, step_time, opt_time, grad_norm``
    (``time``: training wall-clock seconds so far, evaluation excluded).
    ``which="val"``: columns ``run_id, step, val_loss, time``.
    With ``with_config`` the flattened config columns of each run are joined on (for hue/facets).
    """
    import pandas as pd

    if which not in ("train", "val"):
        raise ValueError(f"which must be 'train' or 'val', got {which!r}")
    keys = _TRAIN_CURVE if which == "train" else _VAL_CURVE
    frames = []
    configs = []
    for path, rec in iter_records(experiment, root):
        m = rec.get("metrics", {})
        cols = {k: m.get(k, []) for k in keys if k in m}
        if not cols:
            continue
        df = pd.DataFrame(cols)
        if which == "val":
            df = df.rename(columns={"val_step": "step", "val_time": "time"})
        rid = rec.get("run_id", path.stem)
        df.insert(0, "run_id", rid)
        frames.append(df)
        configs.append({"run_id": rid, **_flatten(rec.get("config", {}))})
    if not frames:
        return pd.DataFrame(columns=["run_id", *(k for k in keys)])
    out = pd.concat(frames, ignore_index=True)
    if with_config:
        cfg = pd.DataFrame(configs)
        cfg = cfg[[c for c in cfg.columns if c == "run_id" or c not in out.columns]]
        out = out.merge(cfg, on="run_id", how="left")
    return out


# -------------------------------------------------------------------------------------- provenance


def git_info(repo: os.PathLike = REPO_ROOT) -> Dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding soap_lab.

    Read-only: ``--no-optional-locks`` keeps ``git status`` from touching the index. ``dirty`` means a
    tracked file differs from HEAD (untracked files, such as new run records, do not count).
    """
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(
                ["git", "--no-optional-locks", "-C", str(repo), *args],
                capture_output=True, text=True, timeout=20,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit.strip() if commit else None,
        "dirty": (status.strip() != "") if status is not None else None,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("soap-lab")
    except Exception:  # not installed (run from a plain checkout)
        import soap_lab

        return getattr(soap_lab, "__version__", "unknown")


def environment_info(device: Any = "cpu") -> Dict[str, Any]:
    """Device (type, name, CPU model, GPU model), torch/python/soap_lab versions, host platform."""
    import torch

    dev = torch.device(device)
    info: Dict[str, Any] = {
        "type": dev.type,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["name"] = info["gpu"]
    else:
        info["name"] = info["cpu"]
    return {
        "device": info,
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "soap_lab_version": _package_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ sweeps


def grid(
    base: Any,
    optimizers: Optional[Sequence[str]] = None,
    frequencies: Optional[Sequence[Optional[int]]] = None,
    lrs: Optional[Sequence[float]] = None,
    seeds: Optional[Sequence[int]] = None,
    budget_fractions: Optional[Sequence[float]] = None,
    optimizer_hparams: Optional[Mapping[str, Mapping[str, Any]]] = None,
    **fixed: Any,
) -> List[Any]:
    """The configs of a sweep, in a fixed order (optimizer, then frequency, lr, seed, budget fraction).

    ``base`` is a ``TrainConfig``; ``fixed`` overrides its fields for every point (e.g. ``batch_size=64``).
    An axis left as ``None`` keeps the base value. Frequencies apply only to optimizers that take a
    ``precondition_frequency`` (``soap_lab.optim.takes_frequency``); the others get ``None`` once, not once per
    frequency. ``optimizer_hparams[name]`` is merged over ``base.hparams`` for optimizer ``name`` only
    (e.g. Shampoo's ``exponent``). Points are unique by run id.
    """
    base = dataclasses.replace(base, **fixed)
    opts = list(optimizers) if optimizers else [base.optimizer]
    freqs = list(frequencies) if frequencies else [base.precondition_frequency]
    out: List[Any] = []
    seen = set()
    per_opt = dict(optimizer_hparams or {})
    for opt in opts:
        opt_freqs = freqs if takes_frequency(opt) else [None]
        hparams = {**base.hparams, **per_opt.get(opt, {})}
        for f in opt_freqs:
            for lr in (lrs or [base.lr]):
                for seed in (seeds or [base.seed]):
                    for bf in (budget_fractions or [base.budget_fraction]):
                        cfg = dataclasses.replace(
                            base, optimizer=opt, precondition_frequency=f, lr=float(lr),
                            seed=int(seed), budget_fraction=float(bf), hparams=dict(hparams),
                        )
                        rid = run_id(cfg)
                        if rid not in seen:
                            seen.add(rid)
                            out.append(cfg)
    return out


def parse_shard(spec: str) -> Tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N`` (0-based, as SLURM_ARRAY_TASK_ID=0..N-1)."""
    try:
        i_s, n_s = str(spec).split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"bad shard spec {spec!r}: expected i/N with integers 0 <= i < N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"bad shard spec {spec!r}: expected i/N with 0 <= i < N (allowed i: 0..{max(n, 1) - 1})")
    return i, n


def shard(items: Sequence[Any], index: int, count: int) -> List[Any]:
    """Grid point ``k`` belongs to shard ``k % count``: the shards partition the grid, sizes differ by <= 1."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index must satisfy 0 <= index < count, got {index}/{count}")
    return list(items[index::count])


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def run_sweep(
    configs: Sequence[Any],
    train_fn: Optional[Callable[[Any], Any]] = None,
    skip_existing: bool = True,
    after_run: Optional[Callable[[Any, Any], None]] = None,
    log: Optional[Callable[[str], None]] = print,
) -> List[Dict[str, Any]]:
    """Train every config whose record does not exist yet; returns ``[{"run_id", "status", "path"}]``.

    ``status`` is ``"skipped"`` (record found) or ``"done"``. Exceptions propagate (the sweep stops; rerun
    it to resume). ``after_run(config, result)`` is called after each run that trained. Under torchrun
    (WORLD_SIZE > 1) rank 0 decides what to skip and tells the others, so all ranks train the same runs.
    """
    from . import train as train_mod

    train_fn = train_fn or train_mod.train
    rank, _world, _local = init_distributed_for(configs[0] if configs else None)
    out: List[Dict[str, Any]] = []
    to_train = sum(1 for c in configs if not (skip_existing and has_record(c))) if log else 0
    trained, spent = 0, 0.0
    for n, cfg in enumerate(configs, 1):
        rid = run_id(cfg)
        path = record_path(cfg)
        skip = skip_existing and has_record(cfg)
        skip = broadcast_from_rank0(skip)
        if skip:
            if log and rank == 0:
                log(f"[{n}/{len(configs)}] skip {rid} (record exists)")
            out.append({"run_id": rid, "status": "skipped", "path": str(path)})
            continue
        if log and rank == 0:
            eta = (f"ETA {_duration(spent / trained * (to_train - trained))}" if trained
                   else "ETA after the first run")
            log(f"[{n}/{len(configs)}] run  {rid}  ({trained} of {to_train} to train done, {eta})")
        t0 = time.perf_counter()
        result = train_fn(cfg)
        trained, spent = trained + 1, spent + time.perf_counter() - t0
        out.append({"run_id": rid, "status": "done", "path": str(path)})
        if after_run is not None:
            after_run(cfg, result)
    return out
