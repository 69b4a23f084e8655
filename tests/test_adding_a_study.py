"""docs/adding-a-study.md is true: its toy study, written to a temporary folder, is registered, trained at a tiny
scale, reported and drawn through the command line, without touching the committed runs or figures."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "adding-a-study.md"


def _cli(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "soap_lab", *args], cwd=cwd, capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.slow
def test_the_documented_toy_study_runs_end_to_end(tmp_path):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    (tmp_path / "toy.py").write_text(code)
    runs = tmp_path / "runs"
    common = ["--study-file", "toy.py", "--set", "preset=tiny", "--set", "steps=5", "--set", "eval_every=5",
              "--runs-root", str(runs)]
    out = _cli("study", "run", "toy", "--scale", "cpu", "--threads", "1", *common, cwd=tmp_path)
    assert "6 of 6 runs to train" in out and out.count("ETA") == 6  # a progress line per run
    pool = list(runs.glob("paper_cpu-*"))
    assert len(pool) == 1 and len(list(pool[0].glob("*.json"))) == 6  # its own pool, never paper_cpu/
    assert "0 of 6 runs to train" in _cli("study", "run", "toy", "--scale", "cpu", *common, cwd=tmp_path)  # resumes
    report = _cli("study", "report", "toy", "--scale", "cpu", *common, cwd=tmp_path)
    assert "SOAP beats AdamW" in report and "n=3" in report
    assert re.search(r"(reproduced|contradicted|inconclusive at this power)\s+SOAP beats AdamW", report)
    figs = tmp_path / "figs"
    out = _cli("figures", "--only", "toy", "--scales", "cpu", *common, "--figures-dir", str(figs), cwd=tmp_path)
    assert (figs / "toy.png").is_file() and (figs / "toy.pdf").is_file(), out
    listed = _cli("study", "list", "--study-file", "toy.py", cwd=tmp_path)
    assert "toy" in listed and "frequency" in listed
