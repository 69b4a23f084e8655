"""The step-cost model and the cost-balanced partition (soap_lab.optim.cost): no process group needed."""
from __future__ import annotations

import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from soap_lab import SOAP, EigenAdafactor, Shampoo
from soap_lab.optim import cost

ROOT = Path(__file__).resolve().parents[1]
W = cost.CostWeights()


def _shapes(name: str):
    spec = importlib.util.spec_from_file_location("bench_step_time", ROOT / "benchmarks" / "step_time.py")
    mod = sys.modules.get(spec.name)
    if mod is None:
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return [s for _, s in mod.gpt_shapes(**mod.PARAM_SETS[name])]


def test_soap_cost_is_m_n_m_plus_n_plus_its_refresh():
    m, n = 96, 40
    c = cost.step_cost(SOAP, (m, n), {"precondition_frequency": 7})
    assert c.every == 7
    assert c.step == pytest.approx(W.elementwise * m * n + 6 * m * n * (m + n))
    assert c.refresh == pytest.approx((2 + W.qr) * (m**3 + n**3) + 4 * m * n * (m + n))
    assert c.amortized == pytest.approx(c.step + c.refresh / 7)
    eigh = cost.step_cost(SOAP, (m, n), {"refresh": "eigh"})
    assert eigh.refresh == pytest.approx((2 + W.eigh) * (m**3 + n**3) + 4 * m * n * (m + n))


def test_layout_rules_decide_which_sides_cost():
    vocab, d = 50257, 768  # the vocabulary side is above max_precond_dim: one rotated side
    c = cost.step_cost(SOAP, (vocab, d), {})
    assert c.step == pytest.approx(W.elementwise * vocab * d + 6 * vocab * d * d)
    one = cost.step_cost(SOAP, (96, 40), {"one_sided": True})
    assert one.step == pytest.approx(W.elementwise * 96 * 40 + 6 * 96 * 40 * 40)
    for cls in (SOAP, Shampoo, EigenAdafactor, torch.optim.AdamW):  # vectors: elementwise only
        assert cost.step_cost(cls, (300,), {}) == cost.StepCost(W.elementwise * 300)
    assert cost.step_cost(torch.optim.AdamW, (96, 40), {}) == cost.StepCost(W.elementwise * 96 * 40)


def test_shampoo_and_eigen_adafactor_refresh_by_eigh():
    s = cost.step_cost(Shampoo, (64, 32), {"precondition_frequency": 5})
    assert s.refresh == pytest.approx(W.eigh * (64**3 + 32**3)) and s.every == 5
    e = cost.step_cost(EigenAdafactor, (64, 32), {})
    assert e.refresh == pytest.approx((2 + W.eigh) * (64**3 + 32**3) + 4 * 64 * 32 * 96)
    f = cost.step_cost(EigenAdafactor, (64, 32), {"statistics": "factors"})
    assert f.step - e.step == pytest.approx(2 * (64**3 + 32**3))


def test_resolved_hparams_fill_in_the_class_defaults():
    hp = cost.resolved_hparams(SOAP, {"max_precond_dim": 5})
    assert hp["max_precond_dim"] == 5 and hp["precondition_frequency"] == 10 and hp["refresh"] == "qr"


@pytest.mark.parametrize("world", [2, 4])
def test_partition_covers_every_parameter_once_and_is_deterministic(world):
    shapes = _shapes("gpt10m")
    costs = [cost.step_cost(SOAP, s, {}) for s in shapes]
    parts = cost.balanced_partition(costs, world, keys=shapes)
    assert sorted(i for p in parts for i in p) == list(range(len(shapes)))
    assert parts == cost.balanced_partition(costs, world, keys=shapes)


def test_whole_layouts_stay_on_one_rank_where_balance_allows():
    """gpt10m: four matrix layouts, six of each. 1536×384 and 384×1536 cost the same, so one rank takes all of
    the first and the other all of the second (one bucket of 6 each, not two of 3), as torch's split does."""
    shapes = _shapes("gpt10m")
    costs = [cost.step_cost(SOAP, s, {}) for s in shapes]
    numels = [math.prod(s) for s in shapes]
    parts = cost.balanced_partition(costs, 2, keys=shapes, numels=numels)
    held = [Counter(shapes[i] for i in p) for p in parts]
    assert sorted(h[(1536, 384)] for h in held) == sorted(h[(384, 1536)] for h in held) == [0, 6]
    assert sorted(h[(1152, 384)] for h in held) == sorted(h[(384, 384)] for h in held) == [3, 3]
    assert cost.imbalance(costs, parts) < 1.01


@pytest.mark.parametrize("cls", [SOAP, Shampoo, EigenAdafactor])
def test_cost_balance_fixes_torchs_split_of_gpt124m(cls):
    """torch's split by parameter count puts the 38.6M-entry embedding (one rotated side of 768) against the
    3072×768 matrices (two sides, a 3072³ refresh): one rank gets about twice the other's work."""
    shapes = _shapes("gpt124m")
    costs = [cost.step_cost(cls, s, {}) for s in shapes]
    by_numel = cost.imbalance(costs, cost.numel_partition([math.prod(s) for s in shapes], 2))
    by_cost = cost.imbalance(costs, cost.balanced_partition(costs, 2, keys=shapes, numels=[math.prod(s) for s in shapes]))
    assert by_numel > 1.3
    assert by_cost < 1.05


def test_imbalance_of_a_perfect_split_is_one():
    costs = [cost.StepCost(3.0, 10.0, 5)] * 4
    assert cost.imbalance(costs, [[0, 1], [2, 3]]) == pytest.approx(1.0)
    assert cost.imbalance(costs, [[0, 1, 2], [3]]) == pytest.approx(1.5)


def test_partition_rejects_bad_input():
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        cost.balanced_partition([cost.StepCost(1.0)], 0)
    with pytest.raises(ValueError, match="got 2 keys for 1 costs"):
        cost.balanced_partition([cost.StepCost(1.0)], 2, keys=["a", "b"])
