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


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"
