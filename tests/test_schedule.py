"""soap_lab.train.schedule: the paper's schedule, linear warmup from 0.1·lr then cosine decay to 0.1·lr."""
import pytest

from soap_lab.train.schedule import lr_at, warmup_steps_for


def test_schedule_exact_values():
    # 101 steps, 10 warmup: warmup 0..9, peak at 10, cosine over 90 steps to step 100.
    assert lr_at(0, 101, 2.0, 10) == pytest.approx(0.2)
    assert lr_at(5, 101, 2.0, 10) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert lr_at(10, 101, 2.0, 10) == pytest.approx(2.0)
    assert lr_at(55, 101, 2.0, 10) == pytest.approx(2.0 * 0.55)  # cosine midpoint: halfway between 0.2 and 2
    assert lr_at(100, 101, 2.0, 10) == pytest.approx(0.2)
    assert lr_at(500, 101, 2.0, 10) == pytest.approx(0.2)  # past the end: stays at the floor
    assert lr_at(0, 50, 1.0, 0) == pytest.approx(1.0)  # no warmup: starts at the peak


def test_schedule_monotone_pieces():
    total, warm, peak = 200, 20, 3e-3
    lrs = [lr_at(s, total, peak, warm) for s in range(total)]
    assert all(b > a for a, b in zip(lrs[:warm], lrs[1:warm + 1]))  # strictly up during warmup
    assert all(b <= a for a, b in zip(lrs[warm:], lrs[warm + 1:]))  # never up after it
    assert max(lrs) == pytest.approx(peak) and min(lrs) == pytest.approx(0.1 * peak)
    assert lrs.index(max(lrs)) == warm


def test_warmup_rounding():
    assert warmup_steps_for(125, 0.1) == 13  # 12.5 rounds up
    assert warmup_steps_for(100, 0.0) == 0
    with pytest.raises(ValueError):
        warmup_steps_for(100, 1.5)
