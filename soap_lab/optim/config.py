"""The options of the eigenbasis optimizers, each spelled once: a field of a frozen config dataclass, written with
:func:`option` (its default and its meaning next to its name).

:class:`BasisConfig` holds the machinery's options; each optimizer's config (``SOAPConfig``, ``ShampooConfig``,
``AdafactorConfig``, ``EigenAdafactorConfig``) adds its own and may change defaults, and builds its rule
(``Config.rule()``). Everything else is read off these dataclasses: the optimizers' constructors (their
signatures: the reference SOAP's positional keywords first, in its order, the rest keyword-only; their docstrings'
``Args``), the param groups (one entry per field), the registry's keyword lists (:func:`soap_lab.optim.keywords`)
and the step-cost model (:mod:`.cost`). A field a config marks :func:`fixed` is not a keyword of that optimizer's
constructor; a config with ``has_basis = False`` (Adafactor) takes none of the basis's options.
"""
from __future__ import annotations

import dataclasses
import inspect
import numbers
import textwrap
from typing import Any, ClassVar, Dict, Optional, Tuple

from . import refresh as policies
from .linalg import DEFAULT_ORTHO, ORTHO_METHODS

REFRESH_METHODS = ("qr", "eigh")
MOMENTUM_SPACES = ("eigenbasis", "original")
FACTOR_UPDATES = ("after", "before")
DATA_FORMATS = ("channels_first", "channels_last")

#: The optimizers' own keyword (not a config field): what a NaN/Inf gradient does (:mod:`.base`).
ON_NONFINITE = ("on_nonfinite", "raise", '"raise" a FloatingPointError naming the parameter, "skip" the step (both '
                'read the check on the host), or "ignore" (no check; for torch.compile and CUDA graphs)')


def option(default: Any, doc: str, *, positional: bool = False, basis: bool = False) -> Any:
    """A config field: ``default``, ``doc`` (its meaning); ``positional``: one of the reference SOAP's positional
    keywords; ``basis``: an option of the eigenbasis (not taken by a config without one)."""
    return dataclasses.field(default=default, metadata={"doc": doc, "positional": positional, "basis": basis})


def fixed(default: Any) -> Any:
    """A field this optimizer fixes at ``default``: an option of its config, not a keyword of its constructor."""
    return dataclasses.field(default=default, metadata={"fixed": True})


def _meta(cls: type, name: str, key: str, default: Any = False) -> Any:
    """``key`` of field ``name``'s metadata, from the most derived config that sets it."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and key in f.metadata:
            return f.metadata[key]
    return default


def keyword_fields(cls: type) -> Tuple[dataclasses.Field, ...]:
    """The fields of config ``cls`` its optimizer's constructor takes: positional ones first, in field order."""
    public = [f for f in dataclasses.fields(cls) if not _meta(cls, f.name, "fixed")
              and (cls.has_basis or not _meta(cls, f.name, "basis"))]
    return tuple(sorted(public, key=lambda f: not _meta(cls, f.name, "positional")))


def signature(cls: type) -> inspect.Signature:
    """The constructor signature of the optimizer whose config is ``cls``: (self, params, keywords…, on_nonfinite)."""
    P = inspect.Parameter
    out = [P("self", P.POSITIONAL_OR_KEYWORD), P("params", P.POSITIONAL_OR_KEYWORD)]
    for f in keyword_fields(cls):
        kind = P.POSITIONAL_OR_KEYWORD if _meta(cls, f.name, "positional") else P.KEYWORD_ONLY
        out.append(P(f.name, kind, default=f.default))
    out.append(P(ON_NONFINITE[0], P.KEYWORD_ONLY, default=ON_NONFINITE[1]))
    return inspect.Signature(out)


def _line(name: str, default: Any, doc: str) -> str:
    return textwrap.fill(f"{name} ({default!r}): {doc}", 116, initial_indent=" " * 8, subsequent_indent=" " * 12)


def documented(cls: type) -> type:
    """Decorator: a frozen dataclass whose docstring ends with every field, its default and its meaning."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    lines = [_line(f.name, f.default, _meta(cls, f.name, "doc", "")
                   + (" (fixed)" if _meta(cls, f.name, "fixed") else "")) for f in dataclasses.fields(cls)]
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n\n    Attributes:\n" + "\n".join(lines) + "\n"
    return cls


def args_doc(cls: type) -> str:
    """The ``Args`` section of the docstring of the optimizer whose config is ``cls``."""
    lines = [_line(f.name, f.default, _meta(cls, f.name, "doc", "")) for f in keyword_fields(cls)]
    lines.append(_line(*ON_NONFINITE))
    return "\n\n    Args (defaults in brackets; the config's fields, see ``Config``):\n" + "\n".join(lines) + "\n"


def _integral(x: Any) -> Any:
    """Integers (numpy's and integral floats too) as ``int``; anything else as it is, for validation to reject."""
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        return int(x)
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@documented
class BasisConfig:
    """Options of the eigenbasis machinery, shared by every optimizer of the lab (validated on construction)."""

    has_basis: ClassVar[bool] = True

    lr: float = option(3e-3, "learning rate η (a param group's current value is read at every step)", positional=True)
    betas: Tuple[float, float] = option((0.95, 0.95), "(β1 momentum, β2 second moment)", positional=True)
    shampoo_beta: float = option(-1, "EMA rate of the Kronecker factors L, R; negative means β2", positional=True,
                                 basis=True)
    eps: float = option(1e-8, "the rule's ε (SOAP's: added to √V before bias correction)", positional=True)
    weight_decay: float = option(0.0, "decoupled weight decay, applied after the update", positional=True)
    precondition_frequency: int = option(10, "f: the basis is refreshed every f steps (SOAP's ordering: at steps f, "
                                         "2f, …, i.e. calls f+1, 2f+1, …)", positional=True, basis=True)
    max_precond_dim: int = option(10000, "dimensions larger than this stay in the identity basis (0: no rotation)",
                                  positional=True, basis=True)
    merge_dims: bool = option(False, "merge small dimensions of nD tensors (soap_lab.optim.kron.merged_shape)",
                              positional=True, basis=True)
    precondition_1d: bool = option(False, "rotate 1-D parameters too (else they get the rule in the identity basis)",
                                   positional=True, basis=True)
    normalize_grads: bool = option(False, "rescale each layer's update to unit RMS (helps at f≈100, hurts at f≈10)",
                                   positional=True)
    data_format: str = option("channels_first", '"channels_last" for NHWC conv weights (matters with merge_dims)',
                              positional=True, basis=True)
    correct_bias: bool = option(True, "bias corrections 1−β1^t, 1−β2^t", positional=True)
    refresh: str = option("qr", 'one power iteration + QR (Algorithm 4), or a full "eigh" (paper Fig. 7 right)',
                          basis=True)
    qr_method: str = option(DEFAULT_ORTHO, "the QR of a refresh: Cholesky-QR, checked, with a Householder fallback "
                            '(soap_lab.optim.linalg.orthonormalize), or "householder" (the reference\'s '
                            "torch.linalg.qr); the same Q up to round-off and column signs", basis=True)
    one_sided: bool = option(False, "rotate only the smallest side of each tensor (paper §7)", basis=True)
    momentum_space: str = option("eigenbasis", 'M kept in the basis and carried at a refresh, or in the "original" '
                                 "space and rotated every step (the paper's form; the same algorithm)", basis=True)
    bucket: bool = option(True, "step same-layout parameters as one stack (False: a stack of one each; the same "
                          "numbers up to round-off)")
    refresh_policy: str = option("fixed", 'when bases are refreshed (soap_lab.optim.refresh): "fixed", the paper\'s '
                                 'every f steps; "staggered", every f steps per parameter at offsets that spread the '
                                 'cost; "adaptive", each factor checked every f steps and refreshed only where its '
                                 "relative off-diagonal mass is not below refresh_tolerance", basis=True)
    refresh_tolerance: float = option(0.0, 'τ of "adaptive", ≥ 0 (0: every check refreshes; > 1: never after the '
                                      "first basis); 0 with the other policies", basis=True)
    refresh_offsets: Optional[Tuple[int, ...]] = option(None, '"staggered": one offset in [0, f) per parameter of the '
                                                        "group, or None (from the cost model)", basis=True)
    factor_update: str = option("after", "SOAP's ordering (the gradient enters the factors after the step; the first "
                                'call only builds GG and Q), or "before" (Shampoo\'s: factors first, Q at steps start, '
                                "start+f, …)", basis=True)
    start_preconditioning_step: int = option(1, 'with factor_update="before": the first step in a basis', basis=True)

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("betas", tuple(self.betas) if isinstance(self.betas, (list, tuple)) else self.betas)
        for name in ("precondition_frequency", "max_precond_dim", "start_preconditioning_step"):
            set_(name, _integral(getattr(self, name)))
        set_("bucket", bool(self.bucket))
        set_("refresh_offsets", policies.offsets_option(self.refresh_offsets))
        lr = self.lr
        _check(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr >= 0, "lr (the learning rate)", lr,
               "a float ≥ 0")
        _check(isinstance(self.betas, tuple) and len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
               "betas", self.betas, "two numbers in [0, 1)")
        _check(self.eps >= 0, "eps", self.eps, "≥ 0")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "≥ 0")
        f = self.precondition_frequency
        _check(isinstance(f, int) and f >= 1, "precondition_frequency", f, "an integer ≥ 1")
        _check(self.refresh in REFRESH_METHODS, "refresh", self.refresh, f"one of {REFRESH_METHODS}")
        _check(self.qr_method in ORTHO_METHODS, "qr_method", self.qr_method, f"one of {ORTHO_METHODS}")
        _check(self.factor_update in FACTOR_UPDATES, "factor_update", self.factor_update, f"one of {FACTOR_UPDATES}")
        _check(self.momentum_space in MOMENTUM_SPACES, "momentum_space", self.momentum_space,
               f"one of {MOMENTUM_SPACES}")
        _check(self.data_format in DATA_FORMATS, "data_format", self.data_format, f"one of {DATA_FORMATS}")
        policies.validate(self)

    @property
    def factor_beta(self) -> float:
        return self.shampoo_beta if self.shampoo_beta >= 0 else self.betas[1]

    @classmethod
    def from_group(cls, group: Dict[str, Any]) -> "BasisConfig":
        return cls(**{f.name: group[f.name] for f in dataclasses.fields(cls)})

    def rule(self):
        """The rule inside the basis these options ask for (here: Adam's, SOAP's rule)."""
        from .rules import Adam

        return Adam()
