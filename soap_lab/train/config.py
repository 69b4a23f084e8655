"""What defines a training run: :class:`TrainConfig` (validated in one place) and the numbers derived from it.

The paper's setup (Vyas et al. 2024, section 3) is the default: β1 = β2 = 0.95, linear warmup then cosine decay,
gradient clipping at 1.0; ``budget_fraction`` shortens a run *and its schedule* (the efficiency protocol). The
run id of a config (``soap_lab.records.store.run_id``) hashes its fields, so fields added later default to ``None``.
Which optimizers take a preconditioning frequency is read off the optimizers (``soap_lab.optim.takes_frequency``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from ..optim import OPTIMIZERS, default_frequency, takes_frequency
from ..optim import keywords as optimizer_keywords
from .schedule import warmup_steps_for

__all__ = [
    "TrainConfig",
    "TAKES_FREQUENCY",
    "PRECISIONS",
    "DTYPES",
    "preset_names",
    "effective_steps",
    "effective_warmup",
    "optimizer_kwargs",
]

#: Optimizers that take a ``precondition_frequency`` keyword (``soap_lab.optim.takes_frequency``), for messages.
TAKES_FREQUENCY = tuple(name for name in OPTIMIZERS if takes_frequency(name))
#: ``auto``: bf16 autocast on CUDA, fp32 elsewhere; ``bf16``: autocast (CUDA only); ``fp32``: none.
PRECISIONS = ("auto", "bf16", "fp32")
#: Parameter dtypes (``TrainConfig.dtype``).
DTYPES = ("float32", "float64")


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults give a small CPU run.

    Fields added later should default to ``None`` (or ``{}``): such fields do not enter the run id's hash
    while unset, so existing records keep their ids.
    """

    experiment: str = "default"
    """Name of the experiment: records go to ``<out_dir>/<experiment>/<run_id>.json``."""
    optimizer: str = "adamw"
    """One of ``soap_lab.optim.OPTIMIZERS``."""
    lr: float = 3e-3
    """Peak learning rate (the schedule warms up from 0.1·lr and decays to 0.1·lr)."""
    betas: Tuple[float, float] = (0.95, 0.95)
    """(β1, β2); the paper uses 0.95 for both, for every optimizer."""
    eps: Optional[float] = None
    """ε of the optimizer; ``None``: the optimizer's own default."""
    weight_decay: Optional[float] = None
    """Decoupled weight decay; ``None``: the optimizer's own default."""
    precondition_frequency: Optional[int] = None
    """f, for optimizers in ``TAKES_FREQUENCY`` only; ``None`` becomes the optimizer's default on construction,
    so ``train`` without ``-f`` and a sweep at that f are the same run (same record)."""
    hparams: Dict[str, Any] = field(default_factory=dict)
    """Other optimizer keywords, passed as is (``refresh``, ``max_precond_dim``, ``shampoo_beta``, ...)."""
    preset: str = "tiny"
    """Model size, a key of ``soap_lab.train.models.PRESETS`` (tiny, cpu, gpu, 210m, 360m, 660m)."""
    model_overrides: Dict[str, Any] = field(default_factory=dict)
    """``GPTConfig`` fields that override the preset's."""
    corpus: str = "austen"
    """A shipped corpus (austen, shakespeare), a path to a UTF-8 text file, or ``hf:NAME_OR_PATH`` (a Hugging
    Face ``datasets`` dataset's ``text`` field); see ``soap_lab.train.data.check_corpus``. Split 90/10 into
    train/val; the tokenizer (char or BPE) is built from its text."""
    tokenizer: str = "char"
    """Tokenizer kind for ``soap_lab.train.data.get_tokenizer``."""
    vocab_size: int = 4096
    """Vocabulary size of trained tokenizers (ignored by the char tokenizer)."""
    batch_size: int = 32
    """Global micro-batch in sequences (split across DDP ranks). Tokens per step: batch_size·seq_len·grad_accum."""
    seq_len: Optional[int] = None
    """Tokens per sequence; ``None``: the model's context length (the preset's ``seq_len``)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    steps: int = 200
    """Optimizer steps of the full budget (before ``budget_fraction``)."""
    warmup_fraction: float = 0.1
    """Warmup length as a fraction of the run's own steps (after ``budget_fraction``)."""
    warmup_steps: Optional[int] = None
    """Warmup length in steps; overrides ``warmup_fraction`` and is not scaled by ``budget_fraction``."""
    budget_fraction: float = 1.0
    """Run ``round(budget_fraction·steps)`` steps, with the whole schedule fitted to that length."""
    seed: int = 0
    """Seeds model init and batch order: the same config gives the same losses on the same machine."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``. Under torchrun CUDA uses LOCAL_RANK."""
    precision: str = "auto"
    """One of ``PRECISIONS``: ``auto`` = bf16 autocast on CUDA, fp32 on CPU."""
    dtype: Optional[str] = None
    """Parameter (and optimizer state) dtype, one of ``DTYPES``; ``None``: float32. float64 makes runs
    insensitive to round-off (SOAP's eigenbases amplify float32 round-off); it excludes bf16 autocast."""
    compile: bool = False
    """Wrap the model in ``torch.compile``."""
    zero: Optional[bool] = None
    """ZeRO-1 under torchrun (WORLD_SIZE > 1): each rank keeps and steps only its share of the optimizer state,
    partitioned by estimated step cost (:mod:`soap_lab.optim.zero`). Same results up to round-off, so it is
    not part of the run id; ``None`` or False: every rank runs the whole optimizer."""
    checkpoint_every: Optional[int] = None
    """Write a checkpoint beside the record every this many steps, and on SIGINT/SIGTERM, so that rerunning the
    same command resumes the run (:mod:`soap_lab.train.checkpoint`); ``None``: every 100 steps; 0: only on a signal.
    Not part of the run id (it does not change the result)."""
    eval_every: int = 50
    """Validation every this many steps (and always after the last step); 0: only at the end."""
    eval_batches: int = 8
    """Number of fixed validation batches."""
    eval_batch_size: Optional[int] = None
    """Sequences per validation batch; ``None``: ``batch_size``."""
    clip: Optional[float] = 1.0
    """Gradient-norm clipping threshold; ``None`` or 0: no clipping (the norm is still recorded)."""
    progress: bool = True
    """Show a tqdm progress bar (rank 0 only)."""
    save: bool = True
    """Write the run record."""
    out_dir: Optional[str] = None
    """Root of the run records; ``None``: ``<repo>/data/runs``."""

    def __post_init__(self):
        if self.precondition_frequency is None and self.optimizer in OPTIMIZERS and takes_frequency(self.optimizer):
            self.precondition_frequency = default_frequency(self.optimizer)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """The config of a record (``record["config"]``); unknown keys raise, lists become tuples where needed."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def _check_optimizer_values(self) -> None:
        """Build the optimizer on one small parameter, so that a bad value (``exponent=abc``, ``eps=-1``) stops
        here in one line, before any data is loaded or a step is taken."""
        from ..optim import build_optimizer, takes_named_parameters

        w = torch.nn.Parameter(torch.zeros(2, 2))
        try:
            build_optimizer(self.optimizer, [("w", w)] if takes_named_parameters(self.optimizer) else [w],
                            **optimizer_kwargs(self))
        except (TypeError, ValueError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"optimizer {self.optimizer!r} rejects its values ({', '.join(f'{k}={v!r}' for k, v in self.hparams.items()) or 'lr, betas, eps'}): {msg}") from None

    def validate(self) -> None:
        """Raise ValueError (listing the allowed values) for a config that cannot run."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if self.precondition_frequency is not None:
            if not takes_frequency(self.optimizer):
                raise ValueError(
                    f"optimizer {self.optimizer!r} takes no precondition_frequency; "
                    f"optimizers that do: {', '.join(TAKES_FREQUENCY)}"
                )
            if int(self.precondition_frequency) < 1:
                raise ValueError(f"precondition_frequency must be >= 1, got {self.precondition_frequency}")
        unknown = sorted(set(self.hparams) - set(optimizer_keywords(self.optimizer)))
        if unknown:
            raise ValueError(f"optimizer {self.optimizer!r} takes no keyword {', '.join(unknown)}; "
                             f"its keywords: {', '.join(optimizer_keywords(self.optimizer))}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        self._check_optimizer_values()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for but CUDA is not available here; allowed: auto, cpu")
        presets = preset_names()
        if presets is not None and self.preset not in presets:
            raise ValueError(f"unknown preset {self.preset!r}; allowed: {', '.join(presets)}")
        if presets is not None and self.model_overrides:
            from .models import GPTConfig

            bad = sorted(set(self.model_overrides) - set(GPTConfig.__dataclass_fields__))
            if bad:
                raise ValueError(f"unknown model fields {bad}; allowed: {', '.join(GPTConfig.__dataclass_fields__)}")
            from .models import gpt_config

            gpt_config(self.preset, 2, **self.model_overrides)  # GPTConfig checks its values (one-line ValueError)
        if presets is not None and self.seq_len is not None:
            from .models import PRESETS

            ctx = self.model_overrides.get("seq_len", PRESETS[self.preset]["seq_len"])
            if self.seq_len > ctx:
                raise ValueError(f"seq_len {self.seq_len} exceeds the model's context length {ctx} "
                                 f"(preset {self.preset!r}; raise it with model_overrides seq_len)")
        try:
            from .data import CORPORA, TOKENIZERS
        except ImportError:
            CORPORA = TOKENIZERS = None
        if CORPORA is not None:
            from .data import check_corpus

            check_corpus(self.corpus)
        if TOKENIZERS is not None and self.tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {self.tokenizer!r}; allowed: {', '.join(TOKENIZERS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        if self.dtype == "float64" and self.precision == "bf16":
            raise ValueError("dtype float64 excludes bf16 autocast; use precision fp32")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"unknown device {self.device!r}; allowed: auto, cpu, cuda, cuda:N")
        if not 0.0 < self.budget_fraction <= 1.0:
            raise ValueError(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {self.warmup_fraction}")
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_batches", "eval_batch_size"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every is not None and self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def preset_names() -> Optional[Tuple[str, ...]]:
    """The model presets (``soap_lab.train.models.PRESETS``), or None where the models module cannot be imported."""
    try:
        from .models import PRESETS
    except ImportError:
        return None
    return tuple(PRESETS)


def effective_steps(config: TrainConfig) -> int:
    """``round(budget_fraction · steps)`` (halves round up), at least 1."""
    return max(1, int(math.floor(config.budget_fraction * config.steps + 0.5)))


def effective_warmup(config: TrainConfig, steps: Optional[int] = None) -> int:
    """Warmup steps of a run of ``steps`` steps: ``warmup_steps`` if set, else ``warmup_fraction`` of the run."""
    steps = effective_steps(config) if steps is None else steps
    if config.warmup_steps is not None:
        return int(config.warmup_steps)
    return warmup_steps_for(steps, config.warmup_fraction)


def optimizer_kwargs(config: TrainConfig) -> Dict[str, Any]:
    """Keywords for ``build_optimizer``: lr, betas, and eps/weight_decay/precondition_frequency when set."""
    kw: Dict[str, Any] = {"lr": config.lr, "betas": tuple(config.betas)}
    if config.eps is not None:
        kw["eps"] = config.eps
    if config.weight_decay is not None:
        kw["weight_decay"] = config.weight_decay
    if config.precondition_frequency is not None:
        kw["precondition_frequency"] = int(config.precondition_frequency)
    kw.update(config.hparams)
    return kw
