"""Behaviour probes of SOAP implementations (issue 24): each a small deterministic problem whose answer differs by
one behaviour, measured on the optimizer as a black box (parameters after each call; one probe also looks for the
momentum among the state tensors). Imports torch only, so that it also runs in another interpreter (NVIDIA's
``emerging-optimizers`` needs Python >= 3.12): ``benchmarks/conformance.py`` runs it there as a worker.

Well posed on any x86 CPU by construction (tests/helpers.py, golden data v2): every preconditioned factor is full
rank with separated eigenvalues, or diagonal, where eigh and QR are exact signed permutations; Adam's ε is large
enough that round-off in a coordinate whose gradient is zero cannot be amplified; candidate answers are
≥ 0.1 apart in the measured quantity, round-off moves it by < 1e-3.

A probe returns ``{"value": canonical answer, "detail": numbers in words, ...raw numbers}``; an optimizer that
refuses the probe's parameters gives ``{"value": "rejected", "error": "<exception>"}``.

    python benchmarks/conformance_probes.py --worker nvidia_emerging --golden tests/fixtures/golden/... --out x.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

F32, F64 = torch.float32, torch.float64

#: The reference's constructor keywords and defaults (nikhilvyas/SOAP soap.py; soap_lab.SOAP has the same).
REF_DEFAULTS: Dict[str, Any] = dict(
    lr=3e-3, betas=(0.95, 0.95), shampoo_beta=-1, eps=1e-8, weight_decay=0.01, precondition_frequency=10,
    max_precond_dim=10000, merge_dims=False, precondition_1d=False, normalize_grads=False,
    data_format="channels_first", correct_bias=True)


class Unsupported(Exception):
    """An implementation has no way to express a reference keyword's value."""


# ============================================================================================ implementations
def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # pragma: no cover - depends on the environment
        return "not installed"


def _beta2(kw: Dict[str, Any]) -> float:
    return float(kw.get("betas", REF_DEFAULTS["betas"])[1])


class Impl:
    """One implementation: ``build(params, ref_kw)`` constructs it from reference keywords (only those given; a
    missing keyword is left at the implementation's own default), ``mapping(ref_kw)`` says how they were mapped."""

    name = "?"
    label = "?"
    dist = "?"
    #: reference keyword -> how this implementation receives it (for the page).
    RULES: Dict[str, str] = {}
    #: keywords this implementation always receives (the closest mapping's extras).
    EXTRAS: Dict[str, Any] = {}

    def version(self) -> str:
        return _version(self.dist)

    def available(self) -> Optional[str]:
        """None when importable, else the import error."""
        try:
            self._cls()
        except Exception as e:  # ImportError and friends
            return f"{type(e).__name__}: {e}"
        return None

    def _cls(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def translate(self, kw: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def build(self, params, kw: Dict[str, Any]):
        out, _ = self.translate(kw)
        return self._cls()(params, **out)

    def mapping(self, kw: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
        return self.translate(kw)

    #: reference keyword -> this implementation's keyword for it (absent: none)
    COUNTERPART: Dict[str, str] = {}

    def introspect(self) -> Dict[str, Any]:
        """Read off the installed class: its default for each reference keyword's counterpart, and its module's
        SOAP classes."""
        import inspect

        cls = self._cls()
        sig = inspect.signature(cls.__init__).parameters
        defaults = {}
        for ref, own in self.COUNTERPART.items():
            if own in sig:
                d = sig[own].default
                defaults[ref] = "required" if d is inspect.Parameter.empty else repr(d)
        exports: List[str] = []
        for modname in (cls.__module__.split(".")[0], cls.__module__.rsplit(".", 1)[0]):
            mod = sys.modules[modname]
            exports = sorted(n for n in dir(mod) if "SOAP" in n and isinstance(getattr(mod, n), type))
            if exports:
                break
        doc = next((ln.strip() for ln in (cls.__doc__ or "").splitlines() if ln.strip()), "")
        return {"class": f"{cls.__module__}.{cls.__qualname__}", "doc": doc, "defaults": defaults,
                "soap_classes": exports}


class SoapLab(Impl):
    dist = "soap-lab"

    def __init__(self, momentum_space: str):
        self.momentum_space = momentum_space
        self.name = f"soap_lab_{momentum_space}"
        self.label = f"soap_lab.SOAP (momentum_space={momentum_space!r})"
        self.EXTRAS = {"momentum_space": momentum_space}
        self.RULES = {k: "same keyword" for k in REF_DEFAULTS}
        self.COUNTERPART = {k: k for k in REF_DEFAULTS}

    def _cls(self):
        from soap_lab import SOAP

        return SOAP

    def translate(self, kw):
        return {**kw, "momentum_space": self.momentum_space}, []


class PytorchOptimizer(Impl):
    name, label, dist = "pytorch_optimizer", "pytorch_optimizer.SOAP", "pytorch-optimizer"
    RULES = {**{k: "same keyword" for k in REF_DEFAULTS},
             "max_precond_dim": "max_precondition_dim", "normalize_grads": "normalize_gradient",
             "shampoo_beta": "shampoo_beta (-1 → None, its 'use β2')"}
    COUNTERPART = {**{k: k for k in REF_DEFAULTS}, "max_precond_dim": "max_precondition_dim",
                   "normalize_grads": "normalize_gradient"}

    def _cls(self):
        import pytorch_optimizer

        return pytorch_optimizer.SOAP

    def translate(self, kw):
        out = {}
        for k, v in kw.items():
            if k == "max_precond_dim":
                out["max_precondition_dim"] = v
            elif k == "normalize_grads":
                out["normalize_gradient"] = v
            elif k == "shampoo_beta":
                out["shampoo_beta"] = None if v < 0 else v
            else:
                out[k] = v
        return out, []


class HeavyBall(Impl):
    dist = "heavyball"
    RULES = {"lr": "lr", "betas": "betas", "eps": "eps", "weight_decay": "weight_decay",
             "shampoo_beta": "shampoo_beta (-1 → β2; its default is 0.95)",
             "precondition_frequency": "precondition_frequency (with use_precond_schedule=False)",
             "max_precond_dim": "max_precond_dim", "merge_dims": "merge_dims", "precondition_1d": "precondition_1d",
             "normalize_grads": "none (ignored)", "correct_bias": "none (always bias-corrected; False unsupported)",
             "data_format": "none (ignored)"}
    EXTRAS = {"use_precond_schedule": False, "compile_step": False, "warmup_steps": 0, "palm": False,
              "heavyball.utils.compile_mode": None}
    COUNTERPART = {k: k for k in ("lr", "betas", "shampoo_beta", "eps", "weight_decay", "precondition_frequency",
                                  "max_precond_dim", "merge_dims", "precondition_1d")}

    def __init__(self, cls_name: str = "SOAP"):
        self.cls_name = cls_name
        self.name = "heavyball" if cls_name == "SOAP" else f"heavyball_{cls_name}"
        self.label = f"heavyball.{cls_name}"

    def _cls(self):
        import heavyball
        import heavyball.utils

        heavyball.utils.compile_mode = None  # eager: torch.compile on CPU costs minutes and changes nothing here
        return getattr(heavyball, self.cls_name)

    def translate(self, kw):
        out, notes = {}, []
        for k, v in kw.items():
            if k == "shampoo_beta":
                out[k] = _beta2(kw) if v < 0 else v
            elif k in ("normalize_grads", "data_format"):
                if v != REF_DEFAULTS[k]:
                    notes.append(f"{k}={v!r}: no counterpart, ignored")
            elif k == "correct_bias":
                if not v:
                    notes.append("correct_bias=False: no counterpart (always bias-corrected)")
            else:
                out[k] = v
        out.update({k: v for k, v in self.EXTRAS.items() if "." not in k})
        return out, notes


class NvidiaEmerging(Impl):
    name, label, dist = "nvidia_emerging", "emerging_optimizers SOAP (NVIDIA)", "emerging-optimizers"
    #: Its Adam step is ``@torch.compile``d; on CPU (torch 2.13.0+cu130) a recompilation for new betas that follows
    #: its ``fp32_matmul_precision`` context kept the old (1 − β) lerp weights (:func:`compile_cache_check`
    #: measures it), so every run here starts from a reset compile cache, as a fresh process would.
    fresh_compile = True
    RULES = {"lr": "lr (required)", "betas": "betas", "eps": "eps", "weight_decay": "weight_decay",
             "shampoo_beta": "shampoo_beta (-1 → β2; its default is 0.95)", "correct_bias": "correct_bias",
             "precondition_frequency": "none: it refreshes the basis at every call",
             "max_precond_dim": "none: every dimension is rotated", "merge_dims": "none: 2-D parameters only",
             "precondition_1d": "none: 1-D parameters are rejected", "normalize_grads": "none (ignored)",
             "data_format": "none (ignored)"}
    EXTRAS = {"weight_decay_method": "decoupled", "nesterov": False, "use_eigh": False, "power_iter_steps": 1,
              "correct_shampoo_beta_bias": False, "fp32_matmul_prec": "highest", "qr_fp32_matmul_prec": "highest",
              "max_update_rms": 0.0}
    COUNTERPART = {k: k for k in ("lr", "betas", "shampoo_beta", "eps", "weight_decay", "correct_bias")}

    def _cls(self):
        from emerging_optimizers.soap import SOAP

        return SOAP

    def translate(self, kw):
        out, notes = {"lr": kw.get("lr", REF_DEFAULTS["lr"])}, []
        for k, v in kw.items():
            if k in ("lr", "betas", "eps", "weight_decay", "correct_bias"):
                out[k] = tuple(v) if k == "betas" else v
            elif k == "shampoo_beta":
                out[k] = _beta2(kw) if v < 0 else v
            elif k == "precondition_frequency":
                if v != 1:
                    notes.append(f"precondition_frequency={v}: no counterpart (refreshes at every call)")
            elif k == "max_precond_dim":
                pass  # noted per parameter shape where it matters
            elif v != REF_DEFAULTS[k]:
                notes.append(f"{k}={v!r}: no counterpart, ignored")
        out.update(self.EXTRAS)
        return out, notes


def implementations() -> Dict[str, Impl]:
    impls = [SoapLab("eigenbasis"), SoapLab("original"), PytorchOptimizer(), HeavyBall("SOAP"),
             HeavyBall("HeavySOAP"), NvidiaEmerging()]
    return {i.name: i for i in impls}


# ============================================================================================ problems
def _orth(n: int, g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def geometric(n: int, hi: float = 1.5, lo: float = 0.5) -> torch.Tensor:
    return torch.logspace(math.log10(hi), math.log10(lo), n, dtype=F64) if n > 1 else torch.tensor([hi], dtype=F64)


def svd_matrix(m: int, n: int, g: torch.Generator, hi=1.5, lo=0.5) -> torch.Tensor:
    """U diag(σ) Vᵀ with random orthogonal U, V and σ geometric from ``hi`` to ``lo``: both Grams have separated
    eigenvalues, and the smaller one is full rank."""
    k = min(m, n)
    U, V = _orth(m, g), _orth(n, g)
    return (U[:, :k] * geometric(k, hi, lo)) @ V[:, :k].T


def tensor_grad(shape: Sequence[int], g: torch.Generator) -> torch.Tensor:
    """(S ⊙ Z) ×_d U_d (tests/helpers.open_loop_grads' construction): every mode Gram full rank and separated."""
    S = torch.ones((), dtype=F64)
    for n in shape:
        S = S.unsqueeze(-1) * geometric(n)
    x = S * torch.randn(*shape, generator=g, dtype=F64)
    for d, n in enumerate(shape):
        x = torch.movedim(torch.movedim(x, d, -1) @ _orth(n, g).T, -1, d)
    return x


def f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(F32)


# ============================================================================================ runs
def run_calls(impl: Impl, kw: Dict[str, Any], init: List[torch.Tensor], grads: List[List[torch.Tensor]]):
    """Fresh float32 parameters (copies of ``init``), one ``step()`` per row of ``grads``; returns the parameters
    after every call (list over calls of lists over parameters), the optimizer and the parameters."""
    params = [torch.nn.Parameter(x.detach().clone().to(F32)) for x in init]
    if getattr(impl, "fresh_compile", False):
        torch._dynamo.reset()  # see NvidiaEmerging.fresh_compile
    opt = impl.build(params, kw)
    snaps = []
    for row in grads:
        for p, gr in zip(params, row):
            p.grad = gr.detach().clone().to(F32)
        opt.step()
        snaps.append([p.detach().clone() for p in params])
    return snaps, opt, params


def first_moving_call(init: List[torch.Tensor], snaps) -> Optional[int]:
    """0-based index of the first call after which a parameter differs from its value before the call."""
    prev = [x.to(F32) for x in init]
    for t, row in enumerate(snaps):
        if any(not torch.equal(a, b) for a, b in zip(row, prev)):
            return t
        prev = row
    return None


def updates(init, snaps, i=0) -> List[torch.Tensor]:
    """Per call, the change of parameter ``i`` (float64)."""
    prev = init[i].to(F32).double()
    out = []
    for row in snaps:
        cur = row[i].double()
        out.append(cur - prev)
        prev = cur
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    d = float(b.norm())
    return float((a - b).norm()) / d if d else float((a - b).norm())


def direction_dist(a: torch.Tensor, b: torch.Tensor) -> float:
    """Distance of the unit-norm directions (0: parallel; 2: opposite)."""
    a, b = a.double().flatten(), b.double().flatten()
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 or nb == 0:
        return float("inf")
    return float((a / na - b / nb).norm())


def eig_desc(P: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigh(P.double()).eigenvectors.flip(-1)


def mode_gram(x: torch.Tensor, d: int) -> torch.Tensor:
    m = torch.movedim(x.double(), d, 0).reshape(x.shape[d], -1)
    return m @ m.T


def rotate(x: torch.Tensor, Qs: Sequence[Optional[torch.Tensor]], back: bool = False) -> torch.Tensor:
    """x ×_d Q_dᵀ for every d with a basis (``back``: ×_d Q_d)."""
    x = x.double()
    for d, Q in enumerate(Qs):
        if Q is None:
            continue
        M = Q if back else Q.T
        x = torch.movedim(torch.movedim(x, d, -1) @ M.T, -1, d)
    return x


def adam_sign(G: torch.Tensor, Qs, eps: float, floor: bool = False) -> torch.Tensor:
    """The update of Adam with β1 = β2 = 0 in the bases ``Qs``: Q s(Qᵀ G Q) Qᵀ, s(x) = x / (|x| + ε) (with β2 = 0
    ε before or after bias correction is the same), or x / max(|x|, ε) with ``floor`` (HeavyBall's ε)."""
    Gp = rotate(G, Qs)
    return rotate(Gp / (torch.clamp(Gp.abs(), min=eps) if floor else Gp.abs() + eps), Qs, back=True)


def basis_distance(D: torch.Tensor, G: torch.Tensor, Qs, eps: float) -> float:
    """How far the update D is from Adam's (β1 = β2 = 0) in the bases ``Qs``: the direction distance, the better
    of the two ways ε can enter (the basis probes ask which basis, not where ε goes: that is probe_eps)."""
    return min(direction_dist(D, adam_sign(G, Qs, eps, floor)) for floor in (False, True))


def classify(dists: Dict[str, float], tol: float, margin: float = 5.0) -> Tuple[str, str]:
    """(best candidate, 'matched' | 'ambiguous' | 'no match') from candidate -> distance."""
    order = sorted(dists, key=lambda k: dists[k])
    best = order[0]
    if dists[best] > tol:
        return best, "no match"
    if len(order) > 1 and dists[order[1]] < margin * max(dists[best], 1e-12) and dists[order[1]] <= tol * margin:
        return best, "ambiguous"
    return best, "matched"


def _fmt(d: Dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1e}" for k, v in sorted(d.items(), key=lambda kv: kv[1]))


def _verdict(dists, tol, names: Dict[str, str], what: str) -> Dict[str, Any]:
    best, status = classify(dists, tol)
    value = names[best] if status == "matched" else f"unclassified (nearest: {names[best]})"
    return {"value": value, "detail": f"{what}: {_fmt(dists)}", "distances": dists, "status": status}


# ============================================================================================ probes
BASE = dict(lr=0.01, weight_decay=0.0)


def probe_first_call(impl: Impl) -> Dict[str, Any]:
    """Does the first call move the weights? (The reference's first call only builds L, R and Q.)"""
    g = torch.Generator().manual_seed(1)
    init = [f32(torch.randn(8, 8, generator=g, dtype=F64))]
    grads = [[f32(svd_matrix(8, 8, g))] for _ in range(3)]
    snaps, _, _ = run_calls(impl, {**BASE, "precondition_frequency": 2}, init, grads)
    moved = rel(snaps[0][0], init[0])
    k = first_moving_call(init, snaps)
    value = "no update (builds L, R, Q only)" if moved == 0 else "updates the weights"
    return {"value": value, "detail": f"relative change after call 1: {moved:.2e}; first call that moves: "
            f"{None if k is None else k + 1}", "moved": moved, "first_moving_call": None if k is None else k + 1}


def probe_factor_order(impl: Impl) -> Dict[str, Any]:
    """Does the current gradient enter the factors (and the basis that projects it) before the update?

    β1 = β2 = 0 and shampoo_beta = 0 make each update a function of the current gradient and the basis only:
    D = Q s(Qᵀ G Q) Qᵀ. At the first call that moves, the basis is either the eigenbasis of that call's own G Gᵀ,
    Gᵀ G ('before': the update of G is diagonal in G's singular vectors) or of the previous call's ('after'), or
    one QR step from the previous basis towards the current gradient's (factors first, basis refreshed by QR)."""
    g = torch.Generator().manual_seed(2)
    n, eps = 6, 1e-3
    Gs = [f32(svd_matrix(n, n, g)) for _ in range(3)]
    init = [torch.zeros(n, n)]
    kw = {**BASE, "betas": (0.0, 0.0), "shampoo_beta": 0.0, "eps": eps, "precondition_frequency": 1}
    snaps, _, _ = run_calls(impl, kw, init, [[G] for G in Gs])
    k = first_moving_call(init, snaps)
    if k is None:
        return {"value": "no update in 3 calls", "detail": ""}
    D = -updates(init, snaps)[k] / kw["lr"]
    G = Gs[k].double()
    cands = {"before": [eig_desc(mode_gram(G, 0)), eig_desc(mode_gram(G, 1))]}
    if k > 0:
        P = Gs[k - 1].double()
        prev = [eig_desc(mode_gram(P, 0)), eig_desc(mode_gram(P, 1))]
        cands["after"] = prev
        cands["before_qr"] = [_qr_step(mode_gram(G, d), prev[d], sort=True) for d in range(2)]
    dists = {c: basis_distance(D, G, Qs, eps) for c, Qs in cands.items()}
    names = {"before": "before the update (call's own G in the basis)",
             "before_qr": "before the update (G in the factors, basis one QR step)",
             "after": "after the update"}
    out = _verdict(dists, 0.05, names, f"update of call {k + 1} vs candidate bases")
    out["first_moving_call"] = k + 1
    return out


def _diag_problem(n_calls: int, s: Sequence[float]):
    G = torch.diag(torch.tensor(s, dtype=F64))
    return [[f32(G)] for _ in range(n_calls)]


def probe_eps(impl: Impl) -> Dict[str, Any]:
    """Where ε enters: added to √V before bias correction (reference: the step size carries √(1−β2^t), so the
    effective ε is ε/√(1−β2^t)), after it (torch's Adam), or as a floor max(√v̂, ε).

    A diagonal gradient keeps every basis an exact signed permutation, so any SOAP is elementwise Adam here; at the
    first step that moves, u = g / (|g| + ε_eff) with g spanning 1 … 0.02 around ε = 0.1."""
    s = [1.0, -0.5, 0.25, -0.1, 0.05, -0.02]
    eps, (b1, b2) = 0.1, (0.9, 0.95)
    init = [torch.zeros(6, 6)]
    kw = {**BASE, "betas": (b1, b2), "eps": eps, "precondition_frequency": 100}
    snaps, _, _ = run_calls(impl, kw, init, _diag_problem(3, s))
    k = first_moving_call(init, snaps)
    if k is None:
        return {"value": "no update in 3 calls", "detail": ""}
    u = -torch.diagonal(updates(init, snaps)[k]) / kw["lr"]
    g = torch.tensor(s, dtype=F64)
    cands = {"before_bc": g / (g.abs() + eps / math.sqrt(1 - b2)), "after_bc": g / (g.abs() + eps),
             "floor": g / torch.clamp(g.abs(), min=eps)}
    dists = {c: float((u - P).abs().max()) for c, P in cands.items()}
    names = {"before_bc": "added to √V before bias correction", "after_bc": "added after bias correction (torch Adam)",
             "floor": "floor: max(√v̂, ε)"}
    return _verdict(dists, 1e-3, names, f"max |u − model| at call {k + 1}")


def probe_weight_decay(impl: Impl) -> Dict[str, Any]:
    """Weight decay before or after the update, and scaled by η or not. Diagonal gradient (elementwise Adam, the
    first update is sign(g) to 1e-7), η = wd = 0.5: the four orders give 1.125, 1.0, 0.75, 0.5 on the diagonal
    (starting from 2) and 0.75 or 0.5 off it (starting from 1)."""
    s = [1.0, -0.8, 0.6, -0.5]
    n, lr, wd = 4, 0.5, 0.5
    W0 = torch.full((n, n), 1.0) + torch.eye(n)
    init = [W0]
    kw = {"lr": lr, "weight_decay": wd, "eps": 1e-8, "betas": (0.9, 0.95), "precondition_frequency": 100}
    snaps, _, _ = run_calls(impl, kw, init, _diag_problem(3, s))
    k = first_moving_call(init, snaps)
    if k is None:
        return {"value": "no update in 3 calls", "detail": ""}
    prev = (snaps[k - 1][0] if k > 0 else init[0]).double()
    W = snaps[k][0].double()
    U = torch.diag(torch.sign(torch.tensor(s, dtype=F64)))
    cands = {("after", "lr"): (prev - lr * U) * (1 - lr * wd), ("before", "lr"): prev * (1 - lr * wd) - lr * U,
             ("after", "nolr"): (prev - lr * U) * (1 - wd), ("before", "nolr"): prev * (1 - wd) - lr * U,
             ("none", "-"): prev - lr * U}
    dists = {f"{a}/{b}": rel(W, P) for (a, b), P in cands.items()}
    best, status = classify(dists, 1e-4)
    order, scale = best.split("/")
    if status != "matched":
        return {"value": f"unclassified (nearest {best})", "order": "?", "scale": "?", "distances": dists,
                "detail": _fmt(dists)}
    order_v = {"after": "after the update", "before": "before the update", "none": "not applied"}[order]
    scale_v = {"lr": "η·wd", "nolr": "wd (not scaled by η)", "-": "not applied"}[scale]
    return {"value": f"{order_v}; {scale_v}", "order": order_v, "scale": scale_v, "distances": dists,
            "status": status, "detail": f"call {k + 1}, relative distance to each model: {_fmt(dists)}"}


def probe_beta2(impl: Impl) -> Dict[str, Any]:
    """The rate of V's EMA (HeavyBall #40: a PaLM schedule 1 − t^−0.8 used to replace β2). β1 = 0 and a tiny ε:
    the second moving step gives u = g₂ / √v̂ with v̂ = (β2 g₁² + g₂²) / (1 + β2), solved for β2."""
    a, b = [1.0, 0.9, 0.8, 0.7], [0.4, 0.35, 0.3, 0.25]
    beta2 = 0.9
    init = [torch.zeros(4, 4)]
    kw = {**BASE, "betas": (0.0, beta2), "eps": 1e-10, "precondition_frequency": 100}
    grads = [[f32(torch.diag(torch.tensor(x, dtype=F64)))] for x in (a, b, a, b)]
    snaps, _, _ = run_calls(impl, kw, init, grads)
    k = first_moving_call(init, snaps)
    if k is None or k + 1 >= len(grads):
        return {"value": "no two updates", "detail": ""}
    u = -torch.diagonal(updates(init, snaps)[k + 1]) / kw["lr"]
    g1, g2 = (torch.diagonal(grads[j][0].double()) for j in (k, k + 1))
    v = (g2 / u) ** 2
    fit = (v - g2 ** 2) / (g1 ** 2 - v)
    est = float(fit.median())
    spread = float(fit.max() - fit.min())
    value = "β2 as given" if abs(est - beta2) < 1e-3 else f"β2 replaced ({est:.3f} at its second step, given {beta2})"
    return {"value": value, "fitted_beta2": est, "spread": spread,
            "detail": f"given β2 {beta2}, fitted {est:.5f} (spread over coordinates {spread:.1e})"}


def _state_tensors(obj) -> List[torch.Tensor]:
    out = []
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            out += _state_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += _state_tensors(v)
    return out


def probe_momentum(impl: Impl) -> Dict[str, Any]:
    """Where the momentum is kept and whether it follows the basis at a refresh (HeavyBall #40/#42; the reference
    moved it from the original space to the eigenbasis in f42d296).

    ε ≫ √V makes the update ≈ Q (M'/ε) Qᵀ: if M' is the original-space momentum M rotated into the current basis
    (kept in the original space, or carried at each basis change), the update's direction is M's, whatever the
    basis; momentum left in the old basis's coordinates points elsewhere after the basis changes. The gradients
    change frame at call 5 (shampoo_beta = 0, so the next refresh turns the basis by O(1)); the cosine between
    each update and M is measured from then on. The storage: a state tensor parallel to M (cos > 0.9999)."""
    g = torch.Generator().manual_seed(6)
    n, b1 = 6, 0.9
    A, B = svd_matrix(n, n, g), svd_matrix(n, n, g)
    scales = [1.0, 0.8, 1.2, 0.9, 1.0, 1.1, 0.7, 1.3, 1.0, 0.9, 1.2, 0.8]
    Gs = [f32((A if t < 4 else B) * c) for t, c in enumerate(scales)]
    init = [torch.zeros(n, n)]
    kw = {"lr": 1.0, "weight_decay": 0.0, "betas": (b1, 0.95), "shampoo_beta": 0.0, "eps": 1e3,
          "precondition_frequency": 2}
    snaps, opt, params = run_calls(impl, kw, init, [[G] for G in Gs])
    k = first_moving_call(init, snaps)
    if k is None:
        return {"value": "no update", "detail": ""}
    D = updates(init, snaps)
    M = torch.zeros(n, n, dtype=F64)
    cos = []
    for t in range(k, len(Gs)):
        M = b1 * M + (1 - b1) * Gs[t].double()
        c = 1 - direction_dist(-D[t], M) ** 2 / 2
        cos.append(c)
    after_switch = cos[max(0, 4 - k):]
    worst = min(after_switch)
    follows = "follows the basis" if worst > 0.999 else "left in the old basis's coordinates"
    stored = "not found"
    cands = [x for x in _state_tensors(opt.state[params[0]]) if x.numel() == n * n and x.is_floating_point()]
    if cands:
        best = max(abs(1 - direction_dist(x.reshape(n, n), M) ** 2 / 2) for x in cands)
        stored = "original space" if best > 0.9999 else "eigenbasis"
    return {"value": follows, "storage": stored, "min_cos_after_switch": worst, "cos": cos,
            "detail": f"min cos(update, original-space momentum) after the frame change: {worst:.6f}; "
                      f"a state tensor parallel to M: {'yes' if stored == 'original space' else 'no'}"}


def probe_v_refresh(impl: Impl) -> Dict[str, Any]:
    """Are V's slots re-ordered with the basis at a refresh (HeavyBall #42)? Diagonal gradients whose magnitudes
    reverse their order at call 4 (shampoo_beta = 0): the refresh permutes the basis; with V following its
    eigenvectors the run is exactly elementwise Adam (β1 = 0), with V left in place the swapped slots scale the
    wrong coordinates (O(1) off)."""
    s1, s2 = [1.0, 0.7, 0.4, 0.2], [0.2, 0.4, 0.7, 1.0]
    b2 = 0.95
    grads = [[f32(torch.diag(torch.tensor(s1 if t < 3 else s2, dtype=F64)))] for t in range(10)]
    init = [torch.zeros(4, 4)]
    kw = {**BASE, "betas": (0.0, b2), "eps": 1e-8, "shampoo_beta": 0.0, "precondition_frequency": 2}
    snaps, _, _ = run_calls(impl, kw, init, grads)
    k = first_moving_call(init, snaps)
    if k is None:
        return {"value": "no update", "detail": ""}
    D = updates(init, snaps)
    v = torch.zeros(4, dtype=F64)
    dev = []
    for i, t in enumerate(range(k, len(grads))):
        gd = torch.diagonal(grads[t][0].double())
        v = b2 * v + (1 - b2) * gd ** 2
        pred = gd / (v / (1 - b2 ** (i + 1))).sqrt()
        dev.append(float((-torch.diagonal(D[t]) / kw["lr"] - pred).abs().max()))
    worst = max(dev)
    value = "re-ordered with the basis" if worst < 1e-3 else "not re-ordered (slots mismatched after a refresh)"
    return {"value": value, "max_dev": worst, "dev": dev,
            "detail": f"max |update − elementwise Adam| over calls {k + 1}…{len(grads)}: {worst:.1e}"}


def _sides_distances(D: torch.Tensor, G: torch.Tensor, eps: float) -> Dict[str, float]:
    """Per choice of rotated sides (R: rotated into the eigenbasis of that mode's Gram, I: identity), how far D is
    from Adam's update in those bases."""
    Q = [eig_desc(mode_gram(G, d)) for d in range(G.dim())]
    out = {}
    for mask in range(2 ** G.dim()):
        Qs = [Q[d] if mask >> d & 1 else None for d in range(G.dim())]
        out["".join("R" if mask >> d & 1 else "I" for d in range(G.dim()))] = basis_distance(D, G, Qs, eps)
    return out


def probe_one_d(impl: Impl) -> Dict[str, Any]:
    """1-D parameters with precondition_1d=False (the reference: AdamW). A constant gradient, β1 = β2 = 0: AdamW
    gives s(g) elementwise; a rotation into g gᵀ's eigenbasis gives ≈ g/‖g‖."""
    g = torch.Generator().manual_seed(8)
    grad = torch.randn(8, generator=g, dtype=F64).sign() * torch.linspace(0.3, 1.0, 8, dtype=F64)
    init = [torch.zeros(8)]
    kw = {**BASE, "betas": (0.0, 0.0), "eps": 1e-3, "precondition_1d": False, "precondition_frequency": 100}
    try:
        snaps, _, _ = run_calls(impl, kw, init, [[f32(grad)] for _ in range(3)])
    except Exception as e:
        return {"value": "rejected", "error": f"{type(e).__name__}: {e}", "detail": f"{type(e).__name__}: {e}"}
    k = first_moving_call(init, snaps)
    if k is None:
        return {"value": "no update", "detail": ""}
    D = -updates(init, snaps)[k] / kw["lr"]
    dists = _sides_distances(D, f32(grad).double(), kw["eps"])
    return _verdict(dists, 0.02, {"I": "AdamW (not rotated)", "R": "rotated (eigenbasis of g gᵀ)"},
                    "direction distance")


def probe_max_dim(impl: Impl) -> Dict[str, Any]:
    """Dimensions above max_precond_dim (8 here): shapes (4, 12) and (12, 4), constant gradient (every basis
    fixed), β1 = β2 = 0: which sides are rotated is read off the update (I: identity, R: rotated)."""
    g = torch.Generator().manual_seed(9)
    res, values, details = {}, [], []
    for shape in ((4, 12), (12, 4)):
        G = f32(svd_matrix(*shape, g))
        init = [torch.zeros(*shape)]
        kw = {**BASE, "betas": (0.0, 0.0), "eps": 1e-3, "max_precond_dim": 8, "precondition_frequency": 100}
        snaps, _, _ = run_calls(impl, kw, init, [[G] for _ in range(3)])
        k = first_moving_call(init, snaps)
        D = -updates(init, snaps)[k] / kw["lr"]
        dists = _sides_distances(D, G.double(), kw["eps"])
        best, status = classify(dists, 0.02)
        res[str(shape)] = {"best": best, "status": status, "distances": dists}
        values.append(best if status == "matched" else "?")
        details.append(f"{shape}: {best} ({status}; {_fmt(dists)})")
    expect_small = ["RI", "IR"]
    if values == expect_small:
        value = "identity on the side > max_precond_dim"
    elif values == ["RR", "RR"]:
        value = "both sides rotated (max_precond_dim not applied)"
    else:
        value = f"sides (4, 12): {values[0]}, (12, 4): {values[1]}"
    return {"value": value, "shapes": res, "detail": "; ".join(details)}


def _groupings(shape: Sequence[int]):
    """Every way to merge consecutive dimensions: (merged shape, groups)."""
    n = len(shape)
    for mask in range(2 ** (n - 1)):
        groups, cur = [], [0]
        for d in range(1, n):
            if mask >> (d - 1) & 1:
                cur.append(d)
            else:
                groups.append(cur)
                cur = [d]
        groups.append(cur)
        yield tuple(math.prod(shape[d] for d in grp) for grp in groups)


def probe_merge_dims(impl: Impl) -> Dict[str, Any]:
    """merge_dims on a (4, 3, 3, 2) tensor with max_precond_dim 12: the layout it is preconditioned in, read off
    the update among every merge of consecutive dimensions (dims > 12 in identity); also with merge_dims=False."""
    g = torch.Generator().manual_seed(10)
    shape, maxd, eps = (4, 3, 3, 2), 12, 1e-3
    G = f32(tensor_grad(shape, g))
    out, values = {}, []
    for merge in (True, False):
        kw = {**BASE, "betas": (0.0, 0.0), "eps": eps, "max_precond_dim": maxd, "merge_dims": merge,
              "precondition_frequency": 100}
        init = [torch.zeros(*shape)]
        try:
            snaps, _, _ = run_calls(impl, kw, init, [[G] for _ in range(3)])
        except Exception as e:
            return {"value": "rejected", "error": f"{type(e).__name__}: {e}", "detail": f"{type(e).__name__}: {e}"}
        k = first_moving_call(init, snaps)
        D = -updates(init, snaps)[k] / kw["lr"]
        dists = {}
        for layout in _groupings(shape):
            Gm = G.double().reshape(layout)
            Qs = [eig_desc(mode_gram(Gm, d)) if n <= maxd else None for d, n in enumerate(layout)]
            dists[str(layout)] = basis_distance(D.reshape(layout), Gm, Qs, eps)
        best, status = classify(dists, 0.02)
        out[str(merge)] = {"best": best, "status": status, "distances": dists}
        values.append(best if status == "matched" else f"? (nearest {best})")
    return {"value": f"merge_dims=True: {values[0]}; False: {values[1]}", "layouts": out,
            "detail": "; ".join(f"merge_dims={m}: {v['best']} ({v['status']}, next "
                                f"{sorted(v['distances'].values())[1]:.1e})" for m, v in out.items())}


def probe_shampoo_beta_default(impl: Impl) -> Dict[str, Any]:
    """The factors' EMA rate when shampoo_beta is not given: the run without it is compared with runs that give it
    explicitly (β2 = 0.8 here, 0.95, 0.99, β1 = 0.9); an identical trajectory names the default."""
    g = torch.Generator().manual_seed(11)
    n = 6
    init = [torch.zeros(n, n)]
    grads = [[f32(svd_matrix(n, n, g))] for _ in range(12)]
    base = {**BASE, "betas": (0.9, 0.8), "eps": 1e-8, "precondition_frequency": 2}
    ref, _, _ = run_calls(impl, base, init, grads)
    dists = {}
    for label, sb in (("β2", 0.8), ("0.95", 0.95), ("0.99", 0.99), ("β1", 0.9)):
        snaps, _, _ = run_calls(impl, {**base, "shampoo_beta": sb}, init, grads)
        dists[label] = max(rel(a[0], b[0]) for a, b in zip(ref, snaps) if b[0].abs().max() > 0)
    best, status = classify(dists, 1e-6, margin=100.0)
    value = best if status == "matched" else f"unclassified (nearest {best})"
    return {"value": value, "distances": dists, "detail": f"distance to explicit values: {_fmt(dists)}"}


def _qr_step(P: torch.Tensor, Q: torch.Tensor, sort: bool) -> torch.Tensor:
    P, Q = P.double(), Q.double()
    if sort:
        order = torch.argsort(torch.diagonal(Q.T @ P @ Q), descending=True)
        Q = Q[:, order]
    return torch.linalg.qr(P @ Q).Q


def probe_refresh(impl: Impl) -> Dict[str, Any]:
    """The refresh: one power step + QR from the old basis sorted by the estimated eigenvalues (Algorithm 4), the
    same unsorted, or a full eigh; and when a new basis is first used. Gradient A for calls 1-3, B from call 4,
    shampoo_beta = 0 (the factors hold B from call 4), β1 = β2 = 0 (each update reads the basis off D = Q s(Qᵀ B Q)
    Qᵀ), f = 2. Candidates per call: A's eigenbasis, k sorted QR steps towards B (k = 1…8), k unsorted ones, B's
    eigenbasis. A flat spectrum (1.2 … 0.8) keeps successive QR steps ≥ 0.1 apart."""
    g = torch.Generator().manual_seed(12)
    n, eps, f = 5, 1e-3, 2
    A, B = f32(svd_matrix(n, n, g, 1.2, 0.8)), f32(svd_matrix(n, n, g, 1.2, 0.8))
    calls = 10
    grads = [[A if t < 3 else B] for t in range(calls)]
    init = [torch.zeros(n, n)]
    kw = {**BASE, "betas": (0.0, 0.0), "shampoo_beta": 0.0, "eps": eps, "precondition_frequency": f}
    snaps, _, _ = run_calls(impl, kw, init, grads)
    D = updates(init, snaps)
    Bd = B.double()
    QA = [eig_desc(mode_gram(A.double(), d)) for d in range(2)]
    cands = {"A": QA, "eigh": [eig_desc(mode_gram(Bd, d)) for d in range(2)]}
    for sort, tag in ((True, "qr"), (False, "qr_unsorted")):
        Q = QA
        for k in range(1, 9):
            Q = [_qr_step(mode_gram(Bd, d), Q[d], sort) for d in range(2)]
            cands[f"{tag}{k}"] = Q
    seq, per_call = [], {}
    for t in range(3, calls):
        if not D[t].abs().max() > 0:
            seq.append("none")
            continue
        dists = {c: basis_distance(-D[t], Bd, Q, eps) for c, Q in cands.items()}
        best, status = classify(dists, 0.02, margin=3.0)
        per_call[t + 1] = {"best": best, "status": status, "dist": dists[best],
                           "next": sorted(dists.values())[1]}
        seq.append(best if status == "matched" else f"?{best}")
    first_new = next((c for c in seq if c != "A"), None)
    method = {"qr1": "QR power step from the sorted basis", "qr_unsorted1": "QR power step, unsorted",
              "eigh": "eigh"}.get(first_new, f"unclassified ({first_new})")
    changes = [t + 4 for t in range(len(seq)) if seq[t] != (seq[t - 1] if t else "A")]
    return {"value": method, "schedule": "new basis first used at calls " + ", ".join(map(str, changes)),
            "sequence": seq, "per_call": per_call,
            "detail": f"basis used at calls 4…{calls}: {', '.join(seq)} (gradient switched to B at call 4, f = {f})"}


PROBES: Dict[str, Callable[[Impl], Dict[str, Any]]] = {
    "first_call": probe_first_call,
    "factor_order": probe_factor_order,
    "eps": probe_eps,
    "weight_decay": probe_weight_decay,
    "beta2": probe_beta2,
    "momentum": probe_momentum,
    "v_refresh": probe_v_refresh,
    "one_d": probe_one_d,
    "max_dim": probe_max_dim,
    "merge_dims": probe_merge_dims,
    "shampoo_beta_default": probe_shampoo_beta_default,
    "refresh": probe_refresh,
}


def run_probe(impl: Impl, name: str) -> Dict[str, Any]:
    torch.manual_seed(0)
    try:
        return PROBES[name](impl)
    except Exception as e:
        return {"value": "error", "error": f"{type(e).__name__}: {e}",
                "detail": traceback.format_exc(limit=3).strip().splitlines()[-1]}


def compile_cache_check(impl: Impl) -> Dict[str, Any]:
    """The first update of :func:`probe_eps`'s problem run fresh, and run right after another instance with other
    betas and ε in the same process without resetting torch.compile's cache (NVIDIA: see ``fresh_compile``)."""
    s = [1.0, -0.5, 0.25, -0.1, 0.05, -0.02]
    kw = {**BASE, "betas": (0.9, 0.95), "eps": 0.1, "precondition_frequency": 100}
    g = torch.Generator().manual_seed(3)
    other = {**BASE, "betas": (0.0, 0.0), "shampoo_beta": 0.0, "eps": 1e-3, "precondition_frequency": 1}
    flag = getattr(impl, "fresh_compile", False)
    out = {}
    try:
        for label, first in (("fresh", None), ("after another instance", other)):
            torch._dynamo.reset()
            impl.fresh_compile = False
            if first is not None:
                run_calls(impl, first, [torch.zeros(6, 6)], [[f32(svd_matrix(6, 6, g))]])
            snaps, _, _ = run_calls(impl, kw, [torch.zeros(6, 6)], _diag_problem(1, s))
            out[label] = [round(float(x), 4) for x in -torch.diagonal(snaps[0][0].double()) / kw["lr"]]
    finally:
        impl.fresh_compile = flag
    out["same"] = out["fresh"] == out["after another instance"]
    return out


# ============================================================================================ golden distances
CALLS = (1, 10, 32)


def golden_distances(impl: Impl, golden_path: str) -> Dict[str, Any]:
    """Relative distance (worst parameter, ‖w − w_ref‖ / ‖w_ref‖, float32) from the reference's trajectories at
    calls 1, 10, 32 of every golden configuration, for both commits. Where the implementation rejects a
    parameter (NVIDIA: 1-D), it runs on the others and says so."""
    data = torch.load(golden_path, weights_only=True)
    out = {}
    for name, cfg in sorted(data["configs"].items()):
        kw = {**REF_DEFAULTS, **cfg["kwargs"]}
        _, notes = impl.mapping(kw)
        idx = list(cfg["param_indices"])
        entry: Dict[str, Any] = {"notes": list(notes)}
        try:
            traj = _golden_run(impl, kw, data, idx)
        except Exception as e:
            kept = [i for i in idx if data["init"][i].dim() == 2]
            if kept == idx:
                entry["error"] = f"{type(e).__name__}: {e}"
                out[name] = entry
                continue
            try:
                traj = _golden_run(impl, kw, data, kept)
            except Exception as e2:
                entry["error"] = f"{type(e2).__name__}: {e2}"
                out[name] = entry
                continue
            dropped = [tuple(data["init"][i].shape) for i in idx if i not in kept]
            entry["notes"].append(f"parameters {dropped} rejected ({type(e).__name__}: {e}); distance over the others")
            idx = kept
        if isinstance(impl, NvidiaEmerging):
            big = [tuple(data["init"][i].shape) for i in idx if max(data["init"][i].shape) > kw["max_precond_dim"]]
            if big:
                entry["notes"].append(f"max_precond_dim={kw['max_precond_dim']}: no counterpart, {big} rotated on "
                                      "every side")
        for commit, ref in cfg["trajectory"].items():
            pos = {i: j for j, i in enumerate(cfg["param_indices"])}
            entry[commit] = {str(c): max(rel(traj[c - 1][j], ref[c - 1][pos[i]]) for j, i in enumerate(idx))
                             for c in CALLS}
        moved = _golden_run(impl, kw, data, idx, perturb=True)
        entry["ulp_sensitivity"] = {str(c): max(rel(a, b) for a, b in zip(moved[c - 1], traj[c - 1])) for c in CALLS}
        out[name] = entry
    return out


def one_ulp(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` with every entry moved one ulp up or down (seeded)."""
    g = torch.Generator().manual_seed(seed)
    up = torch.randint(0, 2, x.shape, generator=g, dtype=torch.bool)
    inf = torch.full_like(x, math.inf)
    return torch.nextafter(x, torch.where(up, inf, -inf))


def _golden_run(impl, kw, data, idx, perturb: bool = False):
    """The trajectory on the golden inputs; ``perturb``: every input moved by one ulp (how much of a distance is
    round-off: the golden problems are well posed for the reference, not necessarily for another algorithm)."""
    init = [data["init"][i] for i in idx]
    grads = [[row[i] for i in idx] for row in data["grads"]]
    if perturb:
        init = [one_ulp(x, 7 + j) for j, x in enumerate(init)]
        grads = [[one_ulp(x, 1000 * (t + 1) + j) for j, x in enumerate(row)] for t, row in enumerate(grads)]
    snaps, _, _ = run_calls(impl, kw, init, grads)
    return snaps


# ============================================================================================ one implementation
def environment() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"python": sys.version.split()[0], "executable": sys.executable, "torch": torch.__version__,
            "cpu": cpu, "torch_threads": torch.get_num_threads()}


def run_impl(impl: Impl, golden_path: Optional[str], probes: Sequence[str] = tuple(PROBES)) -> Dict[str, Any]:
    """Every probe and the golden distances for one implementation (what the worker prints)."""
    missing = impl.available()
    res: Dict[str, Any] = {"impl": impl.name, "label": impl.label, "package": impl.dist, "version": impl.version(),
                           "environment": environment(), "rules": impl.RULES,
                           "extras": {k: repr(v) for k, v in impl.EXTRAS.items()}}
    if missing:
        res["unavailable"] = missing
        return res
    res["introspection"] = impl.introspect()
    res["probes"] = {name: run_probe(impl, name) for name in probes}
    if getattr(impl, "fresh_compile", False):
        res["compile_cache_check"] = compile_cache_check(impl)
    if golden_path:
        res["golden"] = golden_distances(impl, golden_path)
    return res


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/conformance_probes.py", description=__doc__.split("\n")[0])
    p.add_argument("--worker", required=True, help=f"one of {sorted(implementations())}")
    p.add_argument("--golden", default=None, help="the golden trajectories (.pt)")
    p.add_argument("--out", default=None, help="write the JSON here (default: stdout)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    res = run_impl(implementations()[args.worker], args.golden)
    text = json.dumps(res, indent=1, default=str)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
