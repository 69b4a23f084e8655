"""Every notebook runs end to end under papermill in a smoke configuration, writing its files where told.

One tiny sweep (preset ``tiny``, 8 steps, 2 frequencies, 1 lr per optimizer; ``smoke_pool`` in conftest.py) is
trained once for the session, in-process, into a temporary results root; each training notebook then runs against
that root (the sweep engine skips the stored runs), draws its figures into a temporary folder, and the test checks
the files. The
timing and equivalence notebooks run with tiny sizes. Bad parameters must stop a notebook with a one-line
message (papermill's PapermillExecutionError carries it). Kernels run with one torch thread.
"""
import json
import os

import nbformat
import pytest

from soap_lab import ablations, rerun
from soap_lab.records import store

papermill = pytest.importorskip("papermill")

NOTEBOOKS = rerun.NOTEBOOKS_DIR
TRAINING = {  # notebook -> (study, figures it draws)
    "lr_sweep": ("lr_sweep", ["lr_sweep"]),
    "precondition_frequency": ("frequency", ["frequency"]),
    "comparison": ("comparison", ["comparison", "efficiency"]),
    "batch_size": ("batch_size", ["batch_size"]),
    "variants": ("variants", ["variants"]),
}


def execute(name, out_dir, **parameters):
    out = out_dir / f"{name}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=parameters,
                               kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False)
    return out


def test_notebooks_are_committed_clean():
    """Thin, parameterized, without outputs: exactly one `parameters` cell, no outputs or execution counts."""
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert set(names) == set(TRAINING) | {"overhead", "equivalence", "seeded_claims"}
    # `make ablations` runs the paper-figure scales; the seeded studies have their own scale and notebook
    assert set(rerun.STUDY_NOTEBOOKS.values()) | {"seeded_claims.ipynb"} == {f"{n}.ipynb" for n in names}
    for name in names:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, name
        for c in nb.cells:
            if c.cell_type == "code":
                assert not c.outputs and c.execution_count is None, name


@pytest.mark.parametrize("name", list(TRAINING))
def test_training_notebook_smoke(name, smoke_pool, smoke_overrides, tmp_path):
    root, sc = smoke_pool
    study, figs = TRAINING[name]
    execute(name, tmp_path, scale_overrides=smoke_overrides, results_root=str(root), figures_dir=str(tmp_path / "fig"),
            torch_threads=1)
    for cfg in ablations.configs(study, sc, root):
        assert store.has_record(cfg), store.run_id(cfg)
    for fig in figs:
        for ext in ("png", "pdf"):
            assert (tmp_path / "fig" / f"{fig}.{ext}").stat().st_size > 1000


def test_overhead_notebook_smoke(tmp_path, one_thread_kernels):
    out = tmp_path / "overhead" / "overhead_tiny.json"  # any name: the notebook draws from the file it wrote
    execute("overhead", tmp_path, scale_overrides={"preset": "tiny", "batch_size": 4}, frequencies=[1, 4], repeats=1,
            window=4, fb_reps=1, output=str(out), results_root=str(tmp_path / "runs"), figures_dir=str(tmp_path / "fig"))
    data = json.loads(out.read_text())
    assert [r["f"] for r in data["summary"]] == [1, 4] and data["provenance"]["device"]["type"] == "cpu"
    assert (tmp_path / "fig" / "overhead.png").exists() and (tmp_path / "fig" / "overhead.pdf").exists()


def test_equivalence_notebook_smoke(tmp_path, one_thread_kernels):
    data = tmp_path / "equivalence"
    execute("equivalence", tmp_path, m=5, n=4, n_batches=8, staleness=2, max_staleness=3, gap_frequencies=[2, 3],
            gap_refreshes=["qr"], gap_problems=["teaching", "gpt"], gap_steps=5, torch_threads=1, gap_m=6, gap_n=5,
            condition=30.0, data_dir=str(data), figures_dir=str(tmp_path / "fig"))
    claim1 = json.loads((data / "claim1.json").read_text())
    assert claim1["exact_error"] < 1e-10 and claim1["no_trace_error"] > 1e-2 and "provenance" in claim1
    gap = json.loads((data / "gap_trajectory.json").read_text())
    assert set(gap["columns"]["problem"]) == {"teaching", "gpt"}
    assert (gap["params"]["m"], gap["params"]["n"], gap["params"]["condition"]) == (6, 5, 30.0)  # section 3 takes them
    for fig in ("equivalence_claim1", "equivalence_gap"):
        assert (tmp_path / "fig" / f"{fig}.png").exists() and (tmp_path / "fig" / f"{fig}.pdf").exists()


def test_seeded_claims_notebook_smoke(tmp_path, one_thread_kernels):
    """Every arm of the seeded studies at a tiny overridden scale: trained into a temporary root, both tables
    printed, both figures drawn; a second run with train=False finds every record."""
    over = dict(preset="tiny", steps=8, eval_every=4, eval_batches=1, batch_size=4, seeds=[0, 1], tune_seeds=[0],
                lrs={"adamw": [1e-2], "soap": [1e-2], "shampoo": [1e-2]}, frequencies=[1, 2], base_frequency=2,
                batch_multipliers=[2], arm_frequencies=[1, 2], long_steps=12, long_frequencies=[1, 2],
                long_seeds=[0, 1], batch_sizes=[4, 8], budget_fractions=[0.5, 0.75, 1.0])
    root, fig = tmp_path / "runs", tmp_path / "fig"
    out = execute("seeded_claims", tmp_path, scale_overrides=over, results_root=str(root), figures_dir=str(fig))
    text = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", []))
    assert "rise_SOAP − rise_Shampoo" in text and "SOAP needs fewer steps than AdamW at batch 8" in text
    for name in ("frequency_seeded", "claims_seeded"):
        assert (fig / f"{name}.png").stat().st_size > 1000
    n_records = len(list(root.rglob("*.json")))
    execute("seeded_claims", tmp_path, scale_overrides=over, results_root=str(root), figures_dir=str(fig), train=False)
    assert len(list(root.rglob("*.json"))) == n_records


@pytest.mark.parametrize("name, parameters, message", [
    ("seeded_claims", {"arms": ["wide"]}, "unknown 'wide' in arms; allowed: seeded, batch, long, others"),
    ("precondition_frequency", {"frequencies": []}, "frequencies is empty"),
    ("lr_sweep", {"lrs": {"sgd": [0.1]}}, "unknown optimizer 'sgd' in lrs"),
    ("variants", {"train": False}, "make ablations SCALE=cpu"),
    ("equivalence", {"gap_refreshes": ["svd"]}, "unknown 'svd' in gap_refreshes; allowed: qr, eigh"),
    ("batch_size", {"batch_sizes": [0, 32]}, "batch_sizes[0] must be an integer >= 1, got 0"),
    ("precondition_frequency", {"seeds": 0}, "seeds must be a list, e.g. [0, 1, 2]; got 0"),
    ("precondition_frequency", {"steps": 2.5}, "steps must be an integer >= 1, got 2.5"),
    ("precondition_frequency", {"scale_overrides": {"frequencies": [0, 5]}},
     "scale_overrides['frequencies'][0] must be an integer >= 1, got 0"),
    ("equivalence", {"m": 16.7}, "m must be an integer >= 2, got 16.7"),
    ("equivalence", {"gap_n": 1}, "gap_n must be an integer >= 2, got 1"),
])
def test_bad_parameters_stop_with_one_line(name, parameters, message, tmp_path, one_thread_kernels):
    parameters = {"results_root": str(tmp_path / "empty"), "figures_dir": str(tmp_path / "fig"), **parameters}
    if name == "equivalence":
        parameters = {k: v for k, v in parameters.items() if k != "results_root"}
        parameters["data_dir"] = str(tmp_path / "eq")
    with pytest.raises(papermill.PapermillExecutionError) as err:
        execute(name, tmp_path, **parameters)
    assert message in err.value.evalue and "\n" not in err.value.evalue
    assert not (tmp_path / "fig").exists() and not (tmp_path / "empty").exists()  # stopped before any training


def test_papermill_text_parameters_are_read_as_lists_and_mappings(smoke_pool, smoke_overrides, tmp_path):
    """`papermill -p frequencies '[2, 4]'` passes text: it must mean the list (same scale, same stored runs)."""
    root, sc = smoke_pool
    execute("precondition_frequency", tmp_path, scale_overrides=json.dumps(smoke_overrides), frequencies="[2, 4]",
            lrs='{"soap": [0.01]}', train=False, results_root=str(root), figures_dir=str(tmp_path / "fig"))
    assert (tmp_path / "fig" / "frequency.png").stat().st_size > 1000


def test_every_notebook_passes_nbval_lax_on_the_committed_results(tmp_path):
    """Each notebook, given cheap parameters by papermill's own injection (training notebooks plot the committed
    records, ``train=False``; the overhead notebook plots the stored study; the equivalence notebook runs its
    teaching defaults), executes cell by cell under ``pytest --nbval-lax`` in a fresh kernel. Figures and data go
    to a temporary folder, so the committed ones are untouched."""
    pytest.importorskip("nbval")
    import subprocess
    import sys

    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    out = tmp_path / "out"
    cheap = {name: {"train": False} for name in TRAINING}
    cheap["overhead"] = {"measure": False}
    cheap["equivalence"] = {"data_dir": str(out / "equivalence")}
    cheap["seeded_claims"] = {"train": False}
    assert set(cheap) == {p.stem for p in NOTEBOOKS.glob("*.ipynb")}  # every notebook, no more
    for name, params in cheap.items():
        nb = load_notebook_node(str(NOTEBOOKS / f"{name}.ipynb"))
        nb = parameterize_notebook(nb, {**params, "figures_dir": str(out / "figures" / name), "torch_threads": 1})
        nbformat.write(nb, str(tmp_path / f"{name}.ipynb"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
                          *sorted(str(p) for p in tmp_path.glob("*.ipynb"))], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "failed" not in res.stdout
    assert len(list((out / "figures").rglob("*.png"))) >= len(cheap)
