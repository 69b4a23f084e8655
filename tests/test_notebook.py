"""soap_lab.notebook: a notebook's parameters checked before any work (one-line ParameterError), the study trained
or found stored, and the Claim 1 widget's cache."""
import pytest
import torch

from soap_lab import ablations, notebook
from soap_lab.params import ParameterError


def test_notebook_scale_parameter_errors():
    with pytest.raises(ParameterError, match="frequencies is empty"):
        notebook.notebook_scale("cpu", frequencies=[])
    with pytest.raises(ParameterError, match="unknown optimizer 'sgd'"):
        notebook.notebook_scale("cpu", lrs={"sgd": [0.1]})
    with pytest.raises(ParameterError, match="unknown scale"):
        notebook.notebook_scale("tpu")
    with pytest.raises(ParameterError, match="unknown scale field 'stepz'"):
        notebook.notebook_scale("cpu", overrides={"stepz": 3})
    sc = notebook.notebook_scale("cpu", steps=20, lrs={"soap": [1e-3]})
    assert sc.steps == 20 and sc.lrs["soap"] == (1e-3,) and sc.lrs["adamw"] == ablations.SCALES["cpu"].lrs["adamw"]


def test_notebook_scale_checks_every_override_before_training():
    sc = notebook.notebook_scale("cpu", frequencies="[1, 3, 10, 30, 100]", seeds="[0]")
    assert sc.name == "cpu"  # the same values as the scale's: the committed scale, not a renamed one
    with pytest.raises(ParameterError, match=r"scale_overrides\['budget_fractions'\]\[0\] must be in \(0, 1\]"):
        notebook.notebook_scale("cpu", overrides={"budget_fractions": [1.5]})
    with pytest.raises(ParameterError, match=r"scale_overrides\['preset'\]: unknown 'huge'; allowed: tiny"):
        notebook.notebook_scale("cpu", overrides='{"preset": "huge"}')
    with pytest.raises(ParameterError, match="unknown scale field 'stepz'"):
        notebook.notebook_scale("cpu", overrides={"stepz": 3})


def test_claim1_widget_recomputes_only_for_a_new_shape_or_conditioning():
    study = notebook.claim1_cache(n_batches=8, max_staleness=3)
    a = study(6, 4, 10.0, 0.25)
    assert study(6, 4, 10.0, 0.5) is a and study(6, 4, 10.0, 0.7000000001) is a  # exponent slider: cached
    assert {r["exponent"] for r in a["exponent"]} >= set(notebook.EXPONENT_GRID)
    off = study(6, 4, 10.0, 0.33)  # off the slider's grid: computed once more, with it
    assert off is not a and any(abs(r["exponent"] - 0.33) < 1e-12 for r in off["exponent"])
    assert study(6, 5, 10.0, 0.25) is not a
    assert study.cache_info().misses == 3 and study.cache_info().hits == 2


def test_a_cuda_scale_without_cuda_is_a_one_line_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ParameterError, match="CUDA is not available here; set device = 'cpu'"):
        notebook.check_device(ablations.get_scale("gpu"))
    notebook.check_device(ablations.get_scale("cpu"))


def test_equivalence_params_are_coerced_and_checked():
    out = notebook.equivalence_params(16, 12, 100.0, 64, 0.25, 10, 40, "[10, 50]", ["qr"], ["teaching"], 200, "tiny")
    assert tuple(out[7]) == (10, 50) and out[:2] == (16, 12)
    with pytest.raises(ParameterError, match="need 0 <= staleness <= max_staleness"):
        notebook.equivalence_params(16, 12, 100.0, 64, 0.25, 50, 40, [10], ["qr"], ["teaching"], 200, "tiny")
    with pytest.raises(ParameterError, match="unknown gpt_preset 'huge'"):
        notebook.equivalence_params(16, 12, 100.0, 64, 0.25, 10, 40, [10], ["qr"], ["teaching"], 200, "huge")


def test_run_study_without_records_names_the_command(tmp_path):
    sc = notebook.notebook_scale("cpu", overrides={"preset": "tiny"})
    with pytest.raises(ablations.MissingResults, match=r"make ablations SCALE=cpu") as e:
        notebook.run_study("variants", sc, tmp_path, train=False)
    assert "\n" not in str(e.value)
    with pytest.raises(ParameterError, match="unknown study 'lr'"):
        notebook.run_study("lr", sc, tmp_path, train=False)
