"""JSON-lines files that long runs append to and resume from."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def read_complete(path: str | Path) -> list[dict]:
    """The complete JSON lines of ``path``; a torn last line (an interrupted write) is cut off the file,
    so that appending resumes cleanly.  A missing file reads as empty."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines(keepends=True)  # bytes: a line torn inside a character is still cut
    records = []
    for line in lines:
        if not line.endswith(b"\n"):
            break
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            break
    if len(records) < len(lines):
        path.write_bytes(b"".join(lines[: len(records)]))
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


def append_batches(path: str | Path, items, batch_size: int, make_rows, *, resume: bool = True,
                   keep=lambda record: True, item_of=None, desc: str = "", unit: str = "item",
                   progress: bool = False) -> int:
    """The one resumable writer of long runs: ``make_rows(batch, start)`` gives the rows of ``batch``
    (``items[start : start + batch_size]``), which are appended to ``path`` as each batch finishes.

    With ``resume``, the rows already in ``path`` are kept up to a batch boundary and the run goes on
    from there (:func:`resume_point`); otherwise the file is started afresh.  By default one row per
    item; with ``item_of(row)`` (the row's item index) an item may have any number of rows, and the
    last item in the file is done again from the start of its batch (its rows may be incomplete).
    ``path`` ``"-"`` writes to stdout (no resuming).  Returns the index of the first item run.
    """
    from tqdm.auto import tqdm

    items = list(items)
    if path == "-":
        done, out = 0, sys.stdout
    else:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            done = 0
        elif item_of is None:
            done = resume_point(path, batch_size, len(items), keep)
        else:
            done = _resume_by_item(path, batch_size, item_of)
        if done > len(items):
            raise ValueError(f"{path} holds {done} items' lines but this run has only {len(items)} items; "
                             "use another output file, or the same inputs to resume.")
        out = open(path, "a" if done else "w", encoding="utf-8")
    bar = tqdm(total=len(items), initial=done, desc=desc, unit=unit, file=sys.stderr, disable=not progress)
    try:
        for start in range(done, len(items), batch_size):
            batch = items[start : start + batch_size]
            for row in make_rows(batch, start):
                out.write(dumps(row))
                out.flush()
            bar.update(len(batch))
    finally:
        bar.close()
        if out is not sys.stdout:
            out.close()
    return done


def _resume_by_item(path: Path, batch_size: int, item_of) -> int:
    records = read_complete(path)
    if not records:
        return 0
    last = item_of(records[-1])
    start = last - last % batch_size
    path.write_text("".join(dumps(r) for r in records if item_of(r) < start), encoding="utf-8")
    return start


def finite(x):
    """A score as JSON can hold it: None for an infinite or NaN one."""
    return x if x is None or math.isfinite(x) else None


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"
