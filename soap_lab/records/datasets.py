"""Stored data sets that are not run records: the equivalence studies (``data/equivalence/*.json``, computed by
:mod:`soap_lab.equivalence.experiments`) and the timing studies (``data/overhead/overhead_<scale>.json``, :mod:`soap_lab.studies.overhead`).

Each is one JSON object with its provenance (:func:`soap_lab.records.provenance.provenance`), written atomically
with one top-level key per line so that a rerun diffs by key; a table inside it is column-oriented.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping

from . import store

__all__ = ["EQUIVALENCE_DIR", "OVERHEAD_DIR", "CLAIM1_FILE", "GAP_FILE", "save_json", "load_json", "table"]

EQUIVALENCE_DIR = store.REPO_ROOT / "data" / "equivalence"
OVERHEAD_DIR = store.REPO_ROOT / "data" / "overhead"
#: The equivalence data sets under :data:`EQUIVALENCE_DIR`: ``experiments.claim1_study`` and ``experiments.gap_trajectory``.
CLAIM1_FILE = "claim1.json"
GAP_FILE = "gap_trajectory.json"


def save_json(data: Mapping[str, Any], path) -> Path:
    """Write a data set atomically as compact JSON (one top-level key per line; NaN/inf as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(store.json_ready(v), separators=(',', ':'), allow_nan=False, ensure_ascii=False)}"
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


def load_json(path, what: str = "data", make_hint: str = "python -m soap_lab study run --all") -> Dict[str, Any]:
    """Read a stored data set; a missing file raises ``store.MissingResults`` naming the command."""
    path = Path(path)
    if not path.is_file():
        raise store.MissingResults(f"no {what} at {path}: run `{make_hint}`")
    return store.read_record(path)
