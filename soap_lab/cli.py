"""The command lines that own their options: ``show``, ``figures`` and ``ablations`` (subcommands of
``python -m soap_lab``, dispatched by :mod:`soap_lab.__main__`, which parses ``train`` and ``sweep`` itself), and
``python -m soap_lab.freq_study``.

Each ``*_main(argv)`` parses, turns bad values into one-line errors (exit 2), calls one library function and
returns the exit code. Nothing heavy (papermill, seaborn, matplotlib, pandas) is imported here: the GPU machine
may lack them, and each is imported by the library only where it is used.

    python -m soap_lab show 'soap_f10_*' --experiment paper_cpu --plot out/soap.png
    python -m soap_lab figures [--only NAME ...] [--scales cpu gpu]
    python -m soap_lab ablations --scale cpu [--study NAME ...] [--shard i/N]
    python -m soap_lab.freq_study [--scale cpu_freq] [--arms seeded batch long] [--threads 1] [--report]
    python -m soap_lab.freq_study --timing [--repeats 15] [--force]   # the side-by-side timing study
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import ablations, figures, freq_analysis, freq_study, plot_seeds, rerun, seeded_claims, show, sweep
from .notebook import notebook_scale
from .params import ParameterError

__all__ = ["show_main", "figures_main", "ablations_main", "freq_study_main"]


def show_main(argv: Optional[Sequence[str]] = None, prog: str = "python -m soap_lab show") -> int:
    """``show RUN...``: a summary row per stored run; exit 1 when no record could be read."""
    p = argparse.ArgumentParser(prog=prog, description=show.__doc__.split("\n")[0].replace("``", ""),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="record path, run id, or glob over run ids")
    p.add_argument("--runs-root", default=None, help="root of the run records (default <repo>/data/runs)")
    p.add_argument("--experiment", default=None, help="search this experiment only (default: all)")
    p.add_argument("--plot", default=None, metavar="FILE", help="also draw the runs' loss curves to FILE (.png/.pdf)")
    args = p.parse_args(argv)
    try:
        paths = show.find_runs(args.runs, args.runs_root, args.experiment)
    except ValueError as e:
        p.error(str(e))
    rows, warnings = show.summary_rows(paths)
    for w in warnings:
        print(f"soap_lab: warning: {w}", file=sys.stderr)
    if rows:
        print(show.format_table(rows))
    if args.plot and rows:
        print(f"curves -> {show.plot([Path(r['record']) for r in rows], Path(args.plot))}")
    return 0 if rows else 1


def figures_main(argv: Optional[Sequence[str]] = None) -> int:
    """``figures``: redraw every figure from stored results (``figures.draw_all``). Exit 1 if any had no results."""
    p = argparse.ArgumentParser(prog="python -m soap_lab figures",
                                description="Redraw figures/ from stored results (no training).")
    p.add_argument("--runs-root", default=None, help="root of the run records (default <repo>/data/runs)")
    p.add_argument("--figures-dir", default=None, help="output folder (default <repo>/figures)")
    p.add_argument("--equivalence-dir", default=None, help="default <repo>/data/equivalence")
    p.add_argument("--overhead-dir", default=None, help="default <repo>/data/overhead")
    p.add_argument("--only", nargs="+", choices=list(figures.FIGURES), metavar="NAME",
                   help=f"any of: {', '.join(figures.FIGURES)}")
    p.add_argument("--scales", nargs="+", choices=list(ablations.SCALES), default=list(figures.FIGURE_SCALES),
                   help="scales to look for (default: the paper's scales and cpu_freq; a scale without results is "
                        "named on the figures)")
    p.add_argument("--scale-overrides", type=json.loads, default=None, metavar="JSON",
                   help="Scale fields overridden for every scale in --scales (to draw a smoke sweep's results)")
    args = p.parse_args(list(argv) if argv is not None else None)
    try:
        scales = {k: notebook_scale(k, overrides=args.scale_overrides) for k in args.scales}
    except ParameterError as e:
        p.error(str(e))
    failed = figures.draw_all(scales, args.only, args.runs_root, args.figures_dir, args.equivalence_dir,
                              args.overhead_dir)
    return 1 if failed else 0


def ablations_main(argv: Optional[Sequence[str]] = None) -> int:
    """``ablations --scale S --device D [--study X ...] [--shard i/N]``: rerun the experiments (``rerun.run_ablations``)."""
    studies = list(rerun.STUDY_NOTEBOOKS)
    p = argparse.ArgumentParser(prog="python -m soap_lab ablations",
                                description="Rerun the paper's experiments through the notebooks (resumable).")
    p.add_argument("--scale", default="cpu", choices=list(ablations.SCALES))
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the scale's)")
    p.add_argument("--study", action="append", choices=studies, metavar="NAME",
                   help=f"repeatable; default all, in this order: {', '.join(studies)}")
    p.add_argument("--shard", default=None, help="i/N: train grid points i, i+N, ... of each study")
    p.add_argument("--runs-root", default=None, help="root of the run records (default <repo>/data/runs)")
    p.add_argument("--figures-dir", default=None, help="default <repo>/figures")
    p.add_argument("--executed-dir", default=None, help="executed notebooks (default <repo>/notebooks/executed)")
    p.add_argument("--scale-overrides", type=json.loads, default=None, metavar="JSON",
                   help='Scale fields to override, e.g. \'{"steps": 20, "preset": "tiny"}\' (smoke runs)')
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--no-papermill", action="store_true",
                   help="run the studies through soap_lab directly (no notebooks, no figures); automatic without papermill")
    args = p.parse_args(list(argv) if argv is not None else None)
    try:
        sc = notebook_scale(args.scale, device=args.device, overrides=args.scale_overrides,
                            torch_threads=args.torch_threads)
        if args.shard:
            sweep.parse_shard(args.shard)
    except ValueError as e:
        p.error(str(e))
    return rerun.run_ablations(sc, args.scale, args.study, device=args.device, shard=args.shard,
                               runs_root=args.runs_root, figures_dir=args.figures_dir, executed_dir=args.executed_dir,
                               scale_overrides=args.scale_overrides, torch_threads=args.torch_threads,
                               no_papermill=args.no_papermill)


def freq_study_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m soap_lab.freq_study [--scale cpu_freq] [--arms seeded batch long] [--threads 1] [--report]``."""
    p = argparse.ArgumentParser(prog="python -m soap_lab.freq_study", description=freq_study.run.__doc__.split("\n")[0])
    p.add_argument("--scale", default="cpu_freq", choices=list(ablations.SCALES))
    p.add_argument("--arms", nargs="+", default=list(freq_study.ARMS), choices=list(freq_study.ARMS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    p.add_argument("--runs-root", default=None, help="root of the run records (default <repo>/data/runs)")
    p.add_argument("--report", action="store_true", help="print the rise and claim tables of the stored runs; no training")
    p.add_argument("--timing", action="store_true",
                   help="run the side-by-side timing study (AdamW, SOAP and Shampoo at every f; for the wall-clock "
                        "claim) into data/overhead/overhead_<scale>.json; no training. Run it on an idle machine")
    p.add_argument("--repeats", type=int, default=15, help="rounds of the timing study (default 15)")
    p.add_argument("--force", action="store_true", help="let --timing replace a stored timing study")
    args = p.parse_args(argv)
    if args.timing:
        from . import overhead

        sc = ablations.get_scale(args.scale)
        path = overhead.default_path(sc.name)
        if path.exists() and not args.force:
            print(f"{p.prog}: error: {path} exists (a stored result); pass --force to measure it again",
                  file=sys.stderr)
            return 1
        if args.repeats < 2:
            p.error(f"--repeats must be >= 2 (the wall-clock interval is over rounds), got {args.repeats}")
        print(overhead.run(sc, path, shampoo=True, repeats=args.repeats, window=60, fb_reps=20, threads=args.threads))
        return 0
    if args.report:
        datas = plot_seeds.study_datas(ablations.get_scale(args.scale), args.runs_root)
        if not datas:
            print(f"{p.prog}: error: no stored runs of the seeded study at scale {args.scale}", file=sys.stderr)
            return 1
        print(freq_analysis.markdown(freq_analysis.final_losses(datas)))
        print("\n" + seeded_claims.report(ablations.get_scale(args.scale), args.runs_root))
        return 0
    torch.set_num_threads(args.threads)
    try:
        freq_study.run(ablations.get_scale(args.scale), args.arms, args.runs_root, log=lambda m: print(m, flush=True))
    except ablations.MissingResults as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1
    return 0
