"""soap_lab.optim's registry: names -> optimizers, and which of them take a preconditioning frequency."""
from __future__ import annotations

import pytest
import torch

from soap_lab import SOAP
from soap_lab.optim import OPTIMIZERS, build_optimizer, takes_frequency, takes_named_parameters
from soap_lab.train.config import TAKES_FREQUENCY


def test_every_name_builds_and_variants_carry_their_keywords():
    for name in OPTIMIZERS:
        params = [torch.nn.Parameter(torch.zeros(3, 2))]
        if takes_named_parameters(name):
            params = [("w", params[0])]
        opt = build_optimizer(name, params, lr=1e-3)
        assert opt.param_groups[0]["lr"] == 1e-3
    opt = build_optimizer("soap_factorized_one_sided", [torch.nn.Parameter(torch.zeros(3, 2))], lr=1e-3)
    assert isinstance(opt, SOAP)
    assert opt.param_groups[0]["factorized"] and opt.param_groups[0]["one_sided"]


def test_takes_frequency_is_read_off_the_signatures():
    assert set(TAKES_FREQUENCY) == set(OPTIMIZERS) - {"adamw", "adafactor", "muon"}
    assert not takes_frequency("adamw") and takes_frequency("soap_one_sided")
    with pytest.raises(ValueError, match="unknown optimizer"):
        takes_frequency("lion")
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("lion", [])


def test_keywords_are_read_off_the_constructor():
    from soap_lab.optim import keywords

    assert "precondition_frequency" in keywords("soap") and "factorized" in keywords("soap")
    assert "factorized" not in keywords("soap_factorized")  # fixed by the variant
    assert "exponent" in keywords("shampoo") and "params" not in keywords("shampoo")
    assert set(keywords("adamw")) >= {"lr", "betas", "eps", "weight_decay"}
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        keywords("lion")
