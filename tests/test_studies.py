"""soap_lab.studies: scales, the registry, the protocol, and that every committed record belongs to a study."""
from __future__ import annotations

from pathlib import Path

import pytest

from soap_lab.records import store
from soap_lab.studies import SCALES, Study, get_scale, is_registered, registry, run_config
from soap_lab.studies.params import ParameterError
from soap_lab.studies.registry import scale_from

ROOT = Path(__file__).resolve().parents[1]


def test_an_override_renames_the_scale_and_reaches_the_studies():
    sc = get_scale("cpu_freq")
    assert is_registered(sc) and sc.experiment == "paper_cpu_freq"
    smoke = get_scale("cpu_freq", steps=20, frequencies=(1, 10))
    assert smoke.name.startswith("cpu_freq-") and smoke.steps == 20 and not is_registered(smoke)
    freq = registry.get("frequency")
    assert freq.param(smoke, "frequencies") == (1, 10) and freq.param(sc, "frequencies") == (1, 3, 10, 30)
    assert freq.param(sc, "seeds") == tuple(range(10))           # the study's own seeds at cpu_freq
    assert freq.param(get_scale("cpu"), "seeds") == (0,)         # None: the scale's
    assert freq.param(get_scale("cpu_freq", seeds=(0, 1)), "seeds") == (0, 1)  # --set seeds reaches it
    assert get_scale("cpu_freq", steps=20) == get_scale("cpu_freq", steps=20)  # the same name each time


def test_scale_from_checks_every_value_in_one_line():
    with pytest.raises(ParameterError, match="unknown scale 'cpux'"):
        scale_from("cpux")
    with pytest.raises(ParameterError, match="steps must be an integer >= 1, got 2.5"):
        scale_from("cpu", {"steps": 2.5})
    with pytest.raises(ParameterError, match="unknown scale field or study parameter 'frequencys'"):
        scale_from("cpu", {"frequencys": "[1, 10]"})
    assert scale_from("cpu", {"frequencies": "[1, 10]"}).param({}, "frequencies") == (1, 10)


def test_run_config_is_the_papers_protocol():
    sc = SCALES["cpu_freq"]
    c = run_config(sc, None, "shampoo", 1e-2, seed=3)
    assert c.hparams == {"exponent": 0.4, "eps": 1e-12, "grafting": "adam"} and c.precondition_frequency == 10
    assert c.betas == (0.95, 0.95) and (c.preset, c.batch_size, c.steps) == ("mini", 16, 1000)
    assert run_config(sc, None, "adamw", 1e-2).precondition_frequency is None
    assert run_config(sc, None, "soap", 1e-2, batch_size=64).batch_size == 64


def test_the_registry_finds_every_study_file_and_a_study_from_anywhere(tmp_path):
    found = registry.studies()
    assert {"lr_sweep", "frequency", "refresh", "overview"} <= set(found)
    assert all(isinstance(s, Study) for s in found.values())
    assert list(found) == sorted(found, key=lambda n: (found[n].order, n))
    with pytest.raises(ParameterError, match="unknown study 'nope'; allowed: equivalence, lr_sweep"):
        registry.get("nope")
    (tmp_path / "mine.py").write_text("from soap_lab.studies import Study\n"
                                      "STUDY = Study(name='mine', question='?', paper='-')\n")
    assert registry.load_file(tmp_path / "mine.py").name == "mine" and "mine" in registry.studies()
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(ParameterError, match="defines no STUDY"):
        registry.load_file(tmp_path / "bad.py")


def test_every_committed_record_belongs_to_a_study():
    """Records are data: every one under data/runs/paper_<scale>/ is a run of some registered study at its
    registered scale (found by its config hash, whatever its file name), so the analysis reads all of them."""
    keys = set()
    for name in ("cpu", "cpu_freq"):
        for s in registry.studies().values():
            keys |= {store.run_key(store.run_id(c)) for c in s.configs(SCALES[name])}
    orphans = [p.name for p in sorted((ROOT / "data" / "runs").glob("paper_cpu*/*.json"))
               if store.run_key(p.stem) not in keys]
    assert not orphans, f"{len(orphans)} records no study reads: {orphans[:5]}"
