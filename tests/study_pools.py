"""Run pools for the study tests: synthetic records of a study's grid at a small scale (known loss curves, no
training), and a snapshot of a study's committed records (so that a record landing in ``data/runs`` while a test
draws cannot change what it draws)."""
import shutil

from conftest import _write_synthetic_record

from soap_lab.records import store
from soap_lab.studies import base, registry
from soap_lab.studies.scales import get_scale

#: A small scale: the tiny preset, 40 steps of batch 8, two lrs per optimizer (1e-2 is the tuned one), budget
#: fractions 0.5, 0.75, 1 and batches 4, 8, 16; losses a + 3·(step·batch/8)^-0.5 (conftest._synthetic_loss).
SYNTHETIC = dict(preset="tiny", steps=40, eval_every=10, batch_size=8,
                 lrs={"adamw": (1e-3, 1e-2), "soap": (1e-3, 1e-2), "shampoo": (1e-3, 1e-2)},
                 budget_fractions=(0.5, 0.75, 1.0), batch_sizes=(4, 8, 16))


def synthetic_scale(seeds=(0,)):
    """The synthetic scale with ``seeds`` (the lr tuned on seed 0)."""
    return get_scale("cpu", **SYNTHETIC, seeds=tuple(seeds), tune_seeds=(0,))


def synthetic_pool(root, scale, study: str):
    """Synthetic records of the lr sweep and of ``study``'s grid at ``scale`` under ``root``; returns its StudyData."""
    for cfg in base.lr_sweep_configs(scale, root):
        _write_synthetic_record(cfg, root)
    st = registry.get(study)
    for cfg in st.configs(scale, root):
        if not store.has_record(cfg, root):
            _write_synthetic_record(cfg, root)
    return st.data(scale, root)


def snapshot(root, scale_name: str, study: str):
    """A copy under ``root`` of the committed records that ``study`` at the registered scale reads (its grid and the
    lr sweep); returns ``(scale, root)``."""
    sc = get_scale(scale_name)
    keys = {store.run_key(store.run_id(c)) for c in base.lr_sweep_configs(sc) + registry.get(study).configs(sc)}
    dest = root / sc.experiment
    dest.mkdir(parents=True)
    for p in sorted((store.DEFAULT_RUNS_ROOT / sc.experiment).glob("*.json")):
        if store.run_key(p.stem) in keys:
            shutil.copy(p, dest / p.name)
    return sc, root
