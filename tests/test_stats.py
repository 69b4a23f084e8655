"""soap_lab.stats against hand-computed values."""
import math

import pytest

from soap_lab import stats

# t_{0.975, 2} and t_{0.975, 4} from tables
T2, T4 = 4.302652729911275, 2.7764451051977987


def test_paired_differences_use_common_finite_seeds():
    a = {0: 1.5, 1: 1.25, 2: 1.0, 3: 2.0}
    b = {0: 1.0, 1: 1.5, 2: None, 4: 0.0}
    assert stats.paired_differences(a, b) == {0: 0.5, 1: -0.25}


def test_t_interval_by_hand():
    iv = stats.mean_interval([1.0, 2.0, 3.0])
    # mean 2, sample sd 1, se 1/√3
    assert iv.mean == pytest.approx(2.0, abs=1e-12) and iv.n == 3
    assert iv.half_width == pytest.approx(T2 / math.sqrt(3), rel=1e-9)
    assert (iv.low, iv.high) == pytest.approx((2 - T2 / math.sqrt(3), 2 + T2 / math.sqrt(3)), rel=1e-9)
    iv5 = stats.mean_interval([0.1, -0.2, 0.3, 0.0, 0.05])
    mean = 0.05
    sd = math.sqrt(sum((x - mean) ** 2 for x in [0.1, -0.2, 0.3, 0.0, 0.05]) / 4)  # squares sum to 0.13
    assert sd == pytest.approx(math.sqrt(0.13 / 4), rel=1e-12)
    assert iv5.mean == pytest.approx(mean, abs=1e-12)
    assert iv5.high == pytest.approx(mean + T4 * sd / math.sqrt(5), rel=1e-9)


def test_one_seed_has_no_interval_and_no_verdict():
    iv = stats.mean_interval([0.3])
    assert iv.mean == 0.3 and math.isnan(iv.low) and math.isnan(iv.high)
    assert stats.verdict(iv, "less") == stats.INCONCLUSIVE
    assert "n = 1" in stats.format_interval(iv)
    with pytest.raises(ValueError, match="at least one seed"):
        stats.mean_interval([])
    with pytest.raises(ValueError, match="finite"):
        stats.mean_interval([1.0, float("nan")])


@pytest.mark.parametrize("values, claim, margin, expected", [
    ([-0.30, -0.20, -0.25], "less", 0.0, stats.REPRODUCED),      # all below 0, tight
    ([0.30, 0.20, 0.25], "less", 0.0, stats.CONTRADICTED),       # all above 0
    ([-0.30, 0.20, -0.05], "less", 0.0, stats.INCONCLUSIVE),     # straddles 0
    ([0.30, 0.20, 0.25], "greater", 0.0, stats.REPRODUCED),
    ([0.001, -0.002, 0.0005], "equal", 0.02, stats.REPRODUCED),  # within ±0.02
    ([0.10, 0.12, 0.11], "equal", 0.02, stats.CONTRADICTED),     # all beyond +0.02
    ([0.00, 0.05, -0.03], "equal", 0.02, stats.INCONCLUSIVE),
])
def test_verdicts_follow_the_interval(values, claim, margin, expected):
    assert stats.verdict(stats.mean_interval(values), claim, margin) == expected


def test_verdict_checks_its_claim():
    iv = stats.mean_interval([1.0, 2.0])
    with pytest.raises(ValueError, match="allowed: less, greater, equal"):
        stats.verdict(iv, "smaller")
    with pytest.raises(ValueError, match="margin"):
        stats.verdict(iv, "equal")


def test_bootstrap_interval_is_within_the_observed_range_and_deterministic():
    vals = [0.1, 0.4, 0.2, 0.3]
    a, b = stats.bootstrap_interval(vals, seed=1), stats.bootstrap_interval(vals, seed=1)
    assert a == b and a.method == "bootstrap"
    assert a.mean == pytest.approx(0.25) and min(vals) <= a.low < a.mean < a.high <= max(vals)


def test_format_interval():
    text = stats.format_interval(stats.mean_interval([1.0, 2.0, 3.0]), digits=2)
    assert text == f"+2.00 ± {T2 / math.sqrt(3):.2f} (95% CI [{2 - T2 / math.sqrt(3):+.2f}, {2 + T2 / math.sqrt(3):+.2f}], n = 3)"
