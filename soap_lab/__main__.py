"""Command line: ``python -m soap_lab {train,sweep,show,figures,ablations}``.

    python -m soap_lab train --optimizer soap --precondition-frequency 10 --preset cpu --steps 300
    python -m soap_lab sweep --experiment lr_sweep --optimizers adamw soap --frequencies 10 100 \\
        --lrs 1e-3 3e-3 --seeds 0 1 --budget-fractions 0.5 1.0 --batch-size 32 --shard 0/4

A sweep skips runs whose record exists, so rerunning an interrupted sweep resumes it; ``--shard i/N``
takes grid points i, i+N, i+2N, ... so N processes split one grid without coordination.
``show``, ``figures`` and ``ablations`` own their options (:mod:`soap_lab.cli`).
Nothing heavy (papermill, seaborn) is imported here: the GPU machine may lack them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence


def _kv(text: str) -> tuple:
    """``KEY=VALUE`` with VALUE parsed as JSON when it parses (numbers, true/false, lists), else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def _split_hparams(pairs) -> tuple:
    """``[(key, value)]`` -> (hparams for every optimizer, {optimizer: hparams}) from ``[NAME:]KEY`` keys."""
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


def _presets() -> Optional[List[str]]:
    from .train_config import preset_names

    p = preset_names()
    return list(p) if p is not None else None


def _add_common(p: argparse.ArgumentParser) -> None:
    from .train_config import DTYPES, PRECISIONS, TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("run (defaults: TrainConfig's)")
    g.add_argument("--experiment", default=d.experiment, help="records go to <runs-root>/<experiment>/")
    g.add_argument("--betas", type=float, nargs=2, default=list(d.betas), metavar=("B1", "B2"), help="(β1, β2)")
    g.add_argument("--eps", type=float, default=d.eps, help="optimizer ε (None: the optimizer's default)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="decoupled weight decay (None: the optimizer's default)")
    g.add_argument("--hparam", type=_kv, action="append", default=[], metavar="[NAME:]KEY=VALUE",
                   help="other optimizer keyword, e.g. refresh=eigh; with NAME: only for that optimizer, "
                        "e.g. shampoo:exponent=0.4 (the paper's L^-1/2.5 baseline; repeatable)")
    presets = _presets()
    g.add_argument("--preset", default=d.preset, choices=presets, help="model size")
    g.add_argument("--model", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="GPTConfig override, e.g. n_layer=2 (repeatable)")
    try:
        from .data import CORPORA, TOKENIZERS
    except ImportError:
        CORPORA = TOKENIZERS = None
    g.add_argument("--corpus", default=d.corpus, metavar="NAME|FILE|hf:DATASET",
                   help=f"training text: {', '.join(CORPORA or ())}, a UTF-8 text file, or hf:NAME_OR_PATH "
                        "(a datasets dataset's text field)")
    g.add_argument("--tokenizer", default=d.tokenizer, choices=TOKENIZERS, help="character or BPE")
    g.add_argument("--vocab-size", type=int, default=d.vocab_size, help="BPE vocabulary (ignored by char)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global micro-batch (sequences)")
    g.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per sequence (None: the model's context)")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step")
    g.add_argument("--steps", type=int, default=d.steps, help="steps of the full budget")
    g.add_argument("--warmup-fraction", type=float, default=d.warmup_fraction, help="warmup as a fraction of the run")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="warmup in steps (overrides the fraction)")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    g.add_argument("--precision", default=d.precision, choices=PRECISIONS, help="auto: bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--dtype", default=d.dtype, choices=DTYPES, help="parameter dtype (default float32)")
    g.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    g.add_argument("--zero", action="store_true",
                   help="ZeRO-1 under torchrun: each rank keeps and steps only its (cost-balanced) share of the "
                        "optimizer state")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="steps between checkpoints beside the record (also written on Ctrl-C/SIGTERM; rerunning the "
                        "same command resumes); default 100, 0: only on a signal")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="validation every N steps (0: at the end only)")
    g.add_argument("--eval-batches", type=int, default=d.eval_batches, help="fixed validation batches")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="sequences per validation batch (None: --batch-size)")
    g.add_argument("--clip", type=float, default=d.clip, help="0 disables clipping")
    g.add_argument("--runs-root", default=d.out_dir, help="root of the run records (default <repo>/data/runs)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-save", action="store_true", help="do not write a record")


def _prog() -> str:
    """How the program was called: ``soap-lab`` (the console script) or ``python -m soap_lab``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "soap-lab" if name.startswith("soap-lab") else "python -m soap_lab"


def build_parser() -> argparse.ArgumentParser:
    from .optim import OPTIMIZERS

    parser = argparse.ArgumentParser(prog=_prog(), description="soap-lab: train, sweep, draw figures and rerun "
                                     "the ablations of the SOAP paper (Vyas et al. 2024).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    t = sub.add_parser("train", help="train one run and write its record", formatter_class=fmt)
    t.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS, help="optimizer name")
    t.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (warmup from 0.1·lr, cosine to 0.1·lr)")
    t.add_argument("--precondition-frequency", "-f", type=int, default=None,
                   help="f: refresh the eigenbasis / inverse roots every f steps (optimizer's default if unset)")
    t.add_argument("--seed", type=int, default=0, help="seeds model init and batch order")
    t.add_argument("--budget-fraction", type=float, default=1.0,
                   help="run this fraction of --steps, with the whole schedule fitted to it")
    t.add_argument("--skip-existing", action="store_true", help="do nothing if the record exists")
    _add_common(t)

    s = sub.add_parser("sweep", help="train a grid of runs (resumable, shardable)", formatter_class=fmt)
    s.add_argument("--optimizers", nargs="+", default=["adamw"], choices=OPTIMIZERS, metavar="NAME",
                   help=f"any of: {', '.join(OPTIMIZERS)}")
    s.add_argument("--frequencies", nargs="+", type=int, default=None,
                   help="precondition frequencies (only for optimizers that take one)")
    s.add_argument("--lrs", nargs="+", type=float, default=[3e-3], help="peak learning rates")
    s.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (model init and batch order)")
    s.add_argument("--budget-fractions", nargs="+", type=float, default=[1.0], help="fractions of --steps")
    s.add_argument("--shard", default="0/1", help="i/N: this process takes grid points i, i+N, ... (0 <= i < N)")
    s.add_argument("--dry-run", action="store_true", help="list this shard's runs and whether each is done")
    s.add_argument("--force", action="store_true", help="rerun runs whose record exists")
    _add_common(s)

    f = sub.add_parser("figures", help="regenerate figures/ from the stored records (see python -m soap_lab figures -h)")
    f.add_argument("rest", nargs=argparse.REMAINDER)
    sub.add_parser("show", help="summarize stored runs and plot their curves (see python -m soap_lab show -h)")
    a = sub.add_parser("ablations", help="rerun the paper's experiments through papermill (see python -m soap_lab ablations -h)")
    a.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _base_config(args: argparse.Namespace, hparams: Dict[str, Any], **extra: Any):
    from .train_config import TrainConfig

    return TrainConfig(
        experiment=args.experiment,
        betas=tuple(args.betas),
        eps=args.eps,
        weight_decay=args.weight_decay,
        hparams=hparams,
        preset=args.preset,
        model_overrides=dict(args.model),
        corpus=args.corpus,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        grad_accum=args.grad_accum,
        steps=args.steps,
        warmup_fraction=args.warmup_fraction,
        warmup_steps=args.warmup_steps,
        device=args.device,
        precision=args.precision,
        dtype=args.dtype,
        compile=args.compile,
        zero=True if args.zero else None,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        eval_batch_size=args.eval_batch_size,
        clip=args.clip if args.clip else None,
        progress=not args.no_progress,
        save=not args.no_save,
        out_dir=args.runs_root,
        **extra,
    )


def _report(result) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
        return
    s = result.summary
    val = s.get("final_val_loss")
    print(
        f"{result.run_id}: val {val if val is None else round(val, 4)}  "
        f"train {s['final_train_loss']:.4f}  {s['steps_done']} steps  "
        f"{s['wall_time']:.1f}s (optimizer {100 * (s['opt_time_share'] or 0):.0f}%)"
        + (f"  -> {result.record_path}" if result.record_path else "")
    )


def _data_errors() -> tuple:
    try:
        from .data import DataError
    except ImportError:
        return ()
    return (DataError,)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("show", "figures", "ablations"):
        # These subcommands own their argument parsing (soap_lab.cli); papermill is imported only where it runs.
        from . import cli

        if argv[0] == "show":
            return cli.show_main(argv[1:], prog=f"{_prog()} show")
        return (cli.figures_main if argv[0] == "figures" else cli.ablations_main)(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)

    from . import sweep

    try:
        if args.zero and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            raise ValueError("--zero needs a process group: run under torchrun with --nproc_per_node > 1")
        common, per_optimizer = _split_hparams(args.hparam)
        if args.command == "train":
            config = _base_config(
                args, {**common, **per_optimizer.get(args.optimizer, {})}, optimizer=args.optimizer, lr=args.lr,
                precondition_frequency=args.precondition_frequency, seed=args.seed,
                budget_fraction=args.budget_fraction,
            )
            config.validate()
            configs = [config]
        else:
            i, n = sweep.parse_shard(args.shard)
            base = _base_config(args, common)
            configs = sweep.grid(
                base, optimizers=args.optimizers, frequencies=args.frequencies, lrs=args.lrs,
                seeds=args.seeds, budget_fractions=args.budget_fractions, optimizer_hparams=per_optimizer,
            )
            for c in configs:
                c.validate()
            configs = sweep.shard(configs, i, n)
    except ValueError as e:
        parser.error(str(e))  # exits with code 2

    from .checkpoint import RunInterrupted
    from .distributed import destroy_distributed

    try:
        code = _run(args, configs, parser)
    except RunInterrupted as e:  # every rank stopped after the same step, once the checkpoint was written
        print(f"{parser.prog}: {e}", file=sys.stderr)
        code = 130
    except KeyboardInterrupt:  # a second Ctrl-C: this rank may be mid-collective, so the group is left as is
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    # The ranks finished together: end the process group here, not at the interpreter's exit, where a gloo
    # worker thread can abort the process after all its work is done (soap_lab.distributed).
    destroy_distributed()
    return code


def _run(args, configs, parser) -> int:
    """``main``'s train or sweep command on parsed, validated arguments; returns the exit code."""
    from . import results, sweep
    from .train import train

    try:
        if args.command == "train":
            if args.skip_existing and results.has_record(configs[0]):
                print(f"{results.run_id(configs[0])}: record exists at {results.record_path(configs[0])}")
                return 0
            result = train(configs[0])
            _report(result)
            if result.summary.get("diverged"):
                print(f"{parser.prog}: run diverged: non-finite loss at step {result.summary['steps_done']} "
                      f"(recorded with diverged=true); try a smaller --lr", file=sys.stderr)
                return 3
            return 0
        if os.environ.get("RANK", "0") == "0":
            print(f"shard {args.shard}: {len(configs)} runs")
        if args.dry_run:
            for c in configs:
                print(f"  {'done' if results.has_record(c) else 'todo'}  {results.record_path(c)}")
            return 0
        sweep.run_sweep(configs, skip_existing=not args.force, after_run=lambda c, r: _report(r))
        return 0
    except _data_errors() as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
