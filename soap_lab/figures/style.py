"""The figures' one style and the pieces every figure shares: colours per optimizer, panels per scale, the
footer naming scale, device and caveats, and saving as PNG + PDF (the same bytes on every run and every CPU).

The figures themselves live in their study's file (``soap_lab/studies/*.py``). Every run-based figure takes
``{scale name: StudyData or None}`` and draws one row of panels per scale that has results; a scale without
results is named in the figure's footer together with the command that produces them.
"""
from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import matplotlib.pyplot as plt
import seaborn as sns

from ..records.store import MissingResults

__all__ = ["PALETTE", "MARKERS", "color", "style", "save", "missing_hint", "panel_rows", "footer", "noise_note", "caption",
           "scale_tag", "rounded", "log_axis"]


_C = sns.color_palette("colorblind", 10)
#: One color per optimizer label, the same in every figure.
PALETTE: Dict[str, Any] = {
    "AdamW": _C[0],
    "Shampoo": _C[1],
    "SOAP": _C[2],
    "SOAP (eigh)": _C[4],
    "SOAP factorized": _C[3],
    "SOAP one-sided": _C[5],
    "SOAP factorized + one-sided": _C[6],
    "EigenAdafactor": _C[9],
    "Adafactor": _C[7],
    "Muon": "#7b3294",  # purple: apart from the colorblind palette's ten
}
MARKERS = {"AdamW": "s", "Shampoo": "^", "SOAP": "o", "SOAP (eigh)": "D", "Muon": "P"}


def color(label: str):
    """The colour of an optimizer label (:data:`PALETTE`; grey for any other)."""
    return PALETTE.get(label, "0.4")


def rounded(x, digits: int = 5):
    """``x`` (a number or an array) to ``digits`` significant digits, through its decimal text: what a figure draws
    from a computation (a fit, a mean) is rounded, so that another CPU's round-off cannot change the PDF's bytes."""
    import numpy as np

    fmt = np.vectorize(lambda v: float(f"{v:.{digits}g}") if np.isfinite(v) else v, otypes=[float])
    out = fmt(np.asarray(x, dtype=float))
    return float(out) if np.ndim(x) == 0 else out


@contextlib.contextmanager
def style():
    """The lab's one style (seaborn whitegrid, paper context, colorblind palette), without touching globals."""
    rc = {"axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
          "ytick.labelsize": 8, "figure.dpi": 100, "savefig.dpi": 150, "axes.titleweight": "bold",
          "legend.frameon": True, "legend.framealpha": 0.85}
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", rc=rc), sns.color_palette("colorblind"):
        with plt.rc_context(rc):
            yield


def save(fig, figures_dir, name: str) -> List[Path]:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` and ``.pdf`` (no timestamps, so reruns diff cleanly)."""
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None, "Creator": None, "Producer": None})
    plt.close(fig)
    return paths


def log_axis(ax, ticks, labels=None, base: float = 10) -> None:
    """A logarithmic x axis with a tick at each of ``ticks`` (labelled ``labels``, default ``f"{x:g}"``), no minor
    ticks: frequencies, learning rates, batch sizes."""
    ax.set_xscale("log", base=base)
    ax.set_xticks(list(ticks))
    ax.set_xticklabels(list(labels) if labels is not None else [f"{float(x):g}" for x in ticks])
    ax.minorticks_off()


def missing_hint(scale_name: str, study: str = "") -> str:
    """The command that produces a scale's results (of ``study``, or of every study)."""
    what = study or "--all"
    return f"python -m soap_lab study run {what} --scale {scale_name.split('-')[0]}"


def panel_rows(data: Mapping[str, Any], ncols: int, width: float = 4.6, height: float = 3.4, **kw):
    """A figure with one row of ``ncols`` panels per scale present in ``data``; footer notes for the others."""
    present = [k for k, v in data.items() if v is not None]
    if not present:
        raise MissingResults(
            "no results for any scale: run " + " or ".join(f"`{missing_hint(k)}`" for k in data))
    fig, axes = plt.subplots(len(present), ncols, figsize=(width * ncols, height * len(present)), squeeze=False, **kw)
    notes = [f"scale {k}: no results (run `{missing_hint(k)}`)" for k, v in data.items() if v is None]
    return fig, axes, present, notes


def footer(fig, lines: Sequence[str]) -> None:
    """Small text under the panels: scale, device, caveats (one line each)."""
    lines = list(dict.fromkeys(ln for ln in lines if ln))  # a caption shared by several rows is said once
    if not lines:
        return
    fig.tight_layout()
    bb = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, everything drawn so far (labels included)
    y = bb.y0 / fig.get_figheight() - 0.01
    x = max(bb.x0 / fig.get_figwidth(), 0.0)
    width = max(60, int(fig.get_figwidth() * 17))
    text = "\n".join(textwrap.fill(ln, width, subsequent_indent="    ") for ln in lines)
    fig.text(x, y, text, ha="left", va="top", fontsize=7, color="0.25")


def noise_note(sd) -> str:
    """How noisy the runs' recorded step times are (wall-clock panels): the median per-run coefficient of variation."""
    tr = sd.curves("train")
    if not len(tr):
        return ""
    g = tr.groupby("run_id")["step_time"]
    cv = float((g.std() / g.mean()).median())
    dev = str(sd.scale.device)
    where = "a shared multi-tenant CPU" if dev == "cpu" else dev
    return (f"[{sd.scale.name}] wall-clock = recorded training time per step on {where}; median per-run "
            f"coefficient of variation of the step time {100 * cv:.0f}%" + (" (noisy)" if cv > 0.1 else ""))


def caption(sd) -> str:
    """The scale-and-device line of a study (empty without one)."""
    return sd.caption() if sd is not None else ""


def scale_tag(sd) -> str:
    """``[scale]``, appended to panel titles."""
    return f"[{sd.scale.name}]"
