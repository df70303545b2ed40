"""JSON-lines files that long runs append to and resume from."""

from __future__ import annotations

import json
from pathlib import Path


def read_complete(path: str | Path) -> list[dict]:
    """The complete JSON lines of ``path``; a torn last line (an interrupted write) is cut off the file,
    so that appending resumes cleanly.  A missing file reads as empty."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    records = []
    for line in lines:
        if not line.endswith("\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    if len(records) < len(lines):
        path.write_text("".join(lines[: len(records)]), encoding="utf-8")
    return records


def resume_point(path: str | Path, batch_size: int, total: int, keep=lambda record: True) -> int:
    """How many records of ``path`` (one per item of a run over ``total`` items) a resumed run keeps; the
    rest of the file is cut.

    Kept: the complete records before the first one ``keep`` rejects (an error record, say), rounded
    down to a whole number of batches of ``batch_size`` (all of them when the run is complete).  The run restarts at a batch boundary, so every
    prompt is computed in the same batch as in an uninterrupted run with the same batch size: padded
    batches change floating-point reduction order, and only the same batches give bit-identical scores.
    """
    path = Path(path)
    records = read_complete(path)
    done = next((i for i, r in enumerate(records) if not keep(r)), len(records))
    if done < total:
        done -= done % batch_size
    if done < len(records):
        path.write_text("".join(dumps(r) for r in records[:done]), encoding="utf-8")
    return done


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"
