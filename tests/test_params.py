"""soap_lab.params: papermill's text parameters become lists/mappings; bad values are one-line errors."""
import pytest

from soap_lab import params as P
from soap_lab.params import ParameterError


def test_text_lists_and_mappings_are_parsed():
    assert P.coerce("[1, 10, 100]") == [1, 10, 100]
    assert P.coerce(' {"soap": [0.01, 0.03]}') == {"soap": [0.01, 0.03]}
    assert P.coerce("cpu") == "cpu" and P.coerce(3) == 3
    assert P.integers("frequencies", "[1, 10]", 1) == (1, 10)
    assert P.mapping("lrs", '{"adamw": [3e-3]}') == {"adamw": [0.003]}
    with pytest.raises(ParameterError, match="cannot read"):
        P.coerce("[1, 2")


@pytest.mark.parametrize("call, message", [
    (lambda: P.integer("steps", 2.5, 1), "steps must be an integer >= 1, got 2.5"),
    (lambda: P.integer("steps", True), "steps must be an integer, got True"),
    (lambda: P.integer("m", "16x"), "m must be an integer, got '16x' (text)"),
    (lambda: P.integers("seeds", 0, 0, example="[0, 1, 2]"), "seeds must be a list, e.g. [0, 1, 2]; got 0"),
    (lambda: P.integers("batch_sizes", [0, 32], 1), "batch_sizes[0] must be an integer >= 1, got 0"),
    (lambda: P.integers("frequencies", "[]", 1), "frequencies is empty"),
    (lambda: P.numbers("lrs['soap']", [0.0], 0.0, low_open=True), "lrs['soap'][0] must be in (0, inf], got 0.0"),
    (lambda: P.number("condition", float("nan"), 1.0), "condition must be a finite number"),
    (lambda: P.mapping("scale_overrides", "[1]"), "scale_overrides must be a mapping"),
    (lambda: P.choices("gap_refreshes", '["svd"]', ("qr", "eigh")), "unknown 'svd' in gap_refreshes; allowed: qr, eigh"),
])
def test_bad_values_are_one_line_errors(call, message):
    with pytest.raises(ParameterError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_integral_values_are_accepted_and_nothing_is_truncated():
    assert P.integer("steps", 3.0) == 3 and P.integer("steps", "12") == 12
    assert P.number("exponent", "0.25", 0.0, 1.0, low_open=True) == 0.25
    with pytest.raises(ParameterError):
        P.integer("steps", 3.000001)


def test_notebook_scale_checks_every_override_before_training():
    from soap_lab import figures

    sc = figures.notebook_scale("cpu", frequencies="[1, 3, 10, 30, 100]", seeds="[0]")
    assert sc.name == "cpu"  # the same values as the scale's: the committed scale, not a renamed one
    with pytest.raises(ParameterError, match=r"scale_overrides\['budget_fractions'\]\[0\] must be in \(0, 1\]"):
        figures.notebook_scale("cpu", overrides={"budget_fractions": [1.5]})
    with pytest.raises(ParameterError, match=r"scale_overrides\['preset'\]: unknown 'huge'; allowed: tiny"):
        figures.notebook_scale("cpu", overrides='{"preset": "huge"}')
    with pytest.raises(ParameterError, match="unknown scale field 'stepz'"):
        figures.notebook_scale("cpu", overrides={"stepz": 3})


def test_claim1_widget_recomputes_only_for_a_new_shape_or_conditioning():
    from soap_lab import figures

    study = figures.claim1_cache(n_batches=8, max_staleness=3)
    a = study(6, 4, 10.0, 0.25)
    assert study(6, 4, 10.0, 0.5) is a and study(6, 4, 10.0, 0.7000000001) is a  # exponent slider: cached
    assert {r["exponent"] for r in a["exponent"]} >= set(figures.EXPONENT_GRID)
    off = study(6, 4, 10.0, 0.33)  # off the slider's grid: computed once more, with it
    assert off is not a and any(abs(r["exponent"] - 0.33) < 1e-12 for r in off["exponent"])
    assert study(6, 5, 10.0, 0.25) is not a
    assert study.cache_info().misses == 3 and study.cache_info().hits == 2
