"""soap_lab.equivalence.experiments: Claim 1 holds on the teaching problem and breaks as the paper says; along a training
trajectory the gap is round-off in a fresh eigenbasis. Small sizes, float64, CPU."""
import pytest
import torch

from soap_lab.equivalence import experiments
from soap_lab.train import models


def test_minibatch_grads_average_to_the_full_gradient():
    prob = models.anisotropic_regression(m=5, n=4, n_samples=512, condition=10.0, noise=0.1)
    W = prob["W0"].double()
    grads = experiments.minibatch_grads(prob, W, n_batches=8)  # 8 disjoint batches of 64 samples
    assert len(grads) == 8 and all(g.shape == (5, 4) and g.dtype == torch.float64 for g in grads)
    X, Y, A = prob["X"].double(), prob["Y"].double(), prob["A"].double()
    full = A @ (X @ W.T - Y).T @ X / X.shape[0]
    torch.testing.assert_close(torch.stack(grads).mean(0), full, rtol=1e-12, atol=1e-14)


def test_claim1_study_holds_and_breaks():
    c = experiments.claim1_study(m=5, n=4, n_batches=8, max_staleness=3, exponents=(0.25, 0.5))
    assert c["exact_error"] < 1e-10 and c["no_trace_error"] > 1e-2
    assert c["stats_error"] < 1e-10
    by_e = {r["exponent"]: r["error"] for r in c["exponent"]}
    assert by_e[0.5] < 1e-10 and by_e[0.25] > 1e-2
    assert [r["staleness"] for r in c["staleness"]] == [0, 1, 2, 3]
    assert c["staleness"][0]["error"] < 1e-10 and c["staleness"][3]["error"] > 1e-2


def test_gap_trajectory_is_round_off_in_a_fresh_basis():
    g = experiments.gap_trajectory(frequencies=(2,), refreshes=("qr",), problems=("teaching",), steps=8, m=5, n=4, batch=16)
    assert g["columns"]["gap_fresh"] and max(g["columns"]["gap_fresh"]) < 1e-8
    assert set(g["columns"]["problem"]) == {"teaching"} and g["params"]["shapes"] == {"teaching/weight": [5, 4]}


@pytest.mark.parametrize("kwargs, message", [
    ({"problems": ("mlp",)}, "unknown problem 'mlp'; allowed: teaching, gpt"),
    ({"frequencies": ()}, "frequencies is empty"),
    ({"frequencies": (0,)}, "precondition frequencies must be >= 1"),
    ({"refreshes": ("svd",)}, "unknown refresh 'svd'; allowed: qr, eigh"),
])
def test_gap_trajectory_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        experiments.gap_trajectory(**kwargs)


def test_claim1_study_refuses_bad_sizes():
    with pytest.raises(ValueError, match="at least 2×2"):
        experiments.claim1_study(m=1, n=4)
    with pytest.raises(ValueError, match="n_batches must be >= 2"):
        experiments.claim1_study(n_batches=1)
