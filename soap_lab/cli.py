"""The command line, ``python -m soap_lab`` (or ``soap-lab``):

    train     one run -> data/runs/<experiment>/<run id>.json (resumable; Ctrl-C checkpoints)
    sweep     a grid of runs (resumable, ``--shard i/N`` splits it over processes)
    study     list | run NAME... | report [NAME...]: the lab's questions (soap_lab/studies/, one file each)
    figures   redraw figures/ from stored results only (``make figures``)
    show      summarize stored runs (and plot their curves)

Bad values stop with one line before any training (exit 2); a run whose loss turns non-finite exits 3; an
interrupted one exits 130 after writing a checkpoint. Heavy packages (matplotlib, papermill) are imported only
where a command uses them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["main"]


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)", but not for options whose help already says what unset means."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (the usage is for ``--help``)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _kv(text: str) -> tuple:
    """``KEY=VALUE``, VALUE read as JSON where it reads (numbers, true/false, lists), else kept as text."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def _prog() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "soap-lab" if name.startswith("soap-lab") else "python -m soap_lab"


# ================================================================================================ train, sweep
def _run_options(p: argparse.ArgumentParser) -> None:
    from .optim import OPTIMIZERS
    from .train.config import DTYPES, PRECISIONS, TrainConfig, preset_names
    from .train.data import CORPORA, TOKENIZERS

    d = TrainConfig()
    g = p.add_argument_group("run (defaults: TrainConfig's)")
    g.add_argument("--experiment", default=d.experiment, help="records go to <runs-root>/<experiment>/")
    g.add_argument("--betas", type=float, nargs=2, default=list(d.betas), metavar=("B1", "B2"), help="(β1, β2)")
    g.add_argument("--eps", type=float, default=d.eps, help="optimizer ε (unset: the optimizer's default)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="decoupled weight decay (unset: the optimizer's)")
    g.add_argument("--hparam", type=_kv, action="append", default=[], metavar="[NAME:]KEY=VALUE",
                   help="another optimizer keyword, e.g. refresh=eigh; NAME: only for that optimizer, e.g. "
                        f"shampoo:exponent=0.4 (repeatable; optimizers: {', '.join(OPTIMIZERS)})")
    g.add_argument("--preset", default=d.preset, choices=preset_names(), help="model size")
    g.add_argument("--model", type=_kv, action="append", default=[], metavar="KEY=VALUE", help="GPTConfig override")
    g.add_argument("--corpus", default=d.corpus, metavar="NAME|FILE|hf:DATASET",
                   help=f"{', '.join(CORPORA)}, a UTF-8 text file, or hf:NAME_OR_PATH")
    g.add_argument("--tokenizer", default=d.tokenizer, choices=TOKENIZERS)
    g.add_argument("--vocab-size", type=int, default=d.vocab_size, help="BPE vocabulary (ignored by char)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global micro-batch (sequences)")
    g.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per sequence (unset: the model's context)")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step")
    g.add_argument("--steps", type=int, default=d.steps, help="steps of the full budget")
    g.add_argument("--warmup-fraction", type=float, default=d.warmup_fraction)
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="overrides the fraction")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    g.add_argument("--precision", default=d.precision, choices=PRECISIONS, help="auto: bf16 autocast on CUDA")
    g.add_argument("--dtype", default=d.dtype, choices=DTYPES, help="parameter dtype (unset: float32)")
    g.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    g.add_argument("--zero", action="store_true", help="ZeRO-1 under torchrun (cost-balanced optimizer state)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="steps between checkpoints (unset: 100; 0: only on a signal)")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="0: at the end only")
    g.add_argument("--eval-batches", type=int, default=d.eval_batches)
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="unset: --batch-size")
    g.add_argument("--clip", type=float, default=d.clip, help="0 disables clipping")
    g.add_argument("--threads", type=int, default=None, help="torch threads (1 per process on a shared CPU)")
    g.add_argument("--runs-root", default=d.out_dir, help="root of the run records (unset: <repo>/data/runs)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-save", action="store_true", help="write no record")


def _hparams(pairs) -> tuple:
    from .optim import OPTIMIZERS

    common: Dict[str, Any] = {}
    per: Dict[str, Dict[str, Any]] = {}
    for key, value in pairs:
        if ":" in key:
            name, key = key.split(":", 1)
            if name not in OPTIMIZERS:
                raise ValueError(f"--hparam {name}:{key}: unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
            per.setdefault(name, {})[key] = value
        else:
            common[key] = value
    return common, per


def _config(a, hparams: Dict[str, Any], **extra: Any):
    from .train.config import TrainConfig

    return TrainConfig(
        experiment=a.experiment, betas=tuple(a.betas), eps=a.eps, weight_decay=a.weight_decay, hparams=hparams,
        preset=a.preset, model_overrides=dict(a.model), corpus=a.corpus, tokenizer=a.tokenizer,
        vocab_size=a.vocab_size, batch_size=a.batch_size, seq_len=a.seq_len, grad_accum=a.grad_accum, steps=a.steps,
        warmup_fraction=a.warmup_fraction, warmup_steps=a.warmup_steps, device=a.device, precision=a.precision,
        dtype=a.dtype, compile=a.compile, zero=True if a.zero else None, checkpoint_every=a.checkpoint_every,
        eval_every=a.eval_every, eval_batches=a.eval_batches, eval_batch_size=a.eval_batch_size,
        clip=a.clip if a.clip else None, progress=not a.no_progress, save=not a.no_save, out_dir=a.runs_root, **extra)


def _report(result) -> None:
    if os.environ.get("RANK", "0") != "0":
        return
    s = result.summary
    val = s.get("final_val_loss")
    print(f"{result.run_id}: val {val if val is None else round(val, 4)}  train {s['final_train_loss']:.4f}  "
          f"{s['steps_done']} steps  {s['wall_time']:.1f}s (optimizer {100 * (s['opt_time_share'] or 0):.0f}%)"
          + (f"  -> {result.record_path}" if result.record_path else ""))


def _train_or_sweep(a, p) -> int:
    from .records import store, sweep
    from .train.checkpoint import RunInterrupted
    from .train.data import DataError
    from .train.distributed import destroy_distributed
    from .train.loop import train

    try:
        if a.zero and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            raise ValueError("--zero needs a process group: run under torchrun with --nproc_per_node > 1")
        common, per = _hparams(a.hparam)
        if a.command == "train":
            cfgs = [_config(a, {**common, **per.get(a.optimizer, {})}, optimizer=a.optimizer, lr=a.lr,
                            precondition_frequency=a.precondition_frequency, seed=a.seed,
                            budget_fraction=a.budget_fraction)]
        else:
            i, n = sweep.parse_shard(a.shard)
            cfgs = sweep.shard(sweep.grid(_config(a, common), optimizers=a.optimizers, frequencies=a.frequencies,
                                          lrs=a.lrs, seeds=a.seeds, budget_fractions=a.budget_fractions,
                                          optimizer_hparams=per), i, n)
        for c in cfgs:
            c.validate()
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
    except ValueError as e:
        p.error(str(e))
    try:
        if a.command == "train":
            if a.skip_existing and store.has_record(cfgs[0]):
                print(f"{store.run_id(cfgs[0])}: record exists at {store.record_path(cfgs[0])}")
                return 0
            result = train(cfgs[0])
            _report(result)
            if result.summary.get("diverged"):
                saved = "recorded with diverged=true" if cfgs[0].save else "nothing written (--no-save)"
                print(f"{p.prog}: run diverged: non-finite loss at step {result.summary['steps_done']} ({saved}); "
                      "try a smaller --lr", file=sys.stderr)
                return 3
            return 0
        if os.environ.get("RANK", "0") == "0":
            print(f"shard {a.shard}: {len(cfgs)} runs")
        if a.dry_run:
            for c in cfgs:
                print(f"  {'done' if store.has_record(c) else 'todo'}  {store.record_path(c)}")
            return 0
        sweep.run_sweep(cfgs, skip_existing=not a.force, after_run=lambda c, r: _report(r))
        return 0
    except (DataError, ValueError) as e:
        print(f"{p.prog}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    except RunInterrupted as e:  # every rank stopped after the same step, its checkpoint written
        print(f"{p.prog}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second Ctrl-C: this rank may be mid-collective, so its group is left as is
        print(f"{p.prog}: interrupted", file=sys.stderr)
        raise SystemExit(130)
    finally:
        # The ranks finished together: end the process group now, not at the interpreter's exit, where a gloo
        # worker thread can abort a rank after its work is done (soap_lab/train/distributed.py).
        if sys.exc_info()[1] is None:  # after an unexpected error or a bare Ctrl-C a rank may be mid-collective
            destroy_distributed()


# ======================================================================================== study, figures, show
def _scales(names: Sequence[str], sets, device: Optional[str] = None) -> Dict[str, Any]:
    from .studies.registry import scale_from

    return {n: scale_from(n, dict(sets), device) for n in names}


def _study(a, p) -> int:
    from .records import sweep
    from .records.store import MissingResults
    from .studies import registry, report
    from .studies.params import ParameterError

    try:
        for f in a.study_file or []:
            registry.load_file(f)
        if a.action == "list":
            for name, s in registry.studies().items():
                print(f"{name:14s} {s.question}  [{s.paper}; figures: {', '.join(s.figures) or '-'}]")
            return 0
        names = list(registry.studies()) if a.all or (a.action == "report" and not a.names) else a.names
        if not names:
            raise ParameterError("name a study (python -m soap_lab study list) or pass --all")
        chosen = [registry.get(n) for n in names]
        sc = _scales([a.scale], a.set, getattr(a, "device", None))[a.scale]
        if a.action == "report":
            if a.write:
                print("wrote " + ", ".join(map(str, report.write_results(sc, a.write, a.runs_root))))
            elif a.markdown:
                print(report.markdown_page(sc, a.runs_root))
            else:
                print(report.terminal(*report.claim_rows(sc, names, a.runs_root)))
            return 0
        shard = sweep.parse_shard(a.shard) if a.shard else None
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        for s in chosen:
            if s.measure is not None:
                try:
                    print(f"{s.name}: wrote {s.measure(sc, force=a.force)}")
                except ParameterError as e:  # a stored data set: --all goes on with the other studies
                    if not a.all:
                        raise
                    print(f"{s.name}: skipped ({e})")
            elif a.dry_run:
                for c in s.configs(sc, a.runs_root):
                    from .records import store

                    print(f"  {'done' if store.has_record(c) else 'todo'}  {store.record_path(c)}")
            else:
                registry.train(s, sc, a.runs_root, shard, log=lambda m: print(m, flush=True))
        return 0
    except (ParameterError, ValueError) as e:
        p.error(str(e))
    except MissingResults as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"{p.prog}: {e or 'interrupted'}", file=sys.stderr)
        return 130


def _figures(a, p) -> int:
    from .studies import registry, report
    from .studies.params import ParameterError

    try:
        for f in a.study_file or []:
            registry.load_file(f)
        figs = registry.figures()
        bad = [n for n in a.only or [] if n not in figs]
        if bad:
            raise ParameterError(f"unknown figure {bad[0]!r}; allowed: {', '.join(figs)}")
        scales = _scales(a.scales, a.set)
    except (ParameterError, ValueError) as e:
        p.error(str(e))
    from .studies.scales import is_registered

    out = a.figures_dir
    if out is None and not all(is_registered(s) for s in scales.values()):
        out = os.path.join("out", "figures", "+".join(s.name for s in scales.values()))  # never the committed ones
    return 1 if report.draw_all(scales, a.only, a.runs_root, out) else 0


def _show(a, p) -> int:
    from .records import show

    try:
        paths = show.find_runs(a.runs, a.runs_root, a.experiment)
    except ValueError as e:
        p.error(str(e))
    rows, warnings = show.summary_rows(paths)
    for w in warnings:
        print(f"{p.prog}: warning: {w}", file=sys.stderr)
    if rows:
        print(show.format_table(rows))
    if a.plot and rows:
        from pathlib import Path

        print(f"curves -> {show.plot([Path(r['record']) for r in rows], Path(a.plot))}")
    return 0 if rows else 1


def build_parser() -> argparse.ArgumentParser:
    from .optim import OPTIMIZERS
    from .studies.scales import SCALES

    p = _Parser(prog=_prog(), description="soap-lab: train, sweep, run the studies and draw the figures of the SOAP "
                                          "paper (Vyas et al. 2024).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    fmt = _DefaultsFormatter
    t = sub.add_parser("train", help="train one run and write its record", formatter_class=fmt)
    t.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS, metavar="NAME", help=", ".join(OPTIMIZERS))
    t.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (warmup from 0.1·lr, cosine to 0.1·lr)")
    t.add_argument("--precondition-frequency", "-f", type=int, default=None, help="f (unset: the optimizer's default)")
    t.add_argument("--seed", type=int, default=0, help="model init and batch order")
    t.add_argument("--budget-fraction", type=float, default=1.0, help="this fraction of --steps, schedule fitted to it")
    t.add_argument("--skip-existing", action="store_true", help="do nothing if the record exists")
    _run_options(t)
    s = sub.add_parser("sweep", help="train a grid of runs (resumable, shardable)", formatter_class=fmt)
    s.add_argument("--optimizers", nargs="+", default=["adamw"], choices=OPTIMIZERS, metavar="NAME", help=", ".join(OPTIMIZERS))
    s.add_argument("--frequencies", nargs="+", type=int, default=None, help="only for optimizers that take one")
    s.add_argument("--lrs", nargs="+", type=float, default=[3e-3])
    s.add_argument("--seeds", nargs="+", type=int, default=[0])
    s.add_argument("--budget-fractions", nargs="+", type=float, default=[1.0])
    s.add_argument("--shard", default="0/1", help="i/N: grid points i, i+N, ...")
    s.add_argument("--dry-run", action="store_true", help="list this shard's runs and whether each is done")
    s.add_argument("--force", action="store_true", help="rerun runs whose record exists")
    _run_options(s)
    st = sub.add_parser("study", help="list, run and report the lab's studies")
    st.add_argument("action", choices=("list", "run", "report"))
    st.add_argument("names", nargs="*", metavar="NAME", help="studies (python -m soap_lab study list)")
    st.add_argument("--all", action="store_true", help="every study (run: in the results page's order)")
    st.add_argument("--scale", default="cpu_freq", choices=list(SCALES))
    st.add_argument("--set", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                    help="override a scale field or a study parameter (the scale becomes <name>-<hash>: its runs go "
                         "to their own pool, never the committed one), e.g. --set steps=20 --set frequencies=[1,10]")
    st.add_argument("--device", default=None, help="cpu, cuda, cuda:N (unset: the scale's)")
    st.add_argument("--shard", default=None, help="run: i/N, grid points i, i+N, ...")
    st.add_argument("--threads", type=int, default=None, help="run: torch threads (1 per process on a shared CPU)")
    st.add_argument("--dry-run", action="store_true", help="run: list the runs and whether each is stored")
    st.add_argument("--force", action="store_true", help="run: measure again a study of measured data that is stored")
    st.add_argument("--markdown", action="store_true", help="report: the results page's Markdown")
    st.add_argument("--write", default=None, metavar="FILE",
                    help="report: write the results page to FILE (docs/results.md also refreshes the README's headline)")
    st.add_argument("--runs-root", default=None, help="root of the run records (unset: <repo>/data/runs)")
    st.add_argument("--study-file", action="append", metavar="FILE", help="also register the study in FILE")
    f = sub.add_parser("figures", help="redraw figures/ from stored results (no training)")
    f.add_argument("--only", nargs="+", metavar="NAME", help="these figures only")
    f.add_argument("--scales", nargs="+", default=["cpu_freq", "gpu"], choices=list(SCALES),
                   help="one row of panels per scale with results")
    f.add_argument("--set", type=_kv, action="append", default=[], metavar="KEY=VALUE", help="as for study")
    f.add_argument("--runs-root", default=None)
    f.add_argument("--figures-dir", default=None, help="unset: figures/ (out/figures/... for overridden scales)")
    f.add_argument("--study-file", action="append", metavar="FILE", help="also register the study in FILE")
    sh = sub.add_parser("show", help="summarize stored runs and plot their curves")
    sh.add_argument("runs", nargs="+", metavar="RUN", help="record path, run id, or glob over run ids")
    sh.add_argument("--runs-root", default=None)
    sh.add_argument("--experiment", default=None, help="this experiment only (e.g. paper_cpu_freq)")
    sh.add_argument("--plot", default=None, metavar="FILE", help="also draw the loss curves to FILE (.png/.pdf)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = build_parser()
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    sub = p._subparsers._group_actions[0].choices[a.command]  # type: ignore[union-attr]
    handler = {"train": _train_or_sweep, "sweep": _train_or_sweep, "study": _study, "figures": _figures,
               "show": _show}[a.command]
    return handler(a, sub)
