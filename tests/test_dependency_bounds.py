"""The declared dependency ranges, and the pytest config that guards them.

- the installed Hugging Face stack lies within the ranges pyproject.toml declares;
- FutureWarnings attributed to w2s's own modules are errors (``filterwarnings`` in pyproject.toml);
- (slow) the default suite passes with the lowest declared versions (scripts/check_lower_bounds.py, the
  job ``make test-lowest`` runs).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BOUNDED = ("transformers", "tokenizers", "peft", "trl", "datasets")
W2S_FILTER = r"error::FutureWarning:w2s(\.|$)"


def declared() -> dict[str, list[Requirement]]:
    project = PYPROJECT["project"]
    lines = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    out: dict[str, list[Requirement]] = {}
    for line in lines:
        req = Requirement(line)
        out.setdefault(canonicalize_name(req.name), []).append(req)
    return out


@pytest.mark.parametrize("name", BOUNDED)
def test_installed_version_lies_in_the_declared_range(name):
    reqs = declared()[name]
    for req in reqs:
        # an upper bound: the range is the tested one, not an open-ended promise
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{req} has no upper bound"
        assert any(s.operator in (">=", "==", "~=") for s in req.specifier), f"{req} has no lower bound"
    try:
        installed = Version(version(name))
    except PackageNotFoundError:
        pytest.skip(f"{name} is not installed")
    for req in reqs:
        assert req.specifier.contains(installed, prereleases=True), (
            f"installed {name} {installed} lies outside the declared {req}: run the suite on it "
            f"(and `make test-lowest` for a new lower bound), then move the bound in pyproject.toml")


def test_the_extras_declare_the_same_ranges():
    extras = PYPROJECT["project"]["optional-dependencies"]
    seen: dict[str, set[str]] = {}
    for lines in [PYPROJECT["project"]["dependencies"], *extras.values()]:
        for line in lines:
            req = Requirement(line)
            seen.setdefault(canonicalize_name(req.name), set()).add(str(req.specifier))
    for name in BOUNDED:
        assert len(seen[name]) == 1, f"{name} is declared with different ranges: {sorted(seen[name])}"


def test_the_lowest_job_reads_the_declared_lower_bounds():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_lower_bounds
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    pins = check_lower_bounds.lowest_pins()
    assert set(pins) == set(BOUNDED)
    for name, low in pins.items():
        for req in declared()[name]:
            assert req.specifier.contains(low), f"{name}=={low} is outside {req}"


def test_future_warnings_from_w2s_modules_are_errors(request):
    assert W2S_FILTER in request.config.getini("filterwarnings")
    with warnings.catch_warnings(record=True) as caught:  # keeps the filters; records what is only shown
        with pytest.raises(FutureWarning, match="deprecated"):
            warnings.warn_explicit("`past_key_values` is deprecated", FutureWarning, "kv_rows.py", 1,
                                   module="w2s.backends.kv_rows")
        with pytest.raises(FutureWarning):
            warnings.warn_explicit("deprecated", FutureWarning, "__init__.py", 1, module="w2s")
        # the attribution warnings.warn makes: the __name__ of the frame its stacklevel points at
        code = compile("import warnings\nwarnings.warn('deprecated', FutureWarning)\n", "kv_rows.py", "exec")
        with pytest.raises(FutureWarning):
            exec(code, {"__name__": "w2s.backends.kv_rows"})
        # other modules' FutureWarnings, and other categories from w2s, stay warnings
        warnings.warn_explicit("deprecated", FutureWarning, "module.py", 1, module="torch.nn.modules.module")
        warnings.warn_explicit("deprecated", FutureWarning, "w2sx.py", 1, module="w2sx")
        warnings.warn_explicit("note", UserWarning, "kv_rows.py", 2, module="w2s.backends.kv_rows")
    assert [str(w.message) for w in caught] == ["deprecated", "deprecated", "note"]


@pytest.mark.slow
def test_the_suite_passes_with_the_lowest_declared_versions(tmp_path):
    # the job's own venv, so that a failure leaves it to look at (and `--reuse` can rerun in it)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_lower_bounds.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
