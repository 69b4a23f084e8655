"""Packaging: the optimizers need torch and numpy only and never import the lab (its libraries are the `lab` extra,
which `make setup` installs); the conda environment lists the same dependencies; the public API is importable."""
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in ("lab", "dev", "bench"):
        wanted |= {_name(r) for r in project["optional-dependencies"][extra]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            listed |= {_name(r) for r in dep["pip"] if not r.startswith("-e")}
        else:
            listed.add(_name(dep.replace("=", "==", 1) if "=" in dep and "==" not in dep and ">" not in dep else dep))
    listed -= {"python", "pip"}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    assert any(str(d).strip() == "-e ." for dep in env["dependencies"] if isinstance(dep, dict) for d in dep["pip"])
    assert "python=3.11" in env["dependencies"]


#: What the lab needs and the optimizers must not import.
LAB_PACKAGES = ("pandas", "matplotlib", "seaborn", "scipy", "papermill", "tokenizers", "tqdm", "ipywidgets")


def test_pip_install_needs_torch_and_numpy_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(_name(r) for r in project["dependencies"]) == ["numpy", "torch"]
    lab = {_name(r) for r in project["optional-dependencies"]["lab"]}
    assert set(LAB_PACKAGES) | {"ipykernel", "nbformat", "pyyaml"} == lab  # pyyaml: soap_lab.params reads YAML
    assert "-e '.[lab,dev,bench]'" in (ROOT / "Makefile").read_text()  # make setup installs the lab


def test_the_core_never_imports_the_lab():
    """Importing soap_lab and every module of soap_lab.optim loads none of the lab's packages (those torch itself
    imports are told apart: torch.hub imports tqdm when it is installed)."""
    code = ("import json, pkgutil, sys, importlib; import torch; before = set(sys.modules); "
            "import soap_lab, soap_lab.optim; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(soap_lab.optim.__path__, 'soap_lab.optim.')]; "
            f"lab = {LAB_PACKAGES!r}; "
            "added = sorted({m.split('.')[0] for m in set(sys.modules) - before} & set(lab)); "
            "by_torch = sorted(m for m in lab if m in before); "
            "print(json.dumps([added, by_torch]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    added, by_torch = json.loads(p.stdout.strip().splitlines()[-1])
    assert added == [], f"the core imports the lab: {added}"
    assert set(by_torch) <= {"tqdm"}, by_torch


def test_torch_is_pinned_for_dev_and_ci():
    assert (ROOT / "constraints.txt").read_text().split() == ["torch==2.13.0"]
    assert "constraints.txt" in (ROOT / "Makefile").read_text()


def test_public_api():
    import soap_lab
    from soap_lab import SOAP, Adafactor, EigenAdafactor, Shampoo

    assert all(issubclass(c, __import__("torch").optim.Optimizer) for c in (SOAP, Shampoo, Adafactor, EigenAdafactor))
    assert soap_lab.__version__


def test_readme_example_runs(tmp_path, monkeypatch):
    """The README's 10-line example is real code: run it (it must train and checkpoint)."""
    import re

    text = (ROOT / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert float(namespace["loss"].detach()) < 2.3  # below chance level (ln 10 ≈ 2.30) after 100 steps
    assert (tmp_path / "opt.pt").exists()


def test_license_and_citation_match_the_project():
    """The files a research repo carries: the license pyproject declares, a CITATION.cff naming the paper."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] in (ROOT / "LICENSE").read_text()
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == project["license"]["text"]
    assert cff["version"] == project["version"]
    paper = cff["preferred-citation"]
    assert paper["title"].startswith("SOAP: Improving and Stabilizing Shampoo using Adam")
    assert any("2409.11321" in i["value"] for i in paper["identifiers"])
    assert paper["authors"][0]["family-names"] == "Vyas"
