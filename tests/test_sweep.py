"""soap_lab.records.sweep: grids, shards, resumable sweeps."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soap_lab.records import store, sweep


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ----------------------------------------------------------------------------------------- grids


def test_grid_crosses_the_axes(tmp_path, run_config):
    g = sweep.grid(run_config(tmp_path), optimizers=["adamw", "soap"], frequencies=[1, 10], lrs=[1e-3, 3e-3],
                   seeds=[0, 1], budget_fractions=[0.5, 1.0], batch_size=8)
    # frequencies only multiply optimizers that take one
    assert len(g) == 2 * 2 * 2 + 2 * 2 * 2 * 2
    assert len({store.run_id(c) for c in g}) == len(g)
    assert all(c.batch_size == 8 for c in g)
    assert {c.precondition_frequency for c in g if c.optimizer == "adamw"} == {None}
    assert [store.run_id(c) for c in g] == [store.run_id(c) for c in sweep.grid(
        run_config(tmp_path), optimizers=["adamw", "soap"], frequencies=[1, 10], lrs=[1e-3, 3e-3],
        seeds=[0, 1], budget_fractions=[0.5, 1.0], batch_size=8)]


@settings(max_examples=50, deadline=None)
@given(n_items=st.integers(0, 40), count=st.integers(1, 9))
def test_shards_partition_the_grid(n_items, count):
    items = list(range(n_items))
    shards = [sweep.shard(items, i, count) for i in range(count)]
    assert sorted(x for s in shards for x in s) == items
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("spec", ["2/2", "-1/2", "a/2", "1", "1/0", "0/2/3"])
def test_bad_shard_specs(spec):
    with pytest.raises(ValueError, match="expected i/N"):
        sweep.parse_shard(spec)


def test_parse_shard():
    assert sweep.parse_shard("0/1") == (0, 1) and sweep.parse_shard("3/4") == (3, 4)


# ----------------------------------------------------------------------------------------- sweeps


class Stop(Exception):
    pass


def test_sweep_resumes_after_an_interruption(tmp_path, run_config):
    pytest.importorskip("soap_lab.train.models")
    from soap_lab.train.loop import train

    configs = sweep.grid(run_config(tmp_path), lrs=[1e-3, 3e-3], seeds=[0, 1])
    assert len(configs) == 4
    trained = []

    def counting_train(c):
        trained.append(store.run_id(c))
        return train(c)

    def die_after_two(c, r):
        if len(trained) == 2:
            raise Stop  # the process "dies" right after the second record is written

    with pytest.raises(Stop):
        sweep.run_sweep(configs, train_fn=counting_train, after_run=die_after_two, log=None)
    done = sorted((tmp_path / "sweep").glob("*.json"))
    assert [p.stem for p in done] == sorted(trained) and len(done) == 2
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done}

    trained.clear()
    lines = []
    status = sweep.run_sweep(configs, train_fn=counting_train, log=lines.append)
    runs = [line for line in lines if "] run " in line]
    assert "(0 of 2 to train done, ETA after the first run)" in runs[0]
    assert "(1 of 2 to train done, ETA " in runs[1] and runs[1].rstrip(")").split("ETA ")[1][0].isdigit()
    assert [s["status"] for s in status].count("skipped") == 2
    assert sorted(trained) == sorted(store.run_id(c) for c in configs if store.run_id(c) not in
                                     {p.stem for p in done})
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done} == before  # finished runs untouched
    assert len(list((tmp_path / "sweep").glob("*.json"))) == 4
    assert all(store.has_record(c) for c in configs)

    df = store.load("sweep", root=tmp_path)
    assert df.shape[0] == 4 and set(df["run_id"]) == {store.run_id(c) for c in configs}
    assert {"lr", "seed", "final_val_loss", "tokens_per_s", "optimizer_state_bytes", "git_commit"} <= set(df.columns)
    assert df["final_val_loss"].notna().all() and (df["steps_done"] == 3).all()
    assert len(store.curves("sweep", root=tmp_path)) == 4 * 3
