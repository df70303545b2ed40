"""What the evaluation harnesses share: the settings check of a resumed run, raw files and summary tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence


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
