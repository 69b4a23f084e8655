"""Run records: ids, paths, atomic writes, reading them back.

One training run = one JSON record at ``<root>/<experiment>/<run_id>.json`` (``root`` defaults to
``<repo>/data/runs``). The ``run_id`` is a readable, deterministic function of the run's config
(``soap_f10_lr0.01_bs16_s0_budget1.0_3f2a9c1e``: optimizer, preconditioning frequency, refresh where set, lr,
batch size, seed, budget fraction, then a short hash of the whole config, which alone identifies the run), so a sweep (:mod:`soap_lab.records.sweep`) can skip every run whose record
already exists: an interrupted sweep resumes where it stopped and nothing finished is recomputed. Records are
written atomically (a temporary file in the same directory, then ``os.replace``), so a killed process never
leaves a half-written record behind.

``load(experiment)`` reads the records back as a pandas DataFrame (one row per run: flattened config and
summary metrics); ``curves(experiment)`` gives the per-step curves in long format. Where a record's provenance
comes from: :mod:`soap_lab.records.provenance`.

This module imports neither torch nor pandas at import time (plotting code reads results without them).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

__all__ = [
    "REPO_ROOT",
    "DEFAULT_RUNS_ROOT",
    "config_dict",
    "config_hash",
    "run_id",
    "run_key",
    "runs_root",
    "record_path",
    "json_ready",
    "write_json_atomic",
    "read_record",
    "CorruptRecord",
    "read_complete_record",
    "has_record",
    "iter_records",
    "load",
    "curves",
]


REPO_ROOT = Path(__file__).resolve().parents[2]
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
    """``<optimizer>[_f<freq>][_<refresh>][_<policy>]_lr<lr>_bs<batch>_s<seed>_budget<fraction>_<hash>``, e.g.
    ``soap_f10_lr0.01_bs16_s0_budget1.0_1a2b3c4d``; the refresh appears when the config sets one (``eigh``), the
    refresh policy when it is not the paper's fixed one (``adaptive0.03``: τ = 0.03; ``staggered``).

    Records written before commit 9e0877d are named ``<optimizer>[_f<freq>]_lr<lr>_s<seed>_b<fraction>_<hash>``;
    the hash (:func:`run_key`) is what identifies a run, so :func:`record_path` and the analysis find them too.
    """
    d = config_dict(config)
    parts = [str(d["optimizer"])]
    if d.get("precondition_frequency") is not None:
        parts.append(f"f{d['precondition_frequency']}")
    hp = d.get("hparams") or {}
    if hp.get("refresh"):
        parts.append(str(hp["refresh"]))
    if hp.get("refresh_policy") not in (None, "fixed"):
        parts.append(f"{hp['refresh_policy']}{_num(float(hp.get('refresh_tolerance', 0.0)))}"
                     if hp["refresh_policy"] == "adaptive" else str(hp["refresh_policy"]))
    parts.append(f"lr{_num(float(d['lr']))}")
    parts.append(f"bs{d['batch_size']}")
    parts.append(f"s{d['seed']}")
    parts.append(f"budget{_num(float(d.get('budget_fraction', 1.0)))}")
    parts.append(config_hash(config))
    return "_".join(parts)


def run_key(rid: str) -> str:
    """The config hash that ends a run id: the same in today's names and in those of older records."""
    return str(rid).rsplit("_", 1)[-1]


def runs_root(root: Optional[os.PathLike] = None) -> Path:
    """``root`` if given, else ``<repo>/data/runs``."""
    return Path(root) if root is not None else DEFAULT_RUNS_ROOT


def record_path(config: Any, root: Optional[os.PathLike] = None) -> Path:
    """Where the record of ``config`` lives: ``<root>/<experiment>/<run_id>.json`` (or the file of the same run
    under the older naming, when that is the one stored).

    ``root`` defaults to the config's ``out_dir`` and then to ``<repo>/data/runs``.
    """
    d = config_dict(config)
    base = runs_root(root if root is not None else d.get("out_dir")) / str(d["experiment"])
    path = base / f"{run_id(config)}.json"
    if not path.exists() and base.is_dir():  # a record written under the older naming keeps its file name
        legacy = sorted(base.glob(f"*_{config_hash(config)}.json"))
        if legacy:
            return legacy[0]
    return path


# ----------------------------------------------------------------------------------------- records


def json_ready(obj: Any) -> Any:
    """Replace NaN/inf floats by None, recursively (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
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
            json.dump(json_ready(obj), f, indent=1, allow_nan=False)
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


class MissingResults(RuntimeError):
    """Results a study or figure needs are not stored yet (the message names the command that produces them)."""


class CorruptResults(MissingResults):
    """A record a study needs is stored but corrupt or incomplete (the message names the file)."""


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
    rid = rec.get("run_id", path.stem)
    row: Dict[str, Any] = {"run_id": rid, "run_key": run_key(rid), "record": str(path)}
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
        df.insert(0, "run_key", run_key(rid))
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
