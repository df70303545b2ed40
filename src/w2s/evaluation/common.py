"""What the evaluation harnesses share: the settings check of a resumed run, raw files and summary tables."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from ..jsonl import dumps, resume_point


def start_run(out: Path, config: dict, checked: Sequence[str]) -> None:
    """Create ``out`` and write ``config.json``; a rerun into it must match the ``checked`` settings."""
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        for key in checked:
            if old.get(key) != config[key]:
                was, now = (_short(v) for v in (old.get(key), config[key]))
                raise ValueError(f"{out} holds a run with a different {key} ({was} there, {now} now); "
                                 "use another output directory or the same settings to resume.")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _short(value) -> str:
    if isinstance(value, list):
        return f"{len(value)} items starting {_short(value[0]) if value else '[]'}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def append_missing(path: Path, items: Sequence, batch_size: int, make_rows: Callable[[list, int], list[dict]],
                   desc: str, unit: str, progress: bool) -> None:
    """Add to the raw file ``path`` the rows of the ``items`` it does not hold yet (a torn last line is
    cut, a partly written batch is done again): ``make_rows(batch, start)`` gives one row per item, and each
    batch is written as it finishes."""
    from tqdm.auto import tqdm

    done = resume_point(path, batch_size, len(items))
    if done >= len(items):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(items), initial=done, desc=desc, unit=unit, file=sys.stderr, disable=not progress)
    with open(path, "a", encoding="utf-8") as f, bar:
        for start in range(done, len(items), batch_size):
            batch = list(items[start : start + batch_size])
            f.writelines(dumps(row) for row in make_rows(batch, start))
            f.flush()
            bar.update(len(batch))


def read_raw(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_summary(out: Path, rows: list[dict], columns: Sequence[str], markdown: str) -> None:
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.md").write_text(markdown, encoding="utf-8")


def figure(width: float = 6.4, height: float = 4.2):
    """A matplotlib figure that draws without a display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig
