"""Training throughput per optimizer: tokens/s and the share of wall-clock spent in optimizer.step().

Short runs of the real training loop (``soap_lab.train.loop.train``), one optimizer after the other in one
process, at the same preset, batch and seed; nothing is written under data/runs. The first ``--skip``
steps (SOAP's initial eigendecomposition, allocator warm-up) are left out of the timings; the rest include
the periodic basis refreshes, amortized over the steps.

    python benchmarks/throughput.py                       # cpu preset, every importable optimizer
    python benchmarks/throughput.py --optimizers adamw soap --steps 30 --frequency 10 --repeats 2

Ratios between rows are the meaningful output (absolute numbers depend on the machine and its load);
``--repeats`` keeps each optimizer's fastest repeat, which filters out interference from other processes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from soap_lab.optim import OPTIMIZERS, build_optimizer, takes_frequency  # noqa: E402
from soap_lab.train.loop import train  # noqa: E402
from soap_lab.train.config import TrainConfig  # noqa: E402


def importable(name: str) -> bool:
    try:
        build_optimizer(name, [torch.nn.Parameter(torch.zeros(2, 2))], lr=1e-3)
    except ImportError:
        return False
    return True


def measure(config: TrainConfig, skip: int) -> dict:
    t0 = time.perf_counter()
    r = train(config)
    total = time.perf_counter() - t0
    m, s = r.metrics, r.summary
    step_times = m["step_time"][skip:]
    opt_times = m["opt_time"][skip:]
    step = sum(step_times) / len(step_times)
    return {
        "optimizer": config.optimizer,
        "f": config.precondition_frequency,
        "ms_per_step": 1e3 * step,
        "opt_ms_per_step": 1e3 * sum(opt_times) / len(opt_times),
        "opt_share": sum(opt_times) / sum(step_times),
        "tokens_per_s": s["tokens_per_step"] / step,
        "state_mb": s["optimizer_state_bytes"] / 2**20,
        "final_train_loss": s["final_train_loss"],
        "run_s": total,
        "refresh": s.get("refresh"),  # eigenbasis optimizers: refreshes, checks, FLOPs (soap_lab/train/refresh_log.py)
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS, metavar="NAME")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=None, help="default: the preset's context length")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--skip", type=int, default=3, help="leading steps left out of the timings")
    p.add_argument("--frequency", type=int, default=10, help="precondition frequency where one is taken")
    p.add_argument("--repeats", type=int, default=1, help="keep each optimizer's fastest of this many runs")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.skip >= args.steps:
        p.error(f"--skip ({args.skip}) must be smaller than --steps ({args.steps})")
    if args.threads:
        torch.set_num_threads(args.threads)

    names = [n for n in args.optimizers if importable(n)]
    missing = [n for n in args.optimizers if n not in names]
    if missing:
        print(f"not importable yet, skipped: {', '.join(missing)}", file=sys.stderr)
    rows = []
    for name in names:
        config = TrainConfig(
            experiment="bench", optimizer=name, preset=args.preset, batch_size=args.batch_size,
            seq_len=args.seq_len, steps=args.steps, warmup_fraction=0.0, eval_every=0, eval_batches=1,
            precondition_frequency=args.frequency if takes_frequency(name) else None,
            device=args.device, progress=False, save=False,
        )
        best = min((measure(config, args.skip) for _ in range(args.repeats)), key=lambda r: r["ms_per_step"])
        rows.append(best)
        print(f"  {name}: {best['ms_per_step']:.1f} ms/step", file=sys.stderr, flush=True)

    base = next((r["ms_per_step"] for r in rows if r["optimizer"] == "adamw"), None)
    dev = "cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device.startswith("cuda") else "cpu"
    print(f"\npreset {args.preset}, batch {args.batch_size} seqs, {args.steps} steps (first {args.skip} not timed), "
          f"f={args.frequency}, device {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'optimizer':<27}{'ms/step':>9}{'x adamw':>9}{'tokens/s':>10}{'opt ms':>9}{'opt share':>10}" \
             f"{'state MiB':>10}{'run s':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r['ms_per_step'] / base:.2f}" if base else "-"
        print(f"{r['optimizer']:<27}{r['ms_per_step']:>9.1f}{ratio:>9}{r['tokens_per_s']:>10.0f}"
              f"{r['opt_ms_per_step']:>9.1f}{100 * r['opt_share']:>9.0f}%{r['state_mb']:>10.2f}{r['run_s']:>7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
