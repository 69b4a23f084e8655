"""python -m soap_lab show: a summary row per run (by id, glob or path), curves to a file, clear errors."""
import json

import pytest

from soap_lab.records import store, show
from soap_lab.cli import main
from soap_lab.train.loop import train
from soap_lab.train.config import TrainConfig

pytest.importorskip("soap_lab.train.models")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread_module):
    root = tmp_path_factory.mktemp("runs")
    base = dict(preset="tiny", steps=4, batch_size=4, seq_len=32, eval_every=2, eval_batches=1, progress=False,
                out_dir=str(root), experiment="s")
    out = [train(TrainConfig(optimizer="adamw", lr=1e-2, **base)),
           train(TrainConfig(optimizer="soap", lr=1e-2, precondition_frequency=2, **base))]
    return root, out


def test_rows_by_id_glob_and_path(runs, capsys, tmp_path):
    root, (adamw, soap) = runs
    assert main(["show", adamw.run_id, "soap_f2_*", str(soap.record_path), "--runs-root", str(root),
                 "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["run_id", "optimizer", "settings", "f", "lr"]
    body = [line for line in out[1:] if not line.startswith("curves")]
    assert [line.split()[0] for line in body] == [adamw.run_id, soap.run_id]  # the repeated run shown once
    soap_row = body[1].split()
    assert soap_row[1:4] == ["soap", "-", "2"] and f"{soap.final_val_loss:.4f}" in body[1] and "4/4" in soap_row
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_unknown_run_is_one_line_error(runs, capsys):
    root, _ = runs
    with pytest.raises(SystemExit) as e:
        main(["show", "lion_*", "--runs-root", str(root)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no run record matches 'lion_*'" in err and "Traceback" not in err


def test_corrupt_record_is_a_warning_naming_the_file(runs, tmp_path):
    root, (adamw, _) = runs
    bad = tmp_path / "broken.json"
    bad.write_text('{"config": ')
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({}))
    rows, warnings = show.summary_rows([adamw.record_path, bad, empty])
    assert [r["run_id"] for r in rows] == [adamw.run_id]
    assert len(warnings) == 2 and str(bad) in warnings[0] and str(empty) in warnings[1]
    assert store.read_record(adamw.record_path)["run_id"] == adamw.run_id
