"""A readable, unbatched SOAP that follows the paper's Algorithm 3 line by line: the oracle of tests/test_soap.py.

Deliberately independent of soap_lab: momentum in the *original* space (the paper's form; soap_lab keeps it in
the eigenbasis), plain ``torch.linalg.eigh`` / ``torch.linalg.qr``, no stacks, no buffers, float64. Matrices are
rotated on each side of size ≤ max_precond_dim; vectors get AdamW (the reference's default).
"""
import math

import torch


def _eigvecs_descending(P):
    return torch.linalg.eigh(P).eigenvectors.flip(-1)


def _rotate(x, QL, QR, back=False):
    if QL is not None:
        x = (QL if back else QL.T) @ x
    if QR is not None:
        x = x @ (QR.T if back else QR)
    return x


def _staleness(P, Q):
    """‖B − diag B‖_F / ‖B‖_F of B = QᵀPQ, formed in float64 (Purifying Shampoo's criterion, computed plainly)."""
    B = Q.T @ P @ Q
    total = float(B.norm())
    return 0.0 if total == 0 else float((B - torch.diag(torch.diag(B))).norm()) / total


def reference_soap(init, grads, lr=3e-3, betas=(0.95, 0.95), eps=1e-8, weight_decay=0.01, f=10,
                   max_precond_dim=10000, shampoo_beta=-1, normalize_grads=False, correct_bias=True,
                   offsets=None, tolerance=None, log=None):
    """Run SOAP from parameters ``init`` over the gradient lists ``grads`` (one list per call); return the
    final parameters. The first call only builds L, R and Q (no weight update), as the reference does.

    Refresh policies (soap_lab.optim.refresh), written out: ``offsets`` (one per parameter): parameter i refreshes
    at steps t with (t − offsets[i]) % f == 0 (staggered); ``tolerance`` τ: at steps t % f == 0 each side is
    refreshed only if its staleness is not below τ (adaptive), and ``log`` (a list) receives
    (t, parameter index, side, staleness) of every check."""
    b1, b2 = betas
    beta = shampoo_beta if shampoo_beta >= 0 else b2
    out = []
    for i, w0 in enumerate(init):
        W = w0.clone().double()
        matrix = W.dim() == 2
        rot = [matrix and n <= max_precond_dim for n in W.shape] if matrix else [False]
        L = torch.zeros(W.shape[0], W.shape[0], dtype=W.dtype) if rot[0] else None
        R = torch.zeros(W.shape[1], W.shape[1], dtype=W.dtype) if matrix and rot[1] else None
        QL = QR = None
        M, V, t = torch.zeros_like(W), torch.zeros_like(W), 0
        for call, row in enumerate(grads):
            G = row[i].double()
            if call > 0:  # Algorithm 3, one step
                t += 1
                M = b1 * M + (1 - b1) * G                            # momentum, original space
                Gr, Mr = _rotate(G, QL, QR), _rotate(M, QL, QR)      # G' = Q_Lᵀ G Q_R, M' = Q_Lᵀ M Q_R
                V = b2 * V + (1 - b2) * Gr * Gr                      # second moment, rotated space
                N = _rotate(Mr / (V.sqrt() + eps), QL, QR, back=True)
                if normalize_grads:
                    N = N / (1e-30 + N.square().mean().sqrt())
                step = lr * (math.sqrt(1 - b2**t) / (1 - b1**t) if correct_bias else 1.0)
                W = W - step * N
                W = W - lr * weight_decay * W                        # decoupled, after the step
            if L is not None:                                        # factors take G after the step
                L = beta * L + (1 - beta) * G @ G.T
            if R is not None:
                R = beta * R + (1 - beta) * G.T @ G
            if call == 0:                                            # first call: eigenbases, no step
                QL = _eigvecs_descending(L) if L is not None else None
                QR = _eigvecs_descending(R) if R is not None else None
            elif (t - (offsets[i] if offsets else 0)) % f == 0:      # Algorithm 4: sort, permute V, one QR
                for side, (P, Q) in enumerate(((L, QL), (R, QR))):
                    if P is None:
                        continue
                    if tolerance is not None:                        # adaptive: keep a basis that is fresh
                        s = _staleness(P, Q)
                        if log is not None:
                            log.append((t, i, side, s))
                        if s < tolerance:
                            continue
                    order = torch.argsort(torch.diag(Q.T @ P @ Q), descending=True)
                    V = V[order, :] if side == 0 else V[:, order]
                    Q = torch.linalg.qr(P @ Q[:, order]).Q
                    QL, QR = (Q, QR) if side == 0 else (QL, Q)
        out.append(W)
    return out
