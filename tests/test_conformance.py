"""Issue 24, "Which SOAP is which": the conformance page is current, soap_lab.SOAP reproduces its stored cells, and
every probe can tell its answers apart (its answer flips when the one behaviour it measures is flipped, by
soap_lab's own switches or by a hand-written variant, tests/soap_variants.py).

The third-party packages are rerun where they are installed (the ``bench`` extra); NVIDIA's needs Python >= 3.12.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from soap_lab import SOAP
from soap_variants import VariantSOAP

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import conformance as conf  # noqa: E402
import conformance_probes as cp  # noqa: E402

DATA = json.loads((conf.OUT / "probes.json").read_text())

pytestmark = pytest.mark.usefixtures("one_thread")


class Local(cp.Impl):
    """An optimizer built by ``factory(params, reference_keywords)``."""

    def __init__(self, name, factory):
        self.name = self.label = name
        self.factory = factory

    def available(self):
        return None

    def build(self, params, kw):
        return self.factory(params, kw)


def variant(**switches):
    return Local(f"variant {switches}", lambda ps, kw: VariantSOAP(ps, **kw, **switches))


def lab(**forced):
    """soap_lab.SOAP with keywords forced over the probe's (a local switch that flips one behaviour)."""
    return Local(f"soap_lab {forced}", lambda ps, kw: SOAP(ps, **{**kw, **forced}))


def cells(impl, probe):
    """The page's cells of ``probe`` for ``impl`` (row key -> text), and the raw result."""
    r = cp.run_probe(impl, probe)
    res = {"probes": {probe: r}}
    return {key: conf._cell(res, probe, key) for _, p, key in conf.ROWS if p == probe}, r


def stored(name, probe):
    res = DATA["impls"][name]
    return {key: conf._cell(res, probe, key) for _, p, key in conf.ROWS if p == probe}


# --------------------------------------------------------------------------------------------- the page
def test_page_is_current():
    page = conf.render(DATA, conf.load_train(conf.OUT) or None)
    assert conf.PAGE.read_text() == page, "docs/conformance.md is stale: run `python benchmarks/conformance.py --render`"


def test_stored_results_cover_every_implementation_and_row():
    assert DATA["golden"]["sha256"] == conf._sha256(conf.GOLDEN)
    assert set(DATA["impls"]) == set(conf.ALL)
    for name in conf.IN_PROCESS:
        res = DATA["impls"][name]
        assert "unavailable" not in res, name
        for _, probe, key in conf.ROWS:
            assert "unclassified" not in conf._cell(res, probe, key) and conf._cell(res, probe, key) != "error"
        assert set(res["golden"]) == set(torch.load(conf.GOLDEN, weights_only=True)["configs"])
    nv = DATA["impls"]["nvidia_emerging"]
    assert "unavailable" in nv or nv["environment"]["python"] >= "3.12"
    assert "import" in nv["local_attempt"]


@pytest.mark.parametrize("name", conf.REFERENCE.values())
def test_soap_lab_matches_the_reference_on_the_golden_problems(name):
    for cfg, e in DATA["impls"][name]["golden"].items():
        for commit in conf.REFERENCE:
            assert max(e[commit].values()) <= conf.TOL, (cfg, commit, e[commit])


# --------------------------------------------------------------------------------------------- soap_lab's cells
@pytest.mark.parametrize("name", ["soap_lab_eigenbasis", "soap_lab_original"])
def test_soap_lab_reproduces_its_stored_cells(name):
    impl = cp.implementations()[name]
    for probe in cp.PROBES:
        got, raw = cells(impl, probe)
        assert got == stored(name, probe), probe
        # well posed: the answer's candidate is round-off away, the next one far
        dists = raw.get("distances")
        if isinstance(dists, dict):
            best, *rest = sorted(dists.values())
            assert best < 1e-4 and (not rest or rest[0] > 1e-3), (probe, dists)


# --------------------------------------------------------------------------------------------- every probe flips
REF = "soap_lab_eigenbasis"
FLIPS = [
    # (probe, row key, the flipped implementation, what it must read; the variant's default reads as the reference)
    ("first_call", "value", variant(skip_first=False), "updates the weights"),
    ("factor_order", "value", variant(skip_first=False, factors="before"),
     "before the update (call's own G in the basis)"),
    ("factor_order", "value", variant(factors="before"), "before the update (G in the factors, basis one QR step)"),
    ("eps", "value", variant(eps_mode="after_bc"), "added after bias correction (torch Adam)"),
    ("weight_decay", "order", variant(wd_order="before"), "before the update"),
    ("weight_decay", "scale", variant(wd_lr=False), "wd (not scaled by η)"),
    ("beta2", "value", variant(beta2_schedule=True), "β2 replaced (0.741 at its second step, given 0.9)"),
    ("momentum", "storage", cp.implementations()["soap_lab_original"], "original space"),
    ("momentum", "value", variant(momentum="stale"), "left in the old basis's coordinates"),
    ("v_refresh", "value", variant(permute_v=False), "not re-ordered (slots mismatched after a refresh)"),
    ("one_d", "value", lab(precondition_1d=True), "rotated (eigenbasis of g gᵀ)"),
    ("max_dim", "value", lab(max_precond_dim=10**6), "both sides rotated (max_precond_dim not applied)"),
    ("merge_dims", "value", lab(merge_dims=False), "merge_dims=True: (4, 3, 3, 2); False: (4, 3, 3, 2)"),
    ("shampoo_beta_default", "value", Local("default 0.95", lambda ps, kw: SOAP(ps, **{"shampoo_beta": 0.95, **kw})),
     "0.95"),
    ("refresh", "value", lab(refresh="eigh"), "eigh"),
    ("refresh", "value", variant(sort=False), "QR power step, unsorted"),
    ("refresh", "schedule", lab(precondition_frequency=1), "new basis first used at calls 5, 6, 7, 8, 9, 10"),
]


@pytest.mark.parametrize("probe,key,flipped,expected", FLIPS,
                         ids=[f"{p}-{k}-{i}" for i, (p, k, _, _) in enumerate(FLIPS)])
def test_probe_flips_with_the_behaviour(probe, key, flipped, expected):
    reference = stored(REF, probe)[key]
    if isinstance(flipped, Local) and flipped.name.startswith("variant"):
        assert cells(variant(), probe)[0][key] == reference  # the variant's defaults are the reference's
    got = cells(flipped, probe)[0][key]
    assert got == expected != reference


# --------------------------------------------------------------------------------------------- third parties
THIRD = [("pytorch_optimizer", "pytorch_optimizer"), ("heavyball", "heavyball"), ("heavyball_HeavySOAP", "heavyball")]


@pytest.mark.parametrize("name,module", THIRD, ids=[n for n, _ in THIRD])
def test_third_party_reproduces_its_stored_cells(name, module):
    pytest.importorskip(module, reason=f"{module} is not installed (the bench extra: make setup)")
    impl = cp.implementations()[name]
    for probe in cp.PROBES:
        assert cells(impl, probe)[0] == stored(name, probe), probe


def test_nvidia_reproduces_its_stored_cells():
    if sys.version_info < (3, 12):
        pytest.skip("emerging-optimizers needs Python >= 3.12 (its stored cells come from a 3.12 worker)")
    pytest.importorskip("emerging_optimizers", reason="emerging-optimizers is not installed")
    if "unavailable" in DATA["impls"]["nvidia_emerging"]:
        pytest.skip("no stored NVIDIA results")
    impl = cp.implementations()["nvidia_emerging"]
    for probe in cp.PROBES:
        assert cells(impl, probe)[0] == stored("nvidia_emerging", probe), probe


# --------------------------------------------------------------------------------------------- training
def test_training_mode_runs_an_external_optimizer_through_the_lab_harness():
    res = conf.train_one("soap_lab_eigenbasis", steps=2)
    assert res["summary"]["steps_done"] == 2 and res["config"]["seed"] == 0 and res["config"]["preset"] == "mini"
    assert res["reference_keywords"]["precondition_frequency"] == 10 and "git_commit" in res["provenance"]
    text = conf.render_train({"soap_lab_eigenbasis": {0: res}})
    assert "| soap_lab eigenbasis |" in text


def test_combined_optimizer_steps_both_and_exposes_every_group():
    a, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    opt = conf._Combined(torch.optim.SGD([a], lr=1.0), torch.optim.SGD([b], lr=1.0))
    for g in opt.param_groups:
        g["lr"] = 0.5
    a.grad, b.grad = torch.ones(2, 2), torch.ones(2)
    opt.step()
    assert torch.equal(a, torch.full((2, 2), 0.5)) and torch.equal(b, torch.full((2,), 0.5))
