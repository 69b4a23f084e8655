"""soap_lab.train.config: budget rounding, the optimizer keywords of a config, validation with allowed values."""
import pytest

from soap_lab.optim import OPTIMIZERS, takes_frequency
from soap_lab.train.config import (TAKES_FREQUENCY, TrainConfig, effective_steps, effective_warmup,
                                   optimizer_kwargs, preset_names)


def test_budget_rounding():
    assert effective_steps(TrainConfig(steps=200, budget_fraction=0.625)) == 125
    assert effective_steps(TrainConfig(steps=200, budget_fraction=0.875)) == 175
    assert effective_steps(TrainConfig(steps=5, budget_fraction=0.5)) == 3  # 2.5 rounds up
    assert effective_steps(TrainConfig(steps=3, budget_fraction=0.01)) == 1


def test_warmup_is_a_fraction_of_the_run_unless_given_in_steps():
    assert effective_warmup(TrainConfig(steps=200, budget_fraction=0.5, warmup_fraction=0.1)) == 10
    assert effective_warmup(TrainConfig(steps=200, budget_fraction=0.5, warmup_steps=7)) == 7


def test_takes_frequency_is_the_optimizers_fact():
    assert TAKES_FREQUENCY == tuple(n for n in OPTIMIZERS if takes_frequency(n))
    assert "soap" in TAKES_FREQUENCY and "adamw" not in TAKES_FREQUENCY


def test_optimizer_kwargs_pass_only_what_is_set():
    assert optimizer_kwargs(TrainConfig(lr=0.01)) == {"lr": 0.01, "betas": (0.95, 0.95)}
    kw = optimizer_kwargs(TrainConfig(optimizer="soap", eps=1e-6, weight_decay=0.0, precondition_frequency=5,
                                      hparams={"refresh": "eigh"}))
    assert kw == {"lr": 3e-3, "betas": (0.95, 0.95), "eps": 1e-6, "weight_decay": 0.0, "precondition_frequency": 5,
                  "refresh": "eigh"}


def test_from_dict_round_trips_and_refuses_unknown_fields():
    c = TrainConfig(optimizer="soap", precondition_frequency=10, betas=(0.9, 0.99))
    d = {**c.__dict__, "betas": list(c.betas)}
    assert TrainConfig.from_dict(d) == c
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['stepz'\]"):
        TrainConfig.from_dict({"stepz": 3})


@pytest.mark.parametrize("fields, message", [
    ({"optimizer": "adam"}, "allowed: adamw, adafactor, shampoo"),
    ({"precondition_frequency": 10}, "optimizers that do: " + ", ".join(TAKES_FREQUENCY)),
    ({"optimizer": "soap", "precondition_frequency": 0}, "precondition_frequency must be >= 1"),
    ({"hparams": {"foo": 1}}, "optimizer 'adamw' takes no keyword foo"),
    ({"preset": "huge"}, "unknown preset 'huge'"),
    ({"tokenizer": "wordpiece"}, "unknown tokenizer 'wordpiece'; allowed: char, bpe"),
    ({"dtype": "float64", "precision": "bf16"}, "dtype float64 excludes bf16 autocast"),
    ({"budget_fraction": 0.0}, "budget_fraction must be in (0, 1]"),
    ({"lr": 0.0}, "lr must be a finite number > 0"),
])
def test_validate_names_what_is_allowed(fields, message):
    with pytest.raises(ValueError) as e:
        TrainConfig(**fields).validate()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_preset_names_are_the_models_presets():
    from soap_lab.train.models import PRESETS

    assert preset_names() == tuple(PRESETS)


def test_train_without_f_is_the_same_run_as_a_sweep_at_the_default_f():
    """`train --optimizer soap` (no -f) and a sweep at f = 10 used to be two records (soap_lr… and soap_f10_…)."""
    from soap_lab.records import store

    plain, swept = TrainConfig(optimizer="soap"), TrainConfig(optimizer="soap", precondition_frequency=10)
    assert plain.precondition_frequency == 10
    assert store.run_id(plain) == store.run_id(swept) and store.run_id(plain).startswith("soap_f10_")
    assert TrainConfig(optimizer="adamw").precondition_frequency is None
