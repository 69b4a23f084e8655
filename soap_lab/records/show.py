"""``python -m soap_lab show RUN...``: a summary of one or several stored runs, and their curves.

A RUN is a record's path, a run id (searched under every experiment of the runs root), or a glob over run ids
(``'soap_f10_*'``; quote it for the shell). One row per run: optimizer, f, lr, seed, steps, final and best
validation loss, the optimizer's other settings (``refresh=eigh``, Shampoo's ``exponent=0.4``...), whether it diverged, training time and where the record lives. ``--plot FILE`` draws the
train loss (thin) and validation loss (markers) of every run against the step, one colour per run.

    python -m soap_lab show soap_f10_lr0.01_s0_b1.0_3a9e1c2f adamw_lr0.01_s0_b1.0_9f0289f5
    python -m soap_lab show 'shampoo_f*' --experiment paper_cpu --plot out/shampoo.png

The command line is in :mod:`soap_lab.cli`.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import store

__all__ = ["find_runs", "summary_rows", "format_table", "plot"]

COLUMNS = ("run_id", "optimizer", "settings", "f", "lr", "seed", "tokens/step", "steps", "final_val", "best_val",
           "diverged", "train_s", "record")


def find_runs(specs: Sequence[str], root: Optional[str] = None, experiment: Optional[str] = None) -> List[Path]:
    """Record paths for ``specs`` (paths, run ids or globs over run ids), in the order given, each once.
    Raises ValueError naming a spec that matches nothing."""
    base = store.runs_root(root)
    pool = sorted((base / experiment).glob("*.json")) if experiment else sorted(base.glob("*/*.json"))
    found: List[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.suffix == ".json" and p.is_file():
            hits = [p]
        else:
            hits = [q for q in pool if fnmatch.fnmatchcase(q.stem, spec)]
        if not hits:
            where = base / experiment if experiment else base
            raise ValueError(f"no run record matches {spec!r} under {where}")
        found += [h for h in hits if h not in found]
    return found


def summary_rows(paths: Sequence[Path]) -> Tuple[List[Dict[str, object]], List[str]]:
    """One summary row per readable record, and a one-line warning per unreadable one."""
    rows, warnings = [], []
    for path in paths:
        try:
            rec = store.read_record(path)
            cfg, s = rec["config"], rec["summary"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.append(f"{path}: unreadable run record ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            continue
        rows.append({
            "run_id": rec.get("run_id", path.stem), "optimizer": cfg.get("optimizer"),
            "settings": ",".join(f"{k}={v}" for k, v in sorted((cfg.get("hparams") or {}).items())) or None,
            "f": cfg.get("precondition_frequency"), "lr": cfg.get("lr"), "seed": cfg.get("seed"),
            "tokens/step": s.get("tokens_per_step"),
            "steps": f"{s.get('steps_done')}/{s.get('steps_total')}", "final_val": s.get("final_val_loss"),
            "best_val": s.get("min_val_loss"), "diverged": s.get("diverged"), "train_s": s.get("wall_time"),
            "record": str(path),
        })
    return rows, warnings


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e3 else f"{v:.0f}"
    return "-" if v is None else str(v)


def format_table(rows: Sequence[Dict[str, object]]) -> str:
    cells = [[_fmt(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def plot(paths: Sequence[Path], out: Path) -> Path:
    """Train (line) and validation (markers) loss of each run against the step, saved to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, path in enumerate(paths):
        rec = store.read_record(path)
        m, color = rec["metrics"], f"C{i % 10}"
        ax.plot(m["step"], m["loss"], lw=0.7, alpha=0.6, color=color)
        ax.plot(m["val_step"], m["val_loss"], "o-", ms=3, color=color, label=rec.get("run_id", path.stem))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (line: train, markers: validation)")
    ax.set_title(f"{len(paths)} run(s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
