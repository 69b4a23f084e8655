"""soap_lab.optim.second_moment: Adafactor's factored estimate, per layer on a stack as on one layer."""
import pytest
import torch

from soap_lab.optim import second_moment

F64 = torch.float64


def test_rank_one_estimate_is_exact_for_a_rank_one_second_moment():
    """V̂ = A Cᵀ / 1ᵀA reproduces V exactly when V is an outer product (also for a 3-D tensor)."""
    g = torch.Generator().manual_seed(0)
    for shape in [(5, 4), (3, 4, 2)]:
        factors = [torch.rand(n, generator=g, dtype=F64) + 0.1 for n in shape]
        V = factors[0]
        for f in factors[1:]:
            V = V.unsqueeze(-1) * f
        stats = [V.mean(dim=[e for e in range(V.dim()) if e != d]) for d in range(V.dim())]
        assert float((second_moment.rank_one(stats, V.mean()) - V).abs().max()) <= 1e-15 * float(V.max())


def test_zero_statistics_give_zero_not_nan():
    stats = [torch.zeros(3, dtype=F64), torch.zeros(4, dtype=F64)]
    assert torch.equal(second_moment.rank_one(stats, torch.zeros((), dtype=F64)), torch.zeros(3, 4, dtype=F64))


@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 2), (6,)])
def test_a_stack_updates_estimates_and_permutes_per_layer(shape):
    """Batched (a stack of 3 layers) = each layer on its own: statistics, means and permutations stay per layer."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, *shape, generator=g, dtype=F64)
    stacked = second_moment.init((3, *shape)[1:], factored=True, dtype=F64, device=x.device)
    stacked = {k: ([torch.zeros(3, *v.shape, dtype=F64) for v in val] if isinstance(val, list)
                   else torch.zeros(3, *val.shape, dtype=F64)) for k, val in stacked.items()}
    single = [second_moment.init(shape, factored=True, dtype=F64, device=x.device) for _ in range(3)]
    for step in range(3):
        second_moment.update_(stacked, x * (step + 1), 0.9, batched=True)
        for i, st in enumerate(single):
            second_moment.update_(st, x[i] * (step + 1), 0.9)
    est = second_moment.estimate(stacked, batched=True)
    for i, st in enumerate(single):
        assert float((est[i] - second_moment.estimate(st)).abs().max()) <= 1e-15 * float(est.abs().max())
    perms = [torch.stack([torch.randperm(n, generator=g) for _ in range(3)]) for n in shape]
    second_moment.permute_(stacked, perms)
    for i, st in enumerate(single):
        second_moment.permute_(st, [p[i] for p in perms])
        assert torch.equal(second_moment.estimate(stacked, batched=True)[i], second_moment.estimate(st))
