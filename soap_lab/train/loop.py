"""Training harness: ``train(TrainConfig) -> RunResult``.

The paper's setup (Vyas et al. 2024, section 3), at whatever scale the preset gives: linear warmup from
0.1·lr to lr then cosine decay to 0.1·lr (``soap_lab.train.schedule``), gradient clipping at 1.0, bf16 autocast
on CUDA, gradient accumulation so a step can hold many tokens, periodic validation cross-entropy on fixed
batches, and a ``budget_fraction`` that shortens a run *and its schedule* (the paper's efficiency protocol).

Per step the run records the train loss (plain cross-entropy, averaged over micro-batches and ranks; the
z-loss is optimized but not reported), lr, gradient norm (before clipping), wall-clock time, and the time of
``optimizer.step()`` alone (CUDA-synchronized around it), plus the peak size of the optimizer state. The
validation loss is the plain cross-entropy on fixed batches. The run ends with one JSON record
(``soap_lab.records.store``) holding the config, these metrics and provenance.

Under ``torchrun`` (WORLD_SIZE > 1) the same function trains with DistributedDataParallel (gloo on CPU,
nccl on CUDA): each rank takes its slice of every global batch, the optimizers see the all-reduced
gradient, and rank 0 writes the record. ``batch_size`` is always the global micro-batch, so a run gives the
same losses (up to reduction round-off) on any number of processes. With ``zero=True`` the optimizer runs under
ZeRO-1 (:mod:`soap_lab.optim.zero`): each rank keeps the state of, and steps, only its share of the parameters
(partitioned by estimated step cost), then broadcasts them; same losses up to round-off.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import batches, checkpoint, data, models
from ..records import store
from .distributed import any_rank, init_distributed_for, resolve_device
from ..optim import build_optimizer, takes_named_parameters
from ..records.provenance import environment_info, git_info, now_iso
from .schedule import lr_at
# The config is part of this module's API (``train(TrainConfig)``).
from .config import TrainConfig, effective_steps, effective_warmup, optimizer_kwargs
from .refresh_log import RefreshLog

__all__ = ["TrainConfig", "RunResult", "train", "evaluate", "optimizer_state_bytes"]


@dataclass
class RunResult:
    """What ``train`` returns: the record's content, and where it was written (if it was)."""

    run_id: str
    config: TrainConfig
    metrics: Dict[str, List[Any]]
    summary: Dict[str, Any]
    provenance: Dict[str, Any]
    model: Dict[str, Any] = field(default_factory=dict)
    """The resolved ``GPTConfig`` (preset plus overrides plus the tokenizer's vocabulary size)."""
    record_path: Optional[Path] = None

    @property
    def final_val_loss(self) -> Optional[float]:
        return self.summary.get("final_val_loss")

    @property
    def final_train_loss(self) -> Optional[float]:
        return self.summary.get("final_train_loss")

    def record(self) -> Dict[str, Any]:
        return {
            "schema": 1,
            "run_id": self.run_id,
            "experiment": self.config.experiment,
            "config": store.config_dict(self.config),
            "model": self.model,
            "summary": self.summary,
            "metrics": self.metrics,
            "provenance": self.provenance,
        }


# ----------------------------------------------------------------------------------------- helpers


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the tensors in ``optimizer.state`` (nested lists/dicts too), each storage counted once;
    under ZeRO, those of this rank's share."""
    storages: Dict[Tuple[str, int], int] = {}

    def visit(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            st = obj.untyped_storage()
            key = (str(obj.device), st.data_ptr())
            storages[key] = max(storages.get(key, 0), st.nbytes())
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)

    for state in getattr(optimizer, "optim", optimizer).state.values():  # ZeRO's: this rank's share
        visit(state)
    return sum(storages.values())


def _autocast(device: torch.device, precision: str):
    if precision == "bf16" and device.type != "cuda":
        raise ValueError(f"precision 'bf16' needs a CUDA device (got {device}); allowed on CPU: auto, fp32")
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plain_ce(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the last forward without the z-loss term (``GPT.last_ce``), detached."""
    ce = getattr(model, "last_ce", None)
    return (ce if ce is not None else loss).detach().float()


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, device: torch.device, autocast=contextlib.nullcontext) -> float:
    """Mean plain cross-entropy (no z-loss) of ``model`` over the fixed ``batches``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            _, loss = model(x, y)
        total += float(_plain_ce(model, loss)) * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count


def _load_data(config: TrainConfig):
    """The run's tokenizer and its train and val token streams."""
    tok = data.get_tokenizer(config.tokenizer, corpus=config.corpus, vocab_size=config.vocab_size)
    train_tokens = data.token_stream(config.corpus, config.tokenizer, split="train", vocab_size=config.vocab_size)
    val_tokens = data.token_stream(config.corpus, config.tokenizer, split="val", vocab_size=config.vocab_size)
    return tok, train_tokens, val_tokens


# ------------------------------------------------------------------------------------------- train


def train(config: TrainConfig, optimizer_factory=None) -> RunResult:
    """Train one run; on rank 0 write its record (when ``config.save``) and return its results.

    ``optimizer_factory(name, params, **keywords)``, when given, builds the optimizer instead of the lab's registry
    (``soap_lab.optim.build_optimizer``'s signature): another library's SOAP trained by the same harness
    (``benchmarks/conformance.py``). Its record is the config's; pass ``config.save=False`` unless that is meant."""
    config.validate()
    start_iso = now_iso()
    rank, world, local_rank = init_distributed_for(config)
    device = resolve_device(config.device, local_rank)
    precision = "fp32" if config.dtype == "float64" else config.precision
    autocast = _autocast(device, precision)
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the world size {world}")
    if config.zero and world == 1:
        raise ValueError("zero=True needs a process group: run under torchrun with --nproc_per_node > 1")

    steps = effective_steps(config)
    warmup = effective_warmup(config, steps)

    tok, train_tokens, val_tokens = _load_data(config)
    model_cfg = models.gpt_config(config.preset, tok.vocab_size, **config.model_overrides)
    seq_len = config.seq_len or model_cfg.seq_len
    tokens_per_step = config.batch_size * seq_len * config.grad_accum

    torch.manual_seed(config.seed)
    model = models.GPT(model_cfg).to(device=device, dtype=getattr(torch, config.dtype or "float32"))
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net: torch.nn.Module = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        net = model
    if config.compile:
        net = torch.compile(net)
    if config.zero:
        from ..optim.zero import build_zero_optimizer  # torch.distributed.optim: seconds to import

        optimizer = build_zero_optimizer(config.optimizer, model.parameters(), **optimizer_kwargs(config))
    else:
        params = model.named_parameters() if takes_named_parameters(config.optimizer) else model.parameters()
        optimizer = (optimizer_factory or build_optimizer)(config.optimizer, params, **optimizer_kwargs(config))

    # The sampler's batch_size is per rank; together the ranks draw the same global batch as one process.
    sampler = batches.BatchSampler(
        train_tokens, config.batch_size // world, seq_len, seed=config.seed, rank=rank, world_size=world
    )
    val = batches.eval_batches(val_tokens, config.eval_batch_size or config.batch_size, seq_len, config.eval_batches)

    metrics: Dict[str, List[Any]] = {
        k: [] for k in ("step", "loss", "lr", "grad_norm", "time", "step_time", "opt_time",
                        "val_step", "val_loss", "val_time")
    }
    refresh_log = RefreshLog(optimizer, model, steps, config.precondition_frequency)
    if refresh_log.active:
        metrics["staleness"] = []  # [step, factor kind, mean staleness over layers, fraction refreshed]
    state_bytes = 0
    diverged = False
    train_time = 0.0  # wall-clock of training steps, evaluation excluded
    max_norm = config.clip if config.clip else float("inf")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def run_eval(step: int) -> None:
        if refresh_log.active:
            refresh_log.poll(metrics.setdefault("staleness", []))
        vl = evaluate(model, val, device, autocast)
        metrics["val_step"].append(step)
        metrics["val_loss"].append(vl)
        metrics["val_time"].append(train_time)
        bar.set_postfix(loss=f"{metrics['loss'][-1]:.4f}" if metrics["loss"] else "-", val=f"{vl:.4f}")

    run_id = store.run_id(config)
    ckpt_file = checkpoint.checkpoint_path(store.record_path(config)) if config.save else None
    every = checkpoint.DEFAULT_EVERY if config.checkpoint_every is None else config.checkpoint_every
    start = 0
    resumed = checkpoint.load(ckpt_file, run_id) if ckpt_file is not None else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        sampler.load_state_dict(resumed["sampler"])
        metrics, train_time, state_bytes = resumed["metrics"], resumed["train_time"], resumed["state_bytes"]
        checkpoint.set_rng_state(resumed["rng"])
        start = resumed["step"]
        if rank == 0:
            print(f"{run_id}: resumed from step {start} of {steps} ({ckpt_file})", flush=True)

    def save_checkpoint(step: int) -> None:
        opt_state = _consolidated(optimizer) if config.zero else optimizer.state_dict()
        if rank == 0:
            checkpoint.save(ckpt_file, {
                "run_id": run_id, "step": step, "model": model.state_dict(), "optimizer": opt_state,
                "sampler": sampler.state_dict(), "metrics": metrics, "train_time": train_time,
                "state_bytes": state_bytes, "rng": checkpoint.rng_state()})
        if world > 1:
            dist.barrier()

    bar = tqdm(total=steps, initial=start, disable=not config.progress or rank != 0, desc=run_id, leave=False)
    net.train()
    with checkpoint.InterruptFlag() as interrupted:
        for step in range(start, steps):
            _sync(device)
            t0 = time.perf_counter()
            lr = lr_at(step, steps, config.lr, warmup)
            for group in optimizer.param_groups:  # lr_scale: a composite's second lr (muon's AdamW part)
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss_sum = torch.zeros((), device=device)
            for micro in range(config.grad_accum):
                x, y = sampler.next()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                last = micro == config.grad_accum - 1
                no_sync = world > 1 and not last and hasattr(net, "no_sync")
                sync_ctx = net.no_sync() if no_sync else contextlib.nullcontext()
                with sync_ctx:
                    with autocast():
                        _, loss = net(x, y)
                    (loss / config.grad_accum).backward()
                loss_sum += _plain_ce(model, loss)
            if world > 1:
                dist.all_reduce(loss_sum)
                loss_sum /= world
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            step_loss = float(loss_sum) / config.grad_accum
            if not math.isfinite(step_loss):
                diverged = True
            _sync(device)
            t_opt = time.perf_counter()
            if not diverged:
                optimizer.step()
            _sync(device)
            opt_time = time.perf_counter() - t_opt
            optimizer.zero_grad(set_to_none=True)
            step_time = time.perf_counter() - t0
            train_time += step_time
            state_bytes = max(state_bytes, optimizer_state_bytes(optimizer))

            metrics["step"].append(step + 1)
            metrics["loss"].append(step_loss)
            metrics["lr"].append(lr)
            metrics["grad_norm"].append(float(grad_norm))
            metrics["time"].append(train_time)
            metrics["step_time"].append(step_time)
            metrics["opt_time"].append(opt_time)
            bar.update(1)
            if diverged:
                break
            if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < steps:
                run_eval(step + 1)
            stop = any_rank(bool(interrupted), device, world)
            if ckpt_file is not None and step + 1 < steps and (stop or (every and (step + 1) % every == 0)):
                save_checkpoint(step + 1)
            if stop:
                bar.close()
                where = f"checkpoint {ckpt_file}; rerun the same command to resume" if ckpt_file else "nothing saved"
                raise checkpoint.RunInterrupted(f"{run_id}: interrupted after step {step + 1}/{steps} ({where})")
        if not diverged:
            run_eval(steps)
    bar.close()

    if refresh_log.active and diverged:
        refresh_log.poll(metrics.setdefault("staleness", []))
    summary = _summary(config, metrics, steps, warmup, tokens_per_step, train_time, state_bytes, diverged)
    if refresh_log.active:
        summary["refresh"] = refresh_log.summary()
    summary["seq_len_used"] = seq_len
    summary["num_params"] = sum(p.numel() for p in model.parameters())
    summary["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    provenance = {
        **environment_info(device),
        "git_commit": None,
        "git_dirty": None,
        "world_size": world,
        "distributed_backend": dist.get_backend() if world > 1 else None,
        "zero_estimated_imbalance": optimizer.estimated_imbalance() if config.zero else None,
        "resumed_from_step": start or None,
        "start_time": start_iso,
        "end_time": now_iso(),
    }
    git = git_info()
    provenance["git_commit"], provenance["git_dirty"] = git["commit"], git["dirty"]
    result = RunResult(store.run_id(config), config, metrics, summary, provenance,
                       model=dataclasses.asdict(model_cfg))
    if config.save and rank == 0:
        result.record_path = store.write_json_atomic(result.record(), store.record_path(config))
        if ckpt_file is not None:
            ckpt_file.unlink(missing_ok=True)  # the record supersedes it
    if world > 1:
        dist.barrier()
    return result


def _consolidated(optimizer) -> Dict[str, Any]:
    from ..optim.zero import consolidated_state_dict

    return consolidated_state_dict(optimizer)


def _summary(config, metrics, steps, warmup, tokens_per_step, train_time, state_bytes, diverged) -> Dict[str, Any]:
    done = len(metrics["step"])
    opt_total = sum(metrics["opt_time"])
    last = metrics["loss"][-min(10, done):] if done else []
    return {
        "steps_total": steps,
        "steps_done": done,
        "warmup_steps_used": warmup,
        "tokens_per_step": tokens_per_step,
        "tokens": tokens_per_step * done,
        "final_train_loss": metrics["loss"][-1] if done else None,
        "final_train_loss_avg10": sum(last) / len(last) if last else None,
        "final_val_loss": metrics["val_loss"][-1] if (metrics["val_loss"] and not diverged) else None,
        "min_val_loss": min(metrics["val_loss"]) if metrics["val_loss"] else None,
        "diverged": diverged,
        "wall_time": train_time,
        "opt_time_total": opt_total,
        "opt_time_share": opt_total / train_time if train_time > 0 else None,
        "step_time_mean": train_time / done if done else None,
        "tokens_per_s": tokens_per_step * done / train_time if train_time > 0 else None,
        "optimizer_state_bytes": state_bytes,
    }
