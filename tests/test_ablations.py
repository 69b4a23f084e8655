"""Study grids: seeds reach every study, overridden scales get their own pool, the tuned lr needs clean records."""
import pytest

from soap_lab import ablations
from soap_lab.records import store


@pytest.fixture
def fixed_lrs(monkeypatch):
    monkeypatch.setattr(ablations, "tuned_lr", lambda opt, scale, root=None: 1e-2)


@pytest.mark.parametrize("study", ablations.STUDIES + ablations.SEEDED_STUDIES + ablations.OTHER_SEEDED_STUDIES)
def test_seeds_reach_every_study(study, fixed_lrs):
    sc = ablations.get_scale("cpu", seeds=(1, 2), long_steps=50)
    cfgs = ablations.configs(study, sc)
    assert cfgs and sorted({c.seed for c in cfgs}) == ([1, 2] if study != "frequency_long" else [0, 1])
    assert len({store.run_id(c) for c in cfgs}) == len(cfgs)


def test_one_seed_keeps_the_committed_run_ids():
    # seeds=(0,) is TrainConfig's default seed: every study of the committed cpu scale still finds its records
    sc = ablations.get_scale("cpu")
    stored = {store.run_key(p.stem) for p in (store.DEFAULT_RUNS_ROOT / sc.experiment).glob("*.json")}
    for study in ("lr_sweep", "frequency", "comparison", "batch_size", "variants"):
        assert {store.run_key(store.run_id(c)) for c in ablations.configs(study, sc)} <= stored, study
        assert all(store.has_record(c) for c in ablations.configs(study, sc)), study  # found under the old names


def test_overridden_scale_has_its_own_name_and_pool():
    reg = ablations.get_scale("cpu")
    assert reg.name == "cpu" and ablations.is_registered(reg)
    tiny = ablations.get_scale("cpu", preset="tiny", frequencies=(1, 10))
    assert tiny.name.startswith("cpu-") and tiny.experiment != reg.experiment and not ablations.is_registered(tiny)
    assert ablations.get_scale("cpu", preset="tiny", frequencies=(1, 10)).name == tiny.name  # deterministic
    assert ablations.get_scale("cpu", preset="tiny", frequencies=(1, 30)).name != tiny.name
    assert ablations.get_scale("cpu", steps=reg.steps).name == "cpu"  # an override equal to the default is none


def _write_lr_sweep(scale, root, loss=lambda c: 2.0 + c.lr):
    for c in ablations.lr_sweep(scale, root):
        store.write_json_atomic({"config": store.config_dict(c), "summary": {"final_val_loss": loss(c)},
                                   "metrics": {}}, store.record_path(c))


def test_tuned_lr_averages_the_tuning_seeds(tmp_path):
    sc = ablations.get_scale("cpu", tune_seeds=(0, 1), lrs={"adamw": (1e-3, 1e-2)})
    # seed 0 prefers 1e-2 by 0.1, seed 1 prefers 1e-3 by 0.3: the mean prefers 1e-3
    _write_lr_sweep(sc, str(tmp_path), lambda c: 2.0 + {(1e-3, 0): 0.1, (1e-2, 0): 0.0,
                                                         (1e-3, 1): 0.0, (1e-2, 1): 0.3}[(c.lr, c.seed)])
    assert ablations.tuned_lr("adamw", sc, str(tmp_path)) == 1e-3


@pytest.mark.parametrize("content, words", [("{\"config\": {", "not valid JSON"), ("{}", "incomplete run record")])
def test_a_corrupt_lr_record_is_named_never_skipped(tmp_path, content, words):
    sc = ablations.get_scale("cpu", lrs={"adamw": (3e-3, 1e-2, 3e-2)})
    _write_lr_sweep(sc, str(tmp_path))  # best: 3e-3
    best = [c for c in ablations.lr_sweep(sc, str(tmp_path)) if c.optimizer == "adamw" and c.lr == 3e-3][0]
    store.record_path(best).write_text(content)
    with pytest.raises(ablations.MissingResults) as e:
        ablations.tuned_lr("adamw", sc, str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and words in msg and store.record_path(best).name in msg


def test_frequency_study_grid(fixed_lrs):
    sc = ablations.get_scale("cpu_freq")
    main = ablations.frequency_seeded(sc)
    # AdamW × 3 seeds + (SOAP, Shampoo) × 4 frequencies × 3 seeds
    assert len(main) == 3 + 2 * 4 * 3
    sh = [c for c in main if c.optimizer == "shampoo"]
    assert all(c.hparams == ablations.SHAMPOO_BASELINE for c in sh)
    assert all(c.hparams == {} and c.precondition_frequency for c in main if c.optimizer == "soap")
    arm = ablations.frequency_batch(sc)
    assert {c.batch_size for c in arm} == {64, 256} and {c.precondition_frequency for c in arm} == {1, 30}
    assert len(arm) == 2 * 2 * 2 * 3
    lg = ablations.frequency_long(sc)
    assert {c.steps for c in lg} == {3000} and {c.seed for c in lg} == {0, 1}
    assert ablations.configs("frequency_seeded", sc) == main and ablations.configs("frequency_long", sc) == lg


def test_a_study_takes_a_frequency_only_where_the_optimizer_does():
    sc = ablations.get_scale("cpu")
    assert ablations._config(sc, None, "adamw", 1e-2).precondition_frequency is None
    assert ablations._config(sc, None, "soap", 1e-2).precondition_frequency == sc.base_frequency
    assert ablations._config(sc, None, "shampoo", 1e-2).hparams == ablations.SHAMPOO_BASELINE
