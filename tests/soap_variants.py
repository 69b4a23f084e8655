"""A readable SOAP for 2-D parameters with switches, each flipping one behaviour the conformance probes measure
(tests/test_conformance.py): with the defaults it behaves as the reference on every probe; a flipped switch must
flip that probe's answer, which shows the probe can tell the two answers apart.

Independent of soap_lab: per parameter, float64, plain eigh / QR, both sides always rotated.
"""
import math

import torch


def _eig_desc(P):
    return torch.linalg.eigh(P).eigenvectors.flip(-1)


class VariantSOAP(torch.optim.Optimizer):
    """Reference SOAP (keywords as the reference's) plus switches:

    skip_first (True): the first call builds L, R, Q without an update (False: it updates, in the identity basis
        with factors="after").
    factors ("after"): the gradient enters L, R after the update; "before": before it (and a refresh due at this
        step happens before the update too).
    eps_mode ("before_bc"): ε added to √V before bias correction; "after_bc": torch Adam's.
    wd_order ("after"): decay after the update; "before": before it. wd_lr (True): the decay is η·wd, else wd.
    beta2_schedule (False): V's rate 1 − t^−0.8 (PaLM) instead of β2.
    momentum ("original"): kept in the original space; "stale": kept in the eigenbasis and left there at a refresh.
    permute_v (True): V's slots follow the sort at a refresh.
    sort (True): the refresh sorts the old basis by its estimated eigenvalues before the power step.
    """

    def __init__(self, params, lr=3e-3, betas=(0.95, 0.95), shampoo_beta=-1, eps=1e-8, weight_decay=0.01,
                 precondition_frequency=10, max_precond_dim=10000, merge_dims=False, precondition_1d=False,
                 normalize_grads=False, data_format="channels_first", correct_bias=True, *, skip_first=True,
                 factors="after", eps_mode="before_bc", wd_order="after", wd_lr=True, beta2_schedule=False,
                 momentum="original", permute_v=True, sort=True):
        defaults = dict(lr=lr, betas=betas, shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay,
                        f=precondition_frequency, correct_bias=correct_bias)
        super().__init__(params, defaults)
        self.sw = dict(skip_first=skip_first, factors=factors, eps_mode=eps_mode, wd_order=wd_order, wd_lr=wd_lr,
                       beta2_schedule=beta2_schedule, momentum=momentum, permute_v=permute_v, sort=sort)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._step(p, group)

    def _factors(self, st, G, beta):
        st["L"].lerp_(G @ G.T, 1 - beta)
        st["R"].lerp_(G.T @ G, 1 - beta)

    def _refresh(self, st):
        sw = self.sw
        if st["QL"] is None:
            st["QL"], st["QR"] = _eig_desc(st["L"]), _eig_desc(st["R"])
            return
        # momentum: in the original space it needs nothing; "stale" leaves the eigenbasis copy as it is
        for side, (P, key) in enumerate(((st["L"], "QL"), (st["R"], "QR"))):
            Q = st[key]
            order = torch.argsort(torch.diagonal(Q.T @ P @ Q), descending=True) if sw["sort"] else \
                torch.arange(Q.shape[1])
            if sw["permute_v"]:
                st["V"] = st["V"].index_select(side, order)
            st[key] = torch.linalg.qr(P @ Q[:, order]).Q

    def _step(self, p, group):
        sw, st = self.sw, self.state[p]
        G = p.grad.double()
        b1, b2 = group["betas"]
        beta = group["shampoo_beta"] if group["shampoo_beta"] >= 0 else b2
        if not st:
            st.update(step=0, M=torch.zeros_like(G), V=torch.zeros_like(G), QL=None, QR=None,
                      L=torch.zeros(G.shape[0], G.shape[0], dtype=G.dtype),
                      R=torch.zeros(G.shape[1], G.shape[1], dtype=G.dtype))
        if st["QL"] is None and sw["skip_first"]:
            self._factors(st, G, beta)
            self._refresh(st)
            return
        st["step"] += 1
        t = st["step"]
        if sw["factors"] == "before":
            self._factors(st, G, beta)
            if st["QL"] is None or t % group["f"] == 0:
                self._refresh(st)
        QL, QR = st["QL"], st["QR"]
        if QL is None:  # no skipped first call, factors after the step: the first step is in the identity basis
            QL, QR = torch.eye(G.shape[0], dtype=G.dtype), torch.eye(G.shape[1], dtype=G.dtype)
        Gp = QL.T @ G @ QR
        if sw["momentum"] == "original":
            st["M"].lerp_(G, 1 - b1)
            Mp = QL.T @ st["M"] @ QR
        else:
            st["M"].lerp_(Gp, 1 - b1)
            Mp = st["M"]
        rate = 1 - t ** -0.8 if sw["beta2_schedule"] else b2
        st["V"].mul_(rate).add_(Gp * Gp, alpha=1 - rate)
        bc1 = 1 - b1 ** t if group["correct_bias"] else 1.0
        bc2 = 1 - b2 ** t if group["correct_bias"] and not sw["beta2_schedule"] else 1.0  # PaLM's rate is unbiased
        if sw["eps_mode"] == "before_bc":
            N, size = Mp / (st["V"].sqrt() + group["eps"]), group["lr"] * math.sqrt(bc2) / bc1
        else:
            N, size = (Mp / bc1) / ((st["V"] / bc2).sqrt() + group["eps"]), group["lr"]
        N = QL @ N @ QR.T
        W = p.double()
        decay = group["lr"] * group["weight_decay"] if sw["wd_lr"] else group["weight_decay"]
        if sw["wd_order"] == "before":
            W = W * (1 - decay)
        W = W - size * N
        if sw["wd_order"] == "after":
            W = W * (1 - decay)
        p.copy_(W.to(p.dtype))
        if sw["factors"] == "after":
            self._factors(st, G, beta)
            if st["QL"] is None or t % group["f"] == 0:
                self._refresh(st)
