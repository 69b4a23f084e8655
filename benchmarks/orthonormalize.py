"""Householder QR vs guarded Cholesky-QR for a SOAP refresh, side by side in one process, by factor size.

The matrices are what a refresh orthonormalizes in the first refreshes of a run: ``X = P·Q`` with P a
factor accumulated over f=10 steps of open-loop gradients (fixed row/column scales times noise, as in
``step_time.py``) and Q the stale basis from the first step's eigendecomposition. Early refreshes are the hard
case for Cholesky-QR: the stale Q makes P·Q far from orthogonal, so the first pass often needs a second.

    python benchmarks/orthonormalize.py                      # sizes 384 … 3072, batch 4
    python benchmarks/orthonormalize.py --sizes 1536 3072 --batch 12

Prints, per (size, batch): ms per matrix for each method, the ratio, the passes Cholesky-QR needed and the
loss of orthogonality of each result. This is the measurement behind the default ``qr_method`` (``soap_lab.optim.linalg.orthonormalize``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from soap_lab.optim import linalg  # noqa: E402


def refresh_input(s: int, other: int, batch: int, f: int = 10, beta: float = 0.95, seed: int = 0,
                  cycles: int = 1) -> torch.Tensor:
    """(batch, s, s) float32 ``P·Q[:, order]`` as the ``cycles``-th refresh (step ``cycles·f``) sees it; earlier
    refreshes are done as SOAP does them (one power-iteration step with Householder QR)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        r = torch.logspace(0, -1, s)[torch.randperm(s, generator=g)].unsqueeze(-1)
        c = torch.logspace(0, -1, other)[torch.randperm(other, generator=g)]
        P = torch.zeros(s, s)
        Q = None
        for t in range(f * cycles):
            G = torch.randn(s, other, generator=g) * r * c
            linalg.syrk_(P, G, beta, 1 - beta)
            if Q is None:
                Q = linalg.eigh_descending(P)
            elif (t + 1) % f == 0:
                PQ = P @ Q
                order = torch.argsort((Q * PQ).sum(0), descending=True, stable=True)
                if t + 1 == f * cycles:
                    out.append(PQ[:, order])
                else:
                    Q = linalg.householder_q(PQ[:, order])
    return torch.stack(out)


def orth_loss(Q: torch.Tensor) -> float:
    eye = torch.eye(Q.shape[-1], dtype=torch.float64)
    Qd = Q.double()
    return float(torch.linalg.matrix_norm(Qd.mT @ Qd - eye, ord=2).max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[384, 768, 1152, 1536, 2304, 3072])
    p.add_argument("--batch", type=int, default=4, help="matrices per call (a bucket of same-shape layers)")
    p.add_argument("--other", type=int, default=768, help="the layer's other dimension (the factor's rank per step)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cycles", type=int, default=1, help="measure the refresh at step cycles·f (1: the first, hardest)")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, other dim {args.other}, "
          f"refresh at step {10 * args.cycles}")
    print("| n | Householder ms/matrix | Cholesky-QR ms/matrix | Householder / Cholesky | Cholesky passes | orth loss H | orth loss C |")
    print("|---:|---:|---:|---:|---|---:|---:|")
    for s in args.sizes:
        X = refresh_input(s, args.other, args.batch, cycles=args.cycles)
        out, work = torch.empty_like(X), torch.empty_like(X)  # as in SOAP's buckets: Q and the Gram matrix reused
        th, tc = [], []
        for r in range(args.repeats):  # interleaved: load drifts hit both alike
            for name, store in (("householder", th), ("cholesky", tc))[:: 1 if r % 2 == 0 else -1]:
                linalg.ORTHO_STATS.clear()
                t0 = time.perf_counter()
                linalg.orthonormalize(X, name, out=out, work=work)
                store.append((time.perf_counter() - t0) / args.batch)
                if name == "cholesky":
                    stats, qc = dict(linalg.ORTHO_STATS), out.clone()
                else:
                    qh = out.clone()
        mh, mc = statistics.median(th) * 1e3, statistics.median(tc) * 1e3
        passes = ", ".join(f"{k.split('_')[-1]}: {v}" for k, v in sorted(stats.items()))
        print(f"| {s} | {mh:.1f} | {mc:.1f} | {mh / mc:.2f} | {passes} | {orth_loss(qh):.1e} | {orth_loss(qc):.1e} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
