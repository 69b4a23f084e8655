"""soap_lab.params: papermill's text parameters become lists/mappings; bad values are one-line errors."""
import pytest

from soap_lab.studies import params as P
from soap_lab.studies.params import ParameterError


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
