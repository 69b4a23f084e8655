"""soap_lab.studies.overhead (paper Fig. 7 left): the side-by-side timing study at a tiny scale (with Muon), stored
only where allowed and never replaced without --force; the stored studies (without Muon) still load and give the
report's claims; the per-round fits, the time ratios and the figure.

Replaces: tests/test_overhead.py (all three tests: the fit, the timing study on tiny shapes, now with Muon, and the
per-round fits); tests/test_seeded_claims.py::test_time_ratios_pair_the_rounds and
::test_overhead_fit_per_round_recovers_floor_and_refresh_cost; the overhead part of
tests/test_hygiene.py::test_overridden_scales_write_outside_the_committed_files."""
import json

import pytest

pytest.importorskip("seaborn")

from soap_lab import cli  # noqa: E402
from soap_lab.records import datasets, store  # noqa: E402
from soap_lab.studies import get_scale, registry  # noqa: E402
from soap_lab.studies import overhead as O  # noqa: E402
from soap_lab.studies.params import ParameterError  # noqa: E402

F = 10
TINY = dict(preset="tiny", batch_size=2, timing_frequencies=(1, 3), timing_repeats=2, timing_window=3,
            timing_fb_reps=1)


@pytest.fixture(scope="module")
def tiny_study(one_thread_module):
    """A timing study of the tiny preset: 2 rounds of 3-step blocks, f = 1 and 3, every arm (Muon included)."""
    return O.timing_study(get_scale("cpu", **TINY), log=None)


def test_registered_as_a_measured_study():
    s = registry.get("overhead")
    assert s is O.STUDY and s.measure is O.measure and s.grid is None and not s.tuned
    assert s.configs(get_scale("cpu_freq")) == [] and registry.figures()["overhead"] == (s, O.draw)


def test_timing_study_on_tiny_shapes_has_every_arm_per_round(tiny_study):
    d = tiny_study
    assert [r["f"] for r in d["summary"]] == [1, 3] and d["params"]["muon"] and d["params"]["shampoo"]
    n = len(d["adamw_times"])
    assert n == 2 == len(d["forward_backward_times"]) == len(d["muon_times"]) == len(d["soap_times"]["3"])
    assert len(d["shampoo_times"]["1"]) == n and all(t > 0 for t in d["muon_times"])
    assert d["params"]["n_matrices"] > 0 and d["adamw_step_s"] > 0 and d["forward_backward_s"] > 0
    assert len(O.time_ratios(d, 3, "Muon")) == 2 and len(O.time_ratios(d, 1, "Shampoo")) == 2
    json.dumps(d)  # stored as is
    with pytest.raises(ValueError, match="frequencies is empty"):
        O.timing_study(get_scale("cpu", **TINY), frequencies=[], log=None)


def test_measure_refuses_to_replace_a_stored_study(tmp_path, tiny_study, monkeypatch):
    path = tmp_path / "overhead_x.json"
    datasets.save_json({"params": {}}, path)
    monkeypatch.setattr(O, "timing_study", lambda *a, **k: pytest.fail("measured although a study is stored"))
    with pytest.raises(ParameterError, match=r"a timing study is stored at .*overhead_x\.json: pass --force"):
        O.measure(get_scale("cpu", **TINY), path=path)
    monkeypatch.setattr(O, "timing_study", lambda sc, log=None, **kw: tiny_study)
    assert O.measure(get_scale("cpu", **TINY), force=True, path=path, log=None) == path
    assert store.read_record(path)["muon_times"] == tiny_study["muon_times"]


def test_the_cli_refuses_in_one_line_naming_force(capsys):
    """The committed cpu_freq study is stored: ``study run overhead`` stops before measuring."""
    with pytest.raises(SystemExit) as e:
        cli.main(["study", "run", "overhead", "--scale", "cpu_freq"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "--force" in err and "overhead_cpu_freq.json" in err


def test_overridden_scales_write_outside_the_committed_files():
    tiny = get_scale("cpu", **TINY)
    assert tiny.name.startswith("cpu-") and O.default_path(tiny) == store.REPO_ROOT / "out" / "overhead" / f"overhead_{tiny.name}.json"
    assert O.default_path(tiny.name).parent == store.REPO_ROOT / "out" / "overhead"
    assert O.default_path(get_scale("cpu")) == O.default_path("cpu") == datasets.OVERHEAD_DIR / "overhead_cpu.json"


def test_stored_studies_without_muon_load_and_give_the_reports_claims():
    """The committed cpu_freq study (15 rounds, Muon timed) gives the report's claims; the same study without
    ``muon_times`` (as files stored before Muon was timed, e.g. overhead_cpu.json) gives the same claims and no
    Muon ratios."""
    t = O.load_timing(get_scale("cpu_freq"))
    assert len(t["adamw_times"]) == 15 and len(O.time_ratios(t, F, "Muon")) == 15
    old = {k: v for k, v in t.items() if k != "muon_times"}
    assert O.time_ratios(old, F, "Muon") == [] and len(O.time_ratios(old, F, "Shampoo")) == 15
    assert "muon_times" not in O.load_timing("cpu")
    rows = O.claims(get_scale("cpu_freq"))
    got = [(round(r["mean"], 4), round(r["low"], 4), round(r["high"], 4), r["n"], r["rounds"], r["verdict"])
           for r in rows]
    assert got == [(114.2068, 105.5241, 122.8894, 15, 15, "reproduced"), (15.1619, 14.257, 16.0667, 15, 15, "reproduced")]
    assert O.overhead_claims(old) == rows
    assert all(r["where"] == "timing rounds" and r["seeds"] == [] for r in rows)
    assert O.load_timing("gpu") is None and O.claims(get_scale("gpu")) == []


def test_overhead_fit_recovers_floor():
    fit = O.fit_floor([1, 3, 10, 30, 100], [5 + 50 / f for f in (1, 3, 10, 30, 100)])
    assert fit["floor_pct"] == pytest.approx(5) and fit["per_refresh_pct"] == pytest.approx(50)
    assert O.fit_floor([10, 10], [1.0, 2.0]) is None


def test_per_round_overhead_and_fits_recover_known_rounds():
    """Round r: overhead(f) = (4 + r) + 30/f % of an AdamW training step; each round's fit recovers it."""
    fs, adam, fb = (1, 10, 100), [1e-3, 2e-3], [9e-3, 8e-3]
    soap = {str(f): [a + (4 + r + 30 / f) / 100 * (b + a) for r, (a, b) in enumerate(zip(adam, fb))] for f in fs}
    per = O.per_round({"soap_times": soap, "adamw_times": adam, "forward_backward_times": fb})
    assert per["pct"][10] == pytest.approx([7.0, 8.0])
    assert per["ratio"][1] == pytest.approx([soap["1"][0] / 1e-3, soap["1"][1] / 2e-3])
    fits = O.round_fits(per["pct"])
    assert [f["floor_pct"] for f in fits] == pytest.approx([4.0, 5.0])
    assert [f["per_refresh_pct"] for f in fits] == pytest.approx([30.0, 30.0])
    assert O.per_round({"soap_times": soap, "adamw_times": adam[:1], "forward_backward_times": fb}) is None
    assert O.round_fits({10: [1.0]}) == []


def test_claims_recover_floor_and_refresh_cost_per_round():
    """Round r: overhead(f) = (5 + r) + 40/f % of an AdamW step (fb 0.1 s, AdamW 0.01 s): c = 5, 6, 7, b = 40."""
    fs, fb, adam = (1, 3, 10, 30), 0.1, 0.01
    soap = {str(f): [adam + (5 + r + 40 / f) / 100 * (fb + adam) for r in range(3)] for f in fs}
    falls, floor = O.overhead_claims({"forward_backward_times": [fb] * 3, "adamw_times": [adam] * 3, "soap_times": soap})
    assert falls["values"] == pytest.approx([40] * 3) and falls["verdict"] == "reproduced"
    assert floor["values"] == pytest.approx([5, 6, 7]) and floor["rounds"] == 3
    assert O.overhead_claims(None) == []


def _timing(ratios_adamw, ratios_shampoo, ratios_muon=None, fb=0.1, adam=0.01):
    """A stored study whose round r gives SOAP/AdamW = ratios_adamw[r], SOAP/Shampoo = ratios_shampoo[r] and
    SOAP/Muon = ratios_muon[r] (training steps: forward+backward + optimizer step)."""
    soap = [ra * (fb + adam) - fb for ra in ratios_adamw]
    t = {"forward_backward_times": [fb] * len(soap), "adamw_times": [adam] * len(soap), "soap_times": {str(F): soap},
         "shampoo_times": {str(F): [(fb + s) / r - fb for s, r in zip(soap, ratios_shampoo)]}}
    if ratios_muon:
        t["muon_times"] = [(fb + s) / r - fb for s, r in zip(soap, ratios_muon)]
    return t


def test_time_ratios_pair_the_rounds():
    t = _timing([1.2, 1.3, 1.25], [0.9, 0.95, 0.92], [1.1, 1.05, 1.15])
    assert O.time_ratios(t, F) == pytest.approx([1.2, 1.3, 1.25])
    assert O.time_ratios(t, F, "Shampoo") == pytest.approx([0.9, 0.95, 0.92])
    assert O.time_ratios(t, F, "Muon") == pytest.approx([1.1, 1.05, 1.15])
    assert O.time_ratios(_timing([1.2], [0.9]), F, "Muon") == []  # stored before Muon was timed
    assert O.time_ratios(t, 3) == [] and O.time_ratios({}, F) == [] and O.time_ratios(None, F) == []
    assert O.time_ratios({**t, "adamw_times": [0.01]}, F) == []  # rounds that do not pair
    with pytest.raises(ValueError, match="unknown base 'SGD'; allowed: AdamW, Shampoo, Muon"):
        O.time_ratios(t, F, "SGD")


def test_figure_from_the_stored_studies_is_the_same_bytes_twice(tmp_path):
    data = {k: O.STUDY.data(get_scale(k)) for k in ("cpu_freq", "gpu")}
    a, b = O.draw(data, tmp_path / "a"), O.draw(data, tmp_path / "b")
    assert [p.name for p in a] == ["overhead.png", "overhead.pdf"] and a[0].stat().st_size > 10000
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    with pytest.raises(store.MissingResults, match="run `python -m soap_lab study run overhead --scale gpu`"):
        O.draw({"gpu": data["gpu"]}, tmp_path)


def test_figure_draws_a_study_with_muon(tiny_study, tmp_path, monkeypatch):
    monkeypatch.setattr(O, "load_timing", lambda scale: tiny_study)
    paths = O.draw({"tiny": O.STUDY.data(get_scale("cpu", **TINY))}, tmp_path)  # no frequency runs: no hollow points
    assert paths[0].stat().st_size > 10000
