"""Start-up: ``import w2s`` and ``w2s --help`` import no heavy dependency; the lazy names all resolve."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "fastapi", "httpx", "lm_eval")


def imported_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    check = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize("code", [
    "import w2s",
    "import w2s.backends, w2s.aligner, w2s.evaluation, w2s.training, w2s.serve",
    "import contextlib, io, w2s.cli\nwith contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):"
    " w2s.cli.main(['--help'])",
    "import contextlib, io, w2s.cli\nwith contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):"
    " w2s.cli.main(['stream', '--help'])",
])
def test_no_heavy_import_at_start_up(code):
    assert imported_after(code) == []


def test_every_public_name_resolves():
    import w2s
    import w2s.backends

    for package in (w2s, w2s.backends):
        for name in package.__all__:
            assert getattr(package, name) is not None and name in dir(package)
    exec(f"from w2s import {', '.join(w2s.__all__)}", {})
    assert w2s.load_model is w2s.backends.load_model is w2s.backends.transformers.load_model
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        w2s.nothing
