import math

import numpy as np
import pytest

from soap_lab.efficiency import fit_power_law, savings


def test_fit_recovers_a_known_power_law_and_solves_for_steps():
    N = np.array([500, 625, 750, 875, 1000.0])
    a, b, beta = 2.0, 300.0, 0.8
    L = a + b * N ** (-beta)
    fit = fit_power_law(N, L)
    assert abs(fit.a - a) < 1e-4 and abs(fit.beta - beta) < 1e-3
    target = a + b * 800.0 ** (-beta)
    assert abs(fit.steps_to_reach(target) - 800.0) < 0.5
    assert math.isinf(fit.steps_to_reach(a - 0.1))


def test_savings_steps_and_wallclock():
    N = np.array([500, 625, 750, 875, 1000.0])
    L = 2.0 + 300.0 * N ** (-0.8)
    target = 2.0 + 300.0 * 600.0 ** (-0.8)  # the baseline reaches at 1000 steps what SOAP reaches at 600
    s = savings(N, L, target, full_steps=1000, step_time=1.2, baseline_step_time=1.0)
    assert abs(s.steps_saved - 0.4) < 1e-3
    assert abs(s.wallclock_saved - (1 - 0.6 * 1.2)) < 1e-3


def test_bad_inputs():
    with pytest.raises(ValueError, match="3"):
        fit_power_law([1, 2], [3.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        fit_power_law([1, 2, 3], [3.0, float("nan"), 2.0])
