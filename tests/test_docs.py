"""Every repository path the README and the docs name exists (a renamed module or test shows up here)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "notebooks" / "README.md",
         ROOT / "benchmarks" / "README.md", ROOT / "data" / "runs" / "README.md"]
_PATH = re.compile(r"`([A-Za-z0-9_.][\w./-]*?(?:/|\.(?:py|md|json|ipynb|pt|txt|toml|yml|cff|png|pdf)))(?:::\w+)?`")
#: Folders that exist only once used (scratch, git-ignored): named in the docs, absent from a fresh clone.
SCRATCH = ("data/runs/default/",)
_TOP = ("soap_lab/", "tests/", "docs/", "notebooks/", "benchmarks/", "data/", "figures/", ".ci/", "Makefile",
        "pyproject.toml", "README.md", "constraints.txt", "environment.yml", "CITATION.cff", "LICENSE")


def named_paths(page: Path):
    for m in _PATH.finditer(page.read_text()):
        p = m.group(1)
        if p.startswith(_TOP) and not any(c in p for c in "<>*{}") and p not in SCRATCH:
            yield p


def test_every_named_path_exists():
    missing = [f"{page.relative_to(ROOT)}: {p}" for page in PAGES if page.exists() for p in named_paths(page)
               if not (ROOT / p).exists()]
    assert not missing, "named but not in the repository:\n" + "\n".join(missing)


def test_the_readme_fits_on_a_screen_and_names_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "make figures" in text and "make test" in text
