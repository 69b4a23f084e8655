"""Every study's claims in one place: the terminal report, ``docs/results.md``, the README's headline, and
``make figures``.

:func:`claim_rows` collects the claims of the chosen studies at a scale (a study without stored results says
so in one line); :func:`terminal` prints them verdicts first, aligned, one block per study; :func:`markdown_page`
is ``docs/results.md`` (generated, never edited by hand: a test fails when it is stale); :func:`headline` is the
README's table of the claims each study marks ``headline``. :func:`draw_all` draws every study's figures from
stored results only.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import stats
from ..records import store
from ..records.store import CorruptResults, MissingResults
from .registry import figures, studies
from .scales import Scale

__all__ = ["claim_rows", "terminal", "markdown_rows", "markdown_page", "headline", "draw_all", "FIGURES_DIR",
           "RESULTS_PAGE", "DRAWN_SCALES"]

FIGURES_DIR = store.REPO_ROOT / "figures"
RESULTS_PAGE = store.REPO_ROOT / "docs" / "results.md"
#: The scales ``make figures`` draws: the seeded CPU scale (the one-seed ``cpu`` records stay and are drawn with
#: ``--scales cpu``: every paper figure has a seeded counterpart that says more) and the GPU scale once it has runs.
DRAWN_SCALES = ("cpu_freq", "gpu")
_VERDICT_ORDER = {stats.CONTRADICTED: 0, stats.REPRODUCED: 1, stats.INCONCLUSIVE: 2}


def claim_rows(scale: Scale, names: Optional[Sequence[str]] = None, root=None) -> Tuple[List[Dict[str, Any]], List[str]]:
    """``(rows, notes)``: the claims of ``names`` (default every study) at ``scale``, each row with its ``study``;
    a study whose results are not stored gives a note instead."""
    rows, notes = [], []
    for name, s in studies().items():
        if (names and name not in names) or s.claims is None:
            continue
        try:
            got = s.claims(scale, root)
        except MissingResults as e:
            notes.append(f"{name}: {e}")
            continue
        rows += [{"study": name, **r} for r in got]
        if not got:
            notes.append(f"{name}: no stored results at scale {scale.name} "
                         f"(`python -m soap_lab study run {name} --scale {scale.registered_name}`)")
    return rows, notes


def _ci(r: Mapping[str, Any], digits: int = 4) -> str:
    return f"[{r['low']:+.{digits}f}, {r['high']:+.{digits}f}]" if r["n"] > 1 else "—"


def _where(r: Mapping[str, Any]) -> str:
    """Where the claim is measured, with the row's ``note`` if any ("2 of 3 seeds extrapolated")."""
    return str(r.get("where", "")) + (f" ({r['note']})" if r.get("note") else "")


def _verdict(r: Mapping[str, Any]) -> str:
    return r["verdict"] + (f" (Holm: {r['holm_verdict']})" if "holm_verdict" in r and
                           r["holm_verdict"] != r["verdict"] else "")


def terminal(rows: Sequence[Mapping[str, Any]], notes: Sequence[str] = (), width: int = 60) -> str:
    """The claims for a terminal: one block per study, verdicts first, aligned columns, long claims shortened."""
    out = []
    for name in dict.fromkeys(r["study"] for r in rows):
        block = sorted((r for r in rows if r["study"] == name), key=lambda r: _VERDICT_ORDER.get(r["verdict"], 3))
        out += ["", f"== {name}: {studies()[name].question}"]
        cells = [(_verdict(r), (r["claim"] if len(r["claim"]) <= width else r["claim"][:width - 1] + "…"),
                  _where(r), f"{r['mean']:+.4f}", _ci(r), f"n={r['n']}") for r in block]
        widths = [max(len(c[i]) for c in cells) for i in range(6)]
        out += ["  ".join(c[i].ljust(widths[i]) for i in range(6)).rstrip() for c in cells]
    if notes:
        out += ["", "not stored yet:"] + [f"  {n}" for n in notes]
    return "\n".join(out).lstrip("\n")


def markdown_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """Claim rows as a Markdown table (every seed's value shown)."""
    out = ["| claim | where | mean | 95% CI | per seed | n | verdict |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join(f"{v:+.4f}" for v in r["values"])
        out.append(f"| {r['claim']} | {_where(r)} | {r['mean']:+.4f} | {_ci(r)} | {seeds} | {r['n']} | "
                   f"{_verdict(r)} |")
    return "\n".join(out)


def markdown_page(scale: Scale, root=None) -> str:
    """``docs/results.md``: per study, its question, the paper's reference, its figures, its claims and tables."""
    rows, notes = claim_rows(scale, root=root)
    figs = figures()
    out = [f"# Results at scale `{scale.name}`", "",
           "Generated from the stored records by `python -m soap_lab study report --scale "
           f"{scale.registered_name} --write docs/results.md`; do not edit by hand (`tests/test_report.py` fails when "
           "this page is stale). Each claim is a paired difference per seed, its mean and 95% Student-t interval; "
           "the verdict follows the interval: **reproduced** (the whole interval on the claimed side), "
           "**contradicted** (the whole interval on the other side) or **inconclusive at this power**."]
    for name, s in studies().items():
        mine = [r for r in rows if r["study"] == name]
        out += ["", f"## {name}: {s.question}", "", f"Paper: {s.paper}."]
        out += [f"![{f}](../figures/{f}.png)" for f, (st, _) in figs.items() if st is s]
        if mine:
            out += ["", markdown_rows(mine)]
        if s.tables is not None:
            try:
                for title, table in s.tables(scale, root):
                    out += ["", f"**{title}**", "", table]
            except MissingResults:
                pass
        out += [line for n in notes if n.startswith(f"{name}:") for line in ("", f"_{n}_")]
    return "\n".join(out) + "\n"


def headline(scale: Scale, root=None) -> str:
    """The README's table: each claim a study marks ``headline``, with its interval and verdict."""
    rows, _ = claim_rows(scale, root=root)
    out = ["| claim | measured (95% CI, n) | verdict | study |", "|---|---|---|---|"]
    for r in rows:
        if r.get("headline"):
            out.append(f"| {r['claim']} ({_where(r)}) | {r['mean']:+.3f} {_ci(r, 3)}, n = {r['n']} | "
                       f"{_verdict(r)} | [{r['study']}](docs/results.md#{r['study']}) |")
    return "\n".join(out)


def draw_all(scales: Mapping[str, Scale], names: Optional[Sequence[str]] = None, root=None, out=None,
             log=print) -> List[str]:
    """``make figures``: every figure of ``names`` (default all) for ``scales``, one line each; a figure without
    results is skipped with one line on stderr naming the command that produces them. Returns the skipped ones."""
    t0, failed = time.perf_counter(), []
    figs = figures()
    names = list(names or figs)
    for name in names:
        study, fn = figs[name]
        t = time.perf_counter()
        try:
            data = {}
            for key, sc in scales.items():
                try:
                    sd = study.data(sc, root)
                except CorruptResults:
                    raise  # the figure cannot be right without that record: say which
                except MissingResults:
                    sd = None
                data[key] = sd if (sd is None or study.measure or len(sd.runs)) else None
            paths = fn(data, Path(out) if out is not None else FIGURES_DIR)
        except (MissingResults, store.CorruptRecord) as e:
            print(f"skipped {name}: {e}", file=sys.stderr)
            failed.append(name)
            continue
        log(f"{paths[0]} (+ .pdf)  [{time.perf_counter() - t:.1f}s]")
    log(f"{len(names) - len(failed)} figures in {time.perf_counter() - t0:.1f}s"
        + (f"; missing results for: {', '.join(failed)}" if failed else ""))
    return failed
