"""soap_lab.freq_study: the seeded frequency study's runs in training order, and its arms by name."""
import pytest

from soap_lab import ablations, freq_study


def test_training_order_puts_the_paired_comparisons_first(monkeypatch):
    monkeypatch.setattr(ablations, "tuned_lr", lambda opt, scale, root=None: 1e-2)
    main = ablations.frequency_seeded(ablations.get_scale("cpu_freq"))
    order = freq_study.order_for_training(main)
    assert [c.precondition_frequency for c in order[:6]] == [1, 1, 10, 10, 30, 30]
    assert order[-1].optimizer == "adamw" and {c.precondition_frequency for c in order[18:24]} == {3}
    assert sorted(map(id, order)) == sorted(map(id, main))  # the same runs, reordered


def test_an_unknown_arm_is_refused_before_any_training():
    with pytest.raises(ValueError, match="unknown arm 'wide'; allowed: seeded, batch, long"):
        freq_study.run(ablations.get_scale("cpu_freq"), arms=("seeded", "wide"), log=None)
