import contextlib
import math
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Every test starts from the same global RNG state, so no result depends on which tests ran before it."""
    torch.manual_seed(0)
    yield


# Property tests explore random examples locally; in CI (CI=true) the examples are derived from the test itself,
# so a submission's result does not depend on the draw.
try:
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, deadline=None)
    if os.environ.get("CI"):
        settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass


# ------------------------------------------------------------------------------------------ threads
@contextlib.contextmanager
def _torch_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny models gain nothing from a second thread, and on a shared machine
    two threads per process cost a lot. Modules that train use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """``one_thread`` for module-scoped fixtures that train (they run before the function-scoped one)."""
    with _torch_threads(1):
        yield


@pytest.fixture
def one_thread_env():
    """The environment for a subprocess that trains: this one's, with one OpenMP thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def one_thread_kernels():
    """One OpenMP thread in every Jupyter kernel started in the session (kernels inherit the environment)."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if old is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old


# ---------------------------------------------------------------------------------- configs of runs
@pytest.fixture
def run_config():
    """``run_config(root, **fields)``: the ``TrainConfig`` of a 3-step tiny run recorded under ``root/sweep/``."""
    from soap_lab.train.config import TrainConfig

    def make(root, **fields):
        base = dict(preset="tiny", steps=3, batch_size=4, seq_len=32, eval_every=0, eval_batches=1,
                    progress=False, out_dir=str(root), experiment="sweep")
        base.update(fields)
        return TrainConfig(**base)

    return make


# -------------------------------------------------------------------------- synthetic run records
#: A small scale whose every study has synthetic records (``synthetic_pool``): figures and tables, no training.
SYNTHETIC_OVERRIDES = dict(preset="tiny", steps=40, eval_every=10, batch_size=8,
                           lrs={"adamw": (1e-3, 1e-2), "soap": (1e-3, 1e-2), "shampoo": (1e-3, 1e-2)},
                           frequencies=(1, 10), batch_sizes=(4, 8, 16), budget_fractions=(0.5, 0.75, 1.0))
# (frequencies, batch_sizes, budget_fractions are study parameters: they make the scale cpu-<hash> as any override)
# asymptote of each optimizer's synthetic loss curve (lower is better)
_FLOOR = {"adamw": 2.0, "shampoo": 1.9, "soap": 1.8, "soap_factorized": 1.82, "soap_one_sided": 1.9,
          "soap_factorized_one_sided": 1.95, "muon": 1.85}


#: per-seed shift of every loss (seed 0: none), times the optimizer's factor below (known numbers for seeded figures)
SEED_SHIFT = {0: 0.0, 1: 0.02, 2: -0.01}
SEED_FACTOR = {"adamw": 1.5, "shampoo": 0.5}


def seed_shift(cfg) -> float:
    """How much seed ``cfg.seed`` moves every loss of ``cfg``'s optimizer (0 at seed 0)."""
    return SEED_SHIFT.get(int(cfg.seed), 0.0) * SEED_FACTOR.get(cfg.optimizer, 1.0)


def _synthetic_loss(cfg, step):
    """a + 3·(step·batch/8)^-0.5, worse by 0.3 at the non-tuned lr (1e-3); a moved by ``seed_shift``."""
    a = _FLOOR[cfg.optimizer] + (0.3 if cfg.lr < 5e-3 else 0.0) + seed_shift(cfg)
    if cfg.optimizer.startswith("soap") and cfg.precondition_frequency and cfg.precondition_frequency > 10:
        a += 0.02
    return a + 3.0 * (step * cfg.batch_size / 8) ** -0.5


def _write_synthetic_record(cfg, root, step_time=0.01):
    """A record with the layout ``soap_lab.train.loop`` writes, with loss curves whose numbers are known."""
    from soap_lab.records import store

    steps = max(1, int(math.floor(cfg.budget_fraction * cfg.steps + 0.5)))
    st = step_time * (3 if cfg.optimizer != "adamw" else 1)
    val_steps = list(range(cfg.eval_every, steps, cfg.eval_every)) + [steps]
    metrics = {
        "step": list(range(1, steps + 1)),
        "loss": [_synthetic_loss(cfg, s) for s in range(1, steps + 1)],
        "step_time": [st] * steps,
        "opt_time": [st / 2] * steps,
        "time": [st * s for s in range(1, steps + 1)],
        "val_step": val_steps,
        "val_loss": [_synthetic_loss(cfg, s) for s in val_steps],
        "val_time": [st * s for s in val_steps],
    }
    state = {"adamw": 2, "shampoo": 9, "soap": 9, "soap_factorized": 8, "soap_one_sided": 3,
             "soap_factorized_one_sided": 1.5, "muon": 1}[cfg.optimizer]
    summary = {"steps_total": steps, "steps_done": steps, "final_val_loss": metrics["val_loss"][-1],
               "final_train_loss": metrics["loss"][-1], "diverged": False, "wall_time": st * steps,
               "opt_time_total": st / 2 * steps, "step_time_mean": st, "optimizer_state_bytes": int(state * 4000),
               "num_params": 1000, "tokens_per_step": cfg.batch_size * 32, "seq_len_used": 32}
    rec = {"schema": 1, "run_id": store.run_id(cfg), "experiment": cfg.experiment, "config": store.config_dict(cfg),
           "summary": summary, "metrics": metrics,
           "provenance": {"device": {"type": "cpu", "name": "Synthetic CPU"}, "git_commit": None}}
    store.write_json_atomic(rec, store.record_path(cfg, root))


@pytest.fixture(scope="session")
def synthetic_overrides():
    """The ``Scale`` fields of the synthetic scale (``--scale-overrides`` of the figure command)."""
    return dict(SYNTHETIC_OVERRIDES)


def _write_study_records(scale, root, names=None):
    """Synthetic records of every config of the studies ``names`` (default: every study with a grid) at ``scale``,
    the lr sweep first (the others need tuned lrs); optimizers without a synthetic loss are left out."""
    from soap_lab.records import store
    from soap_lab.studies import lr_sweep_configs, registry

    for cfg in lr_sweep_configs(scale, root, seeds=scale.seeds):
        if not store.has_record(cfg):
            _write_synthetic_record(cfg, root)
    for name, study in registry.studies().items():
        if (names and name not in names) or study.grid is None:
            continue
        for cfg in study.configs(scale, root):
            if cfg.optimizer in _FLOOR and not (cfg.hparams or {}).get("refresh_policy") and not store.has_record(cfg):
                _write_synthetic_record(cfg, root)


@pytest.fixture(scope="session")
def synthetic_scale():
    """The synthetic scale: ``cpu`` with :data:`SYNTHETIC_OVERRIDES` (renamed ``cpu-<hash>``)."""
    from soap_lab.studies.registry import scale_from

    return scale_from("cpu", SYNTHETIC_OVERRIDES)


@pytest.fixture(scope="session")
def synthetic_pool(tmp_path_factory, synthetic_scale):
    """A runs root with a synthetic record for every config of every study of the synthetic scale. Tests only
    read it; one that corrupts records copies it first."""
    root = tmp_path_factory.mktemp("synthetic_runs")
    _write_study_records(synthetic_scale, root)
    return root


#: The synthetic scale with 3 seeds (the lr tuned on seed 0, as at scale cpu_freq).
SEEDED_OVERRIDES = dict(SYNTHETIC_OVERRIDES, seeds=[0, 1, 2], tune_seeds=[0])
# (seeds is both a Scale field and the frequency study's own parameter: both are set)


@pytest.fixture(scope="session")
def synthetic_seeded_scale():
    """The synthetic scale with seeds 0, 1, 2 (:data:`SEEDED_OVERRIDES`); losses moved per seed by ``seed_shift``."""
    from soap_lab.studies.registry import scale_from

    return scale_from("cpu", SEEDED_OVERRIDES)


@pytest.fixture(scope="session")
def synthetic_seeded_pool(tmp_path_factory, synthetic_seeded_scale):
    """Synthetic records of every study of the seeded synthetic scale, and its lr sweep on every seed."""
    root = tmp_path_factory.mktemp("synthetic_seeded_runs")
    _write_study_records(synthetic_seeded_scale, root)
    return root
