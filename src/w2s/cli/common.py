"""What the commands share: reading inputs, the phases ``w2s stream`` reports, error records."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# wall-clock times (time.time()) at which a command reached its phases; `w2s stream` writes them as JSON to
# the file $W2S_TIMINGS names (benchmarks/bench_startup.py): main, imported, loaded, first (text out), end
PHASES: dict[str, float] = {}


def mark(phase: str) -> None:
    """Note when ``phase`` was first reached."""
    PHASES.setdefault(phase, time.time())


def read_records(source: str, field: str = "prompt") -> list[dict]:
    """Records with a ``field`` field from JSONL, or ``{field: line}`` for each non-empty plain line."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            records.append({field: line})
        elif isinstance(record.get(field), str):
            records.append(record)
        else:
            raise ValueError(f"--{field}s {source}: line {number} is a JSON object without a string '{field}' field.")
    return records


def read_questions(source: str) -> list[str]:
    return [r["question"] for r in read_records(source, field="question")]


def read_corpus(paths) -> list[str]:
    """Texts: one document per blank-line-separated paragraph of a text file, or the 'text' field of JSONL."""
    texts = []
    for path in paths:
        content = Path(path).read_text(encoding="utf-8")
        if str(path).endswith(".jsonl"):
            texts += [json.loads(line)["text"] for line in content.splitlines() if line.strip()]
        else:
            texts += [" ".join(p.split()) for p in content.split("\n\n") if p.strip()]
    return texts


def is_error_record(record: dict) -> bool:
    """A line that says an item failed (a remote model was down): ``--resume`` does it again."""
    return "error" in record and "index" in record and not ({"response", "corrected"} & record.keys())
