"""soap_lab.records.datasets: data sets that are not run records, written atomically one key per line, read back by name.

Was tests/test_stored.py (soap_lab.stored); a missing data set now raises ``store.MissingResults`` (what
``make figures`` catches) instead of the old ``ablations.MissingResults``."""
import json
import math

import pytest

from soap_lab.records import datasets, store


def test_save_json_one_key_per_line_and_strict(tmp_path):
    path = datasets.save_json({"params": {"m": 5}, "columns": {"x": [1.0, math.nan]}, "note": "é"}, tmp_path / "d" / "x.json")
    text = path.read_text(encoding="utf-8")
    assert text.splitlines() == ['{', ' "params": {"m":5},', ' "columns": {"x":[1.0,null]},', ' "note": "é"', '}']
    assert json.loads(text)["columns"]["x"] == [1.0, None]
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]  # no temporary file left behind


def test_load_json_names_the_command_when_missing(tmp_path):
    with pytest.raises(store.MissingResults, match=r"no timing study at .*nothing\.json: run `make ablations SCALE=gpu`"):
        datasets.load_json(tmp_path / "nothing.json", "timing study", "make ablations SCALE=gpu")
    datasets.save_json({"rows": [{"a": 1}]}, tmp_path / "t.json")
    assert datasets.load_json(tmp_path / "t.json") == {"rows": [{"a": 1}]}


def test_table_reads_columns_or_rows():
    assert datasets.table({"columns": {"a": [1, 2], "b": [3, 4]}})["b"].tolist() == [3, 4]
    assert datasets.table({"summary": [{"f": 1}, {"f": 10}]}, key="summary")["f"].tolist() == [1, 10]
    assert datasets.table({}).empty
