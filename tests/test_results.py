"""soap_lab.records.store: run ids, atomic records, load/curves."""
import json
import os

import pytest

from soap_lab.records import store
from soap_lab.train.config import TrainConfig


# ------------------------------------------------------------------------------------------- ids


def test_run_id_is_readable_and_deterministic(tmp_path, run_config):
    c = run_config(tmp_path, optimizer="soap", precondition_frequency=10, lr=0.01, seed=0)
    rid = store.run_id(c)
    assert rid.startswith("soap_f10_lr0.01_bs4_s0_budget1.0_") and len(rid.rsplit("_", 1)[1]) == 8
    assert store.run_id(run_config(tmp_path, optimizer="soap", precondition_frequency=10, lr=0.01)) == rid
    assert store.run_id(run_config(tmp_path, lr=3e-3, budget_fraction=0.625)).startswith("adamw_lr0.003_bs4_s0_budget0.625_")
    eigh = store.run_id(run_config(tmp_path, optimizer="soap", precondition_frequency=10, lr=0.01,
                                     hparams={"refresh": "eigh"}))
    assert eigh.startswith("soap_f10_eigh_lr0.01_bs4_s0_budget1.0_")  # what varies in a study is in the name
    # where and how a record is written does not change the id; anything that changes the run does
    assert store.run_id(run_config(tmp_path / "x", optimizer="soap", precondition_frequency=10, lr=0.01,
                                     progress=True, experiment="other")) == rid
    assert store.run_id(run_config(tmp_path, optimizer="soap", precondition_frequency=10, lr=0.01,
                                     batch_size=8)) != rid
    assert store.run_id(run_config(tmp_path, optimizer="soap", precondition_frequency=10, lr=0.01,
                                     hparams={"refresh": "eigh"})) != rid
    assert store.record_path(c) == tmp_path / "sweep" / f"{rid}.json"
    assert store.record_path(c, root=tmp_path / "r") == tmp_path / "r" / "sweep" / f"{rid}.json"


def test_unset_fields_do_not_enter_the_hash():
    d = store.config_dict(TrainConfig())
    assert store.config_hash({**d, "new_field": None}) == store.config_hash(d)
    assert store.config_hash({**d, "new_field": {}}) == store.config_hash(d)
    assert store.config_hash({**d, "new_field": 1}) != store.config_hash(d)


# --------------------------------------------------------------------------------------- records


def test_write_json_atomic_replaces_whole_files(tmp_path, monkeypatch):
    path = tmp_path / "exp" / "run.json"
    store.write_json_atomic({"a": 1, "x": float("nan")}, path)
    assert json.loads(path.read_text()) == {"a": 1, "x": None}  # strict JSON: NaN -> null

    calls = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append((a, b)), real_replace(a, b)))
    store.write_json_atomic({"a": 2}, path)
    (src, dst), = calls
    assert os.path.dirname(src) == str(path.parent) and dst == path  # temp file in the same directory
    assert json.loads(path.read_text()) == {"a": 2}

    # a failure while writing leaves the old record intact and no temporary file behind
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(KeyboardInterrupt):
        store.write_json_atomic({"a": 3}, path)
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.json"]


def _fake_record(config, n_steps, val):
    return {
        "run_id": store.run_id(config),
        "config": store.config_dict(config),
        "summary": {"final_val_loss": val, "steps_done": n_steps},
        "metrics": {"step": list(range(1, n_steps + 1)), "loss": [5.0 - 0.1 * i for i in range(n_steps)],
                    "lr": [1e-3] * n_steps, "time": [0.1 * i for i in range(1, n_steps + 1)],
                    "val_step": [n_steps], "val_loss": [val], "val_time": [0.1 * n_steps]},
        "provenance": {"git_commit": "abc", "git_dirty": False, "device": {"name": "cpu"}, "world_size": 1},
    }


def test_load_and_curves(tmp_path, run_config):
    configs = [run_config(tmp_path, optimizer="soap", precondition_frequency=f, lr=lr)
               for f in (1, 10) for lr in (1e-3, 3e-3)]
    for i, c in enumerate(configs):
        store.write_json_atomic(_fake_record(c, 4 + i, 3.0 + i), store.record_path(c))
    (tmp_path / "sweep" / ".half.json.tmp").write_text("{")  # stray temp files are ignored

    df = store.load("sweep", root=tmp_path)
    assert df.shape[0] == 4
    for col in ("run_id", "optimizer", "lr", "precondition_frequency", "betas", "final_val_loss", "git_commit",
                "device_name"):
        assert col in df.columns, col
    assert sorted(df["final_val_loss"]) == [3.0, 4.0, 5.0, 6.0]
    assert set(df["betas"]) == {(0.95, 0.95)}
    assert df.groupby("precondition_frequency").size().to_dict() == {1: 2, 10: 2}

    tr = store.curves("sweep", root=tmp_path)
    assert len(tr) == 4 + 5 + 6 + 7 and {"run_id", "step", "loss", "lr", "time", "optimizer", "lr"} <= set(tr.columns)
    val = store.curves("sweep", root=tmp_path, which="val", with_config=False)
    assert list(val.columns) == ["run_id", "run_key", "step", "val_loss", "time"] and len(val) == 4
    assert store.load("nothing", root=tmp_path).empty


def test_a_record_under_the_older_name_is_the_same_run(tmp_path, run_config):
    """Records written before the names gained batch size and refresh (``…_s0_b1.0_<hash>``) are found by their
    hash: a sweep skips them and the analysis counts them."""
    c = run_config(tmp_path, optimizer="soap", precondition_frequency=10, lr=0.01)
    rid = store.run_id(c)
    legacy = tmp_path / "sweep" / f"soap_f10_lr0.01_s0_b1.0_{store.run_key(rid)}.json"
    assert store.record_path(c) == tmp_path / "sweep" / f"{rid}.json" and not store.has_record(c)
    legacy.parent.mkdir(parents=True)
    legacy.write_text('{"run_id": "%s", "config": {}, "summary": {"final_val_loss": 1.0}, "metrics": {}}' % legacy.stem)
    assert store.record_path(c) == legacy
    assert store.run_key(legacy.stem) == store.run_key(rid)
