"""soap_lab.optim.kron: layouts, bases, the refresh (sort, permutation, in-place buffers), permutations of state."""
import pytest
import torch

from soap_lab.optim import kron, linalg

from helpers import rel


F64 = torch.float64


def test_bases_are_orthonormal_and_permutation_invariance():
    torch.manual_seed(0)
    P = torch.randn(8, 8, dtype=torch.float32)
    P = P @ P.T
    for q in [linalg.eigh_descending(P), kron.refresh_bases([P], [linalg.eigh_descending(P + 0.3 * torch.eye(8))])[0][0]]:
        assert float((q.T @ q - torch.eye(8)).abs().max()) < 10 * torch.finfo(torch.float32).eps * 8
    # Permuting Q's columns together with V's slots leaves the SOAP update unchanged.
    QL, QR = torch.linalg.qr(torch.randn(8, 8, dtype=F64)).Q, torch.linalg.qr(torch.randn(6, 6, dtype=F64)).Q
    V = torch.rand(8, 6, dtype=F64) + 0.1
    M = torch.randn(8, 6, dtype=F64)

    def upd(QL, QR, V, M_rot):
        return kron.project_back(M_rot / (V.sqrt() + 1e-8), [QL, QR])

    base = upd(QL, QR, V, kron.project(M, [QL, QR]))
    pl, pr = torch.randperm(8), torch.randperm(6)
    V2 = kron.permute_(V.clone(), [pl, pr])
    QL2, QR2 = QL[:, pl], QR[:, pr]
    assert rel(upd(QL2, QR2, V2, kron.project(M, [QL2, QR2])), base) < 1e-14
    # ...and permuting Q without V does change it (the check is not vacuous)
    assert rel(upd(QL2, QR2, V, kron.project(M, [QL2, QR2])), base) > 1e-3


def test_refresh_sorts_by_estimated_eigenvalue_and_hands_back_the_permutation():
    torch.manual_seed(1)
    A = torch.randn(6, 6, dtype=F64)
    P = A @ A.T
    evals, evecs = torch.linalg.eigh(P)  # ascending: the reverse of what refresh wants
    (newQ,), (order,), _ = kron.refresh_bases([P], [evecs], "qr")
    assert order.tolist() == list(range(5, -1, -1))
    est = (newQ * (P @ newQ)).sum(0)
    assert torch.all(est[:-1] >= est[1:])
    (eQ,), (eorder,), _ = kron.refresh_bases([P], [evecs], "eigh")
    assert torch.allclose((eQ * (P @ eQ)).sum(0), evals.flip(0), rtol=1e-10)


@pytest.mark.parametrize("method,qr_method,mixed", [("qr", "cholesky", True), ("qr", "cholesky", False),
                                                    ("qr", "householder", True), ("eigh", "cholesky", True)])
def test_refresh_into_the_old_basis_with_scratch_buffers_gives_the_same_bits(method, qr_method, mixed):
    """The bucketed SOAP refresh writes the new basis over the old one and takes its scratch space from a
    workspace; the allocating call is the reference. The batch mixes a stale basis (every matrix needs the
    second Cholesky-QR pass), a fresh one (one pass) and a zero factor (Householder fallback), so every
    branch writes through the buffers; unmixed, every matrix is stale (the second pass on the whole batch)."""
    from soap_lab.optim.stack import Workspace

    g = torch.Generator().manual_seed(11)
    n = 96
    A = torch.randn(3, n, 3 * n, generator=g) * torch.logspace(0, -2, n).unsqueeze(-1)
    GG = [A @ A.mT / (3 * n), torch.stack([torch.eye(4)] * 3)]
    if mixed:
        GG[0][2] = 0.0
    early = A[:, :, : n // 2] @ A[:, :, : n // 2].mT  # a factor of fewer gradients: a stale basis
    Q = [torch.stack([linalg.eigh_descending(x) for x in early]), torch.stack([torch.eye(4)] * 3)]
    if mixed:
        Q[0][1] = linalg.eigh_descending(GG[0][1])  # current: one pass is enough
    ref_Q, ref_perms, _ = kron.refresh_bases(GG, [q.clone() for q in Q], method, qr_method)
    ws = Workspace()
    for _ in range(2):  # the second call reuses the first one's (now dirty) buffers
        out = [q.clone() for q in Q]
        ptrs = [q.data_ptr() for q in out]
        linalg.ORTHO_STATS.clear()
        new_Q, perms, _ = kron.refresh_bases(GG, out, method, qr_method, out=out, work=ws.buffers)
        assert [q.data_ptr() for q in new_Q] == ptrs  # written in place
        for a, b in zip(new_Q + perms, ref_Q + ref_perms):
            assert torch.equal(a, b)
    if method == "qr" and qr_method == "cholesky":  # counts of the last call; the 4×4 identities take one pass
        expected = dict(cholesky_1=1 + 3, cholesky_2=1, cholesky_fallback=1) if mixed else dict(cholesky_1=3, cholesky_2=3)
        assert {k: v for k, v in linalg.ORTHO_STATS.items() if v} == expected


@pytest.mark.parametrize("batched", [True, False])
def test_permute_with_a_work_buffer_equals_the_allocating_path(batched):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 7, generator=g) if batched else torch.randn(5, 7, generator=g)
    lead = (3,) if batched else ()
    p0 = torch.argsort(torch.rand(*lead, 5, generator=g), dim=-1)
    p1 = torch.argsort(torch.rand(*lead, 7, generator=g), dim=-1)
    for perms in ([p0, p1], [p0, None], [None, p1]):
        ref = kron.permute_(x.clone(), perms)
        y = x.clone()
        assert kron.permute_(y, perms, work=torch.full_like(x, float("nan"))) is y
        assert torch.equal(y, ref)


def test_layout_rules():
    assert kron.make_layout((7,)).precond == (False,)
    assert kron.make_layout((7,), precondition_1d=True).precond == (True,)
    assert kron.make_layout((7,), precondition_1d=True, max_precond_dim=5).precond == (False,)
    assert kron.make_layout((50000, 64)).precond == (False, True)
    assert kron.make_layout((6, 5), max_precond_dim=0).n_precond == 0
    assert kron.make_layout(()).shape == (1,)
    assert kron.merged_shape((128, 64, 3, 3), 10000) == (8192, 9)  # the reference's left-to-right rule
    with pytest.warns(RuntimeWarning, match="merge_dims"):  # factors of 4608 and 8192: warned
        assert kron.make_layout((32, 16, 3, 3), merge_dims=True).shape == (4608,)
        assert kron.make_layout((128, 64, 3, 3), merge_dims=True).precond == (True, True)
    assert kron.merged_shape((4, 4, 4), 100) == (64,)


def test_merge_dims_warns_when_it_builds_a_large_factor():
    import warnings

    with pytest.warns(RuntimeWarning, match=r"2304×2304 factor"):
        kron.make_layout((16, 16, 3, 3), merge_dims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kron.make_layout((16, 16, 3, 3), merge_dims=True, max_precond_dim=256).shape == (256, 9)
        kron.make_layout((16, 16, 3, 3), merge_dims=False)

