"""The documentation: the README is a short front door, and the site (mkdocs.yml, docs/) builds strictly.

- ``mkdocs build --strict`` succeeds: a warning fails it, and the validation settings of mkdocs.yml make
  every broken page link, anchor or README snippet a warning; the parameter tables of the method pages
  come from the config classes' docstrings (scripts/mkdocs_hooks.py) and the API reference from
  mkdocstrings;
- the README stays short, and its relative links lead to files that exist.

The commands shown in the README and the docs are parsed by tests/test_layout.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 250


def test_the_docs_build_strictly(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # the README's snippets, a generated parameter table, the API reference and a results plot are there
    assert "make demo" in (site / "index.html").read_text(encoding="utf-8")
    cbs = (site / "methods" / "cbs" / "index.html").read_text(encoding="utf-8")
    assert "--successors-per-beam" in cbs and "beams kept per prompt after each chunk" in cbs
    assert "ChunkBeamSearch" in (site / "api" / "index.html").read_text(encoding="utf-8")
    assert (site / "results" / "sentiment" / "reward_vs_compute.png").is_file()


def test_the_readme_is_a_short_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES
    targets = re.findall(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert any(t.startswith("docs/") for t in local)
    missing = [t for t in local if not (ROOT / t).exists()]
    assert missing == [], f"the README links to files that do not exist: {missing}"
