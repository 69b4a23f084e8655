"""Claim 1 of the paper as studies on data: where the identity holds, what breaks it, and how far the practical
algorithm is from it along training (the checks themselves are the plain functions of :mod:`soap_lab.equivalence.identities`).

:func:`claim1_study`: on the teaching problem (``models.anisotropic_regression``), Adafactor's statistics in the
eigenbasis of L = E[G Gᵀ], R = E[Gᵀ G] are the eigenvalues and idealized Adafactor in that basis equals idealized
Shampoo^½; the exponent, the trace factor, ε and a stale basis break it. :func:`gap_trajectory`: the measured gap
between ``EigenAdafactor`` (a basis frozen between refreshes, statistics accumulated across bases) and the
idealized update along training trajectories, on the teaching problem and a small GPT.

Both return JSON-ready dicts, stored with provenance under ``data/equivalence/`` (``soap_lab.records.datasets.save_json``)
and drawn by ``soap_lab.plot_equivalence``. Everything is float64 on the CPU.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..train import batches, data, models
from . import identities as eq
from ..optim import second_moment
from ..optim.adafactor import EigenAdafactor

__all__ = ["minibatch_grads", "claim1_study", "RANGE_RTOL", "gap_trajectory"]


def minibatch_grads(prob, W, n_batches: int = 64, gen=None) -> List[Any]:
    """Gradients of the teaching loss (``models.anisotropic_regression``) at W on ``n_batches`` disjoint random
    minibatches of its samples (float64): the "gradient batches" L = E[G Gᵀ], R = E[Gᵀ G] are taken over."""
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    N = prob["X"].shape[0]
    perm = torch.randperm(N, generator=gen)
    X, Y, A = prob["X"].double(), prob["Y"].double(), prob["A"].double()
    out = []
    for idx in perm.chunk(n_batches):
        R = X[idx] @ W.T - Y[idx]  # residuals (b, m)
        out.append(A @ R.T @ X[idx] / len(idx))  # d/dW of 1/(2b) Σ rᵀ A r
    return out


def claim1_study(m: int = 16, n: int = 12, condition: float = 100.0, n_batches: int = 64, noise: float = 0.1,
                 exponents: Sequence[float] = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8),
                 eps_values: Sequence[float] = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                 max_staleness: int = 40, trajectory_lr: float = 0.02, seed: int = 0) -> Dict[str, Any]:
    """Claim 1 on the teaching problem (``models.anisotropic_regression``), and what breaks it.

    Gradient batches are minibatch gradients of the regression loss at a point W. L, R = E[G Gᵀ], E[Gᵀ G];
    rotated by their eigenvectors, Adafactor's row/column statistics equal the eigenvalues, and idealized
    Adafactor in that basis equals idealized Shampoo^½ (√Tr L · L^-½ G R^-½). Then the identity is broken by
    Shampoo's exponent (e ≠ ½), dropping the trace factor, ε on the eigenvalues (relative to their mean),
    and a stale basis: W follows an Adam trajectory, the gradients of step T are preconditioned in the
    eigenbasis of the factors of step T − s (s = staleness).
    """
    if m < 2 or n < 2:
        raise ValueError(f"the layer must be at least 2×2, got {m}×{n}")
    if n_batches < 2:
        raise ValueError(f"n_batches must be >= 2, got {n_batches}")
    prob = models.anisotropic_regression(m=m, n=n, n_samples=max(512, 8 * n_batches), condition=condition, noise=noise,
                                  seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)

    # An Adam trajectory from W0 (so the factors, hence the basis, drift), keeping every step's batch gradients.
    W = prob["W0"].double().clone()
    mom, vel = torch.zeros_like(W), torch.zeros_like(W)
    traj: List[List[Any]] = []
    T = max_staleness + 10
    for t in range(1, T + 1):
        grads = minibatch_grads(prob, W, n_batches, gen)
        traj.append(grads)
        G = torch.stack(grads).mean(0)
        mom.mul_(0.9).add_(G, alpha=0.1)
        vel.mul_(0.95).addcmul_(G, G, value=0.05)
        W -= trajectory_lr * (mom / (1 - 0.9**t)) / ((vel / (1 - 0.95**t)).sqrt() + 1e-12)

    batch = traj[-1]
    G = torch.stack(batch).mean(0)
    L, R = eq.gradient_factors(batch)
    QL, QR = eq.eigenbasis(L, R)
    lam = torch.linalg.eigvalsh(L).flip(0)
    mu = torch.linalg.eigvalsh(R).flip(0)
    A, C, total = eq.rotated_statistics(batch, QL, QR)
    ideal = eq.idealized_shampoo_update(G, L, R)
    ada = eq.idealized_eigen_adafactor_update(G, batch)
    out: Dict[str, Any] = {
        "params": {"m": m, "n": n, "condition": condition, "n_batches": n_batches, "noise": noise,
                   "max_staleness": max_staleness, "trajectory_lr": trajectory_lr, "seed": seed},
        "spectrum": {"lambda": lam.tolist(), "A": A.tolist(), "mu": mu.tolist(), "C": C.tolist(),
                     "trace_L": float(torch.trace(L)), "sum_A": float(total)},
        "exact_error": eq.relative_error(ideal, ada),
        "stats_error": max(eq.relative_error(A, lam), eq.relative_error(C, mu)),
        "no_trace_error": eq.relative_error(eq.idealized_shampoo_update(G, L, R, trace_scaling=False), ada),
        "exponent": [{"exponent": float(e), "error": eq.relative_error(eq.idealized_shampoo_update(G, L, R, exponent=e), ada)}
                     for e in exponents],
    }
    scale = float(torch.trace(L)) / m
    out["eps"] = [{"eps_relative": float(e), "eps": float(e) * scale,
                   "error": eq.relative_error(eq.idealized_shampoo_update(G, L, R, eps=float(e) * scale), ada)}
                  for e in eps_values]
    stale = []
    for s in range(0, max_staleness + 1):
        basis = eq.eigenbasis(*eq.gradient_factors(traj[-1 - s]))
        upd = eq.idealized_eigen_adafactor_update(G, batch, basis=basis)
        stale.append({"staleness": s, "error": eq.relative_error(upd, ideal)})
    out["staleness"] = stale
    return out


# ================================================================ the gap along a training trajectory
RANGE_RTOL = 1e-10


def _root_pinv(P, rtol: float = RANGE_RTOL):
    """P^-½ on the range of the symmetric factor P (eigenvalues > rtol·max), 0 on its null space."""
    lam, Q = torch.linalg.eigh(P)
    inv = torch.where(lam > rtol * lam.max(), lam.clamp_min(torch.finfo(P.dtype).tiny).rsqrt(), torch.zeros_like(lam))
    return (Q * inv) @ Q.T


def _stale_updates(G, L, R, Q, stats, step: int, beta2: float):
    """The idealized update from the current factors, and three Adafactor updates to compare with it.

    ``ideal``: √Tr L · L^-½ G R^-½, the inverse roots taken on the factors' range (a pseudo-inverse: in a
    GPT the factors are exactly singular along directions the gradient never has, e.g. the all-ones direction
    of a residual-stream output behind mean-subtracting LayerNorms). ``fresh``: Adafactor in the eigenbasis of
    the current factors (Claim 1). ``basis``: Adafactor in the optimizer's (stale) basis ``Q`` with the
    statistics of all past gradients rotated into it — diag(Q_Lᵀ L Q_L), diag(Q_Rᵀ R Q_R), Tr L — so only the
    basis is stale. ``running``: the optimizer's own running row/column statistics (accumulated across older
    bases), updated with the current rotated gradient and bias-corrected, as the practical algorithm uses them.
    Coordinates whose row or column statistic is ≤ ``RANGE_RTOL`` × its max are set to 0 in each (they are
    outside the range). Momentum is left out: each is a preconditioner applied to the current gradient.
    """
    ideal = torch.trace(L).sqrt() * (_root_pinv(L) @ G @ _root_pinv(R))

    def adafactor_in(QL, QR, A, C, total):
        # V̂ = A Cᵀ / total; coordinates outside the range (a row or column statistic ≤ rtol × its max) -> 0
        keep = torch.outer(A > RANGE_RTOL * A.max(), C > RANGE_RTOL * C.max())
        v = (torch.outer(A, C) / total).clamp_min(torch.finfo(A.dtype).tiny)
        g = QL.T @ G @ QR
        return QL @ torch.where(keep, g / v.sqrt(), torch.zeros_like(g)) @ QR.T

    def factor_stats(QL, QR):
        return (QL * (L @ QL)).sum(0), (QR * (R @ QR)).sum(0), torch.trace(L)

    QL, QR = Q
    u_basis = adafactor_in(QL, QR, *factor_stats(QL, QR))
    st = {"exp_avg_sq_factors": [x.double().clone() for x in stats]}
    second_moment.update_(st, QL.T @ G @ QR, beta2)
    rows, cols = (x / (1 - beta2 ** (step + 1)) for x in st["exp_avg_sq_factors"])  # means: V̂ = r cᵀ / mean
    u_run = adafactor_in(QL, QR, rows, cols, rows.mean())
    FL, FR = torch.linalg.eigh(L)[1], torch.linalg.eigh(R)[1]
    u_fresh = adafactor_in(FL, FR, *factor_stats(FL, FR))
    return ideal, u_basis, u_run, u_fresh


def _teaching_problem(m: int, n: int, condition: float, noise: float, batch: int, seed: int):
    prob = models.anisotropic_regression(m=m, n=n, n_samples=4096, condition=condition, noise=noise, seed=seed)
    model = prob["make_model"]().double()
    gen = torch.Generator().manual_seed(seed + 1)
    N = prob["X"].shape[0]
    X, Y, A = prob["X"].double(), prob["Y"].double(), prob["A"].double()

    def loss_fn():
        idx = torch.randint(0, N, (batch,), generator=gen)
        R = model(X[idx]) - Y[idx]
        return 0.5 * ((R @ A) * R).sum(-1).mean()

    return model, loss_fn, {"weight": f"{m}×{n}"}


def _gpt_problem(preset: str, batch: int, seed: int):
    tok = data.get_tokenizer("char", "austen")
    stream = data.token_stream("austen", "char", split="train")
    cfg = models.gpt_config(preset, tok.vocab_size)
    torch.manual_seed(seed)
    model = models.GPT(cfg).double()
    sampler = batches.BatchSampler(stream, batch, cfg.seq_len, seed=seed)

    def loss_fn():
        x, y = sampler.next()
        _, loss = model(x, y)
        return loss

    names = {id(p): n for n, p in model.named_parameters()}
    return model, loss_fn, names


def gap_trajectory(frequencies: Sequence[int] = (10, 50), refreshes: Sequence[str] = ("qr", "eigh"),
                   problems: Sequence[str] = ("teaching", "gpt"), steps: int = 200, lr: float = 3e-3,
                   betas=(0.95, 0.95), m: int = 32, n: int = 24, condition: float = 100.0, noise: float = 0.1,
                   batch: int = 64, preset: str = "tiny", gpt_batch: int = 16, seed: int = 0,
                   max_layers: Optional[int] = None) -> Dict[str, Any]:
    """The measured gap between practical and idealized Claim 1 along training trajectories.

    Train each of ``problems`` (``"teaching"``: the anisotropic regression, one m×n layer, minibatch ``batch``;
    ``"gpt"``: the GPT of ``preset`` on the Austen characters, ``gpt_batch`` sequences, float64) with
    ``EigenAdafactor`` on its matrices (SOAP's ordering: step in the current basis, then update the factors,
    refresh every f steps by ``refresh``; other parameters AdamW) and before every step compare, per matrix,
    three preconditioned gradients with the idealized Shampoo^½ update √Tr L·L^-½ G R^-½ from the *current*
    factors (the current gradient included):

    - ``gap_fresh``: Adafactor in the eigenbasis of the current factors (Claim 1: 0 up to round-off);
    - ``gap_basis``: Adafactor in the optimizer's (stale) basis, statistics of all past gradients rotated
      into it (only the basis is stale);
    - ``gap_running``: Adafactor in the stale basis with the optimizer's running statistics (the practical
      algorithm: statistics also accumulated in older bases).

    ``age`` = gradients since the basis was computed (1 = built from the factors of the previous step);
    ``period`` = index of the basis (0 = the first one, built from a single gradient). The factors of a GPT
    are exactly singular along directions its gradients never have (embedding rows of characters not seen
    yet, the all-ones direction behind mean-subtracting LayerNorms, the directions QK-LayerNorm removes): the
    inverse roots are taken on the factors' range (:func:`_stale_updates`). A step whose gaps are not finite
    is left out and counted in ``skipped``. Returns ``{"params", "columns", "skipped"}``: a column-oriented table
    (:func:`table`), one row per (problem, f, refresh, step, layer), gaps to 4 significant digits.
    """
    bad = [p for p in problems if p not in ("teaching", "gpt")]
    if bad or not problems:
        raise ValueError(f"unknown problem {bad[0] if bad else None!r}; allowed: teaching, gpt")
    if not frequencies:
        raise ValueError("frequencies is empty: give at least one precondition frequency, e.g. [10, 50]")
    if any(int(f) < 1 for f in frequencies):
        raise ValueError(f"precondition frequencies must be >= 1, got {list(frequencies)}")
    bad = [r for r in refreshes if r not in ("qr", "eigh")]
    if bad or not refreshes:
        raise ValueError(f"unknown refresh {bad[0] if bad else None!r}; allowed: qr, eigh")
    rows: List[Dict[str, Any]] = []
    skipped: Dict[str, int] = {}
    for problem in problems:
        for f in frequencies:
            for refresh in refreshes:
                if problem == "teaching":
                    model, loss_fn, _ = _teaching_problem(m, n, condition, noise, batch, seed)
                    layer_names = {id(model.weight): "weight"}
                else:
                    model, loss_fn, layer_names = _gpt_problem(preset, gpt_batch, seed)
                params = [p for p in model.parameters() if p.dim() == 2]
                if max_layers is not None:
                    params = params[:max_layers]
                ids = {id(p) for p in params}
                others = [p for p in model.parameters() if id(p) not in ids]
                opt = EigenAdafactor(params, lr=lr, betas=betas, precondition_frequency=int(f), refresh=refresh,
                                     weight_decay=0.0)
                opt_rest = torch.optim.AdamW(others, lr=lr, betas=betas) if others else None
                b2 = betas[1]
                for _ in range(steps):
                    opt.zero_grad(set_to_none=True)
                    if opt_rest is not None:
                        opt_rest.zero_grad(set_to_none=True)
                    loss = loss_fn()
                    loss.backward()
                    for p in params:
                        st = opt.state.get(p, {})
                        if "Q" not in st or any(q is None for q in st["Q"]) or p.grad is None:
                            continue
                        t = st["step"]
                        G = p.grad.double()
                        L = b2 * st["GG"][0].double() + (1 - b2) * G @ G.T
                        R = b2 * st["GG"][1].double() + (1 - b2) * G.T @ G
                        Q = [q.double() for q in st["Q"]]
                        name = layer_names.get(id(p), "?")
                        ideal, u_basis, u_run, u_fresh = _stale_updates(G, L, R, Q, st["exp_avg_sq_factors"], t, b2)
                        gaps = [eq.relative_error(u, ideal) for u in (u_fresh, u_basis, u_run)]
                        if not all(math.isfinite(x) for x in gaps) or not torch.isfinite(ideal).all():
                            key = f"{problem}/{name}"
                            skipped[key] = skipped.get(key, 0) + 1
                            continue
                        rows.append({
                            "problem": problem, "f": int(f), "refresh": refresh, "step": t + 1, "layer": name,
                            "shape": list(p.shape), "age": t + 1 - (t // int(f)) * int(f), "period": t // int(f),
                            "gap_fresh": gaps[0], "gap_basis": gaps[1], "gap_running": gaps[2],
                            "loss": float(loss.detach()),
                        })
                    opt.step()
                    if opt_rest is not None:
                        opt_rest.step()
    shapes = {}
    for r in rows:
        shapes[f"{r['problem']}/{r['layer']}"] = r.pop("shape")
    cols = {k: [r[k] for r in rows] for k in (rows[0] if rows else [])}
    for k in ("gap_fresh", "gap_basis", "gap_running", "loss"):
        if k in cols:
            cols[k] = [float(f"{x:.4g}") for x in cols[k]]
    return {"params": {"frequencies": [int(f) for f in frequencies], "refreshes": list(refreshes),
                       "problems": list(problems), "shapes": shapes, "steps": steps, "lr": lr, "betas": list(betas), "m": m, "n": n,
                       "condition": condition, "noise": noise, "batch": batch, "preset": preset,
                       "gpt_batch": gpt_batch, "seed": seed, "max_layers": max_layers},
            "columns": cols, "skipped": skipped}
