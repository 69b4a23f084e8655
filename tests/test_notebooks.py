"""The two notebooks run under papermill: the study notebook (any study, any scale) and the equivalence one.

The study notebook trains a tiny overridden scale into a temporary root (its own pool), prints the claims and
draws the figures into a temporary folder; bad parameters stop with one line before any training; the command the
notebooks README documents runs as written on a fresh clone. Kernels run with one torch thread.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

papermill = pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TINY = {"preset": "tiny", "steps": 6, "eval_every": 3, "eval_batches": 1, "batch_size": 4, "seeds": [0, 1],
        "lrs": {"adamw": [1e-2], "soap": [1e-2], "shampoo": [1e-2]}, "frequencies": [1, 3]}


def execute(name, out_dir, **parameters):
    out = out_dir / f"{name}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=parameters,
                               kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False)
    return out


def outputs(path) -> str:
    return "".join(o.get("text", "") for c in nbformat.read(path, as_version=4).cells for o in c.get("outputs", []))


def test_notebooks_are_committed_clean():
    """Thin, parameterized, without outputs: exactly one `parameters` cell, no outputs or execution counts."""
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == ["equivalence", "study"]
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert len([c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]) == 1, path
        assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code"), path


@pytest.mark.slow
def test_the_study_notebook_trains_reports_and_draws_a_tiny_scale(tmp_path, one_thread_kernels):
    root, fig = tmp_path / "runs", tmp_path / "fig"
    out = execute("study", tmp_path, study="frequency", scale="cpu", set=TINY, train=True, figures_dir=str(fig),
                  results_root=str(root))
    text = outputs(out)
    assert "frequency at cpu-" in text and "SOAP's rise with f" in text and "ETA" in text  # a line per run
    assert (fig / "frequency.png").stat().st_size > 1000
    pool = list(root.glob("paper_cpu-*"))
    assert len(pool) == 1 and len(list(pool[0].glob("*.json"))) > 10  # its own pool: never paper_cpu/
    n = len(list(root.rglob("*.json")))
    text = outputs(execute("study", tmp_path, study="frequency", scale="cpu", set=json.dumps(TINY), train=False,
                           figures_dir=str(fig), results_root=str(root)))  # papermill's text: read as a mapping
    assert len(list(root.rglob("*.json"))) == n  # nothing trained
    stored = re.search(r"(\d+) of (\d+) runs stored", text)
    assert stored and stored.group(1) == stored.group(2)


@pytest.mark.parametrize("parameters, message", [
    ({"study": "nope"}, "unknown study 'nope'; allowed: equivalence"),
    ({"scale": "tpu"}, "unknown scale 'tpu'; allowed: cpu, gpu, cpu_freq"),
    ({"set": {"steps": 2.5}}, "steps must be an integer >= 1, got 2.5"),
    ({"set": {"frequencys": [1]}}, "unknown scale field or study parameter 'frequencys'"),
    ({"threads": 0}, "threads must be an integer >= 1, got 0"),
])
def test_bad_parameters_stop_with_one_line(parameters, message, tmp_path, one_thread_kernels):
    with pytest.raises(papermill.PapermillExecutionError) as err:
        execute("study", tmp_path, figures_dir=str(tmp_path / "fig"), **parameters)
    assert message in err.value.evalue and "\n" not in err.value.evalue
    assert not (tmp_path / "fig").exists()


def test_equivalence_notebook_smoke(tmp_path, one_thread_kernels):
    data = tmp_path / "equivalence"
    execute("equivalence", tmp_path, m=5, n=4, n_batches=8, staleness=2, max_staleness=3, gap_frequencies=[2, 3],
            gap_refreshes=["qr"], gap_problems=["teaching", "gpt"], gap_steps=5, torch_threads=1, gap_m=6, gap_n=5,
            condition=30.0, data_dir=str(data), figures_dir=str(tmp_path / "fig"))
    claim1 = json.loads((data / "claim1.json").read_text())
    assert claim1["exact_error"] < 1e-10 and claim1["no_trace_error"] > 1e-2 and "provenance" in claim1
    gap = json.loads((data / "gap_trajectory.json").read_text())
    assert set(gap["columns"]["problem"]) == {"teaching", "gpt"}
    for fig in ("equivalence_claim1", "equivalence_gap"):
        assert (tmp_path / "fig" / f"{fig}.png").exists() and (tmp_path / "fig" / f"{fig}.pdf").exists()
    with pytest.raises(papermill.PapermillExecutionError) as err:
        execute("equivalence", tmp_path, gap_refreshes=["svd"], data_dir=str(data))
    assert "unknown 'svd' in gap_refreshes; allowed: qr, eigh" in err.value.evalue


@pytest.mark.slow
def test_the_documented_command_runs_as_written_on_a_fresh_clone(tmp_path, one_thread_kernels):
    """notebooks/README.md's first command, exactly as written, in a fresh clone of this repository (its
    committed records and folders only): it must not fail for a folder a clone lacks."""
    text = (NOTEBOOKS / "README.md").read_text()
    command = re.search(r"```bash\n(papermill [^\n]+)\n", text).group(1)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    papermill_bin = Path(sys.executable).parent / "papermill"
    r = subprocess.run(command.replace("papermill", str(papermill_bin), 1), shell=True, cwd=clone,
                       capture_output=True, text=True, timeout=900,
                       env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(clone),
                            "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert list((clone / "notebooks" / "executed").glob("*.ipynb"))
    assert subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout == ""


def test_the_equivalence_notebook_writes_scratch_unless_asked_to_store():
    nb = json.loads((NOTEBOOKS / "equivalence.ipynb").read_text())
    params = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    assert "store = False" in "".join(params["source"])
