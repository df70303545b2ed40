"""Start-up of the command line, each measured in fresh processes (the median of ``--runs``):

- help_s: ``w2s --help``; import_s: ``python -c "import w2s"`` (python_s: ``python -c pass``, the floor);
- ``w2s stream --question QUESTION`` with the shipped models, after one unmeasured run that fills the
  caches (the default strong model's safetensors copy, the merged aligner): from the process's launch,
  imported_s (torch and transformers imported), startup_s (models loaded: the first model call comes
  next), first_s (the first corrected text printed), total_s (the process ended), and first_over_total.
  The phases are the ones the command writes to ``$W2S_TIMINGS`` (see w2s.cli.common).

Targets: startup_s <= 3 and first_over_total <= 0.35.

Usage:  python benchmarks/bench_startup.py --out benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTION = "What are the dangers of hiking?"


def w2s_command() -> list[str]:
    script = Path(sys.executable).parent / "w2s"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "w2s.cli"]


def seconds(command: list[str], env: dict | None = None) -> float:
    """Wall-clock seconds of one run of ``command`` (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def stream_phases(question: str, env: dict) -> dict[str, float]:
    """Seconds from the launch of ``w2s stream --question`` to each of its phases, and to its end."""
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "timings.json"
        launched = time.time()
        subprocess.run([*w2s_command(), "stream", "--question", question], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**env, "W2S_TIMINGS": str(timings)})
        ended = time.time()
        phases = json.loads(timings.read_text())
    row = {f"{phase}_s": phases[phase] - launched for phase in ("main", "imported", "loaded", "first")}
    row["startup_s"] = row.pop("loaded_s")
    row["total_s"] = ended - launched
    row["first_over_total"] = row["first_s"] / row["total_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs of each command (the median is reported)")
    ap.add_argument("--question", default=QUESTION)
    ap.add_argument("--out", default="benchmarks/results/startup.json")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error(f"--runs must be at least 1, got {args.runs}")
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}

    median = lambda f: statistics.median(f() for _ in range(args.runs))  # noqa: E731
    figures = {
        "python_s": median(lambda: seconds([sys.executable, "-c", "pass"])),
        "import_s": median(lambda: seconds([sys.executable, "-c", "import w2s"])),
        "help_s": median(lambda: seconds([*w2s_command(), "--help"])),
    }
    stream_phases(args.question, env)  # fills the caches
    runs = [stream_phases(args.question, env) for _ in range(args.runs)]
    figures.update({key: statistics.median(r[key] for r in runs) for key in runs[0]})
    report = {
        "figures": figures,
        "targets": {"startup_s": 3.0, "first_over_total": 0.35},
        "setup": {"question": args.question, "runs": args.runs, "command": w2s_command(), "cpus": os.cpu_count()},
        "stream_runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
