"""What the evaluations' tables share: raw runs read back, the quality columns, gold means with their 95%
intervals over prompts beside the seed spread, and the paired comparisons (``comparisons.md`` / ``.csv``).

A run is ``{seed: [record, ...]}``, the records in the run's prompt order; a value is keyed by
``(prompt index, seed)`` (:mod:`w2s.evaluation.stats`), so two runs pair on the same prompt and seed.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from . import stats
from ..tasks import quality

Run = dict  # seed -> list of records
NOREPEAT = "-norepeat"  # a run name's suffix: the same search with a repetition control on


def read_config(out: Path) -> dict:
    """``out/config.json``, with a clear error when ``out`` holds no run."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"out must be a directory holding an evaluation's config.json, got {str(out)!r} "
                                f"({path} does not exist).")
    return json.loads(path.read_text(encoding="utf-8"))


def read_runs(out: Path, items: Sequence[str], item_key: str, names: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None) -> tuple[dict[str, Run], list[str]]:
    """The complete runs under ``out/raw``: name -> {seed: records}, and notes on the files left out.

    ``names``/``seeds`` None: every run directory and seed file found.  A seed file counts when it holds
    one record per item of ``items`` (matched on ``item_key``, in order); a partial one (a run still being
    appended, or torn) is left out with a note."""
    raw, runs, notes = Path(out) / "raw", {}, []
    found = sorted(p.name for p in raw.iterdir() if p.is_dir()) if raw.is_dir() else []
    for name in (found if names is None else names):
        if seeds is None:
            files = sorted((raw / name).glob("seed*.jsonl"), key=lambda p: _seed_of(p) or 0)
            files = [f for f in files if _seed_of(f) is not None]
        else:
            files = [raw / name / f"seed{s}.jsonl" for s in seeds]
        run = {}
        for path in files:
            if not path.is_file():
                notes.append(f"{name} seed {_seed_of(path)}: no raw file")
                continue
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
                if _whole(path) else None
            if records is None or [r.get(item_key) for r in records] != list(items):
                done = 0 if records is None else len(records)
                notes.append(f"{name} seed {_seed_of(path)}: incomplete ({done} of {len(items)} records), left out")
                continue
            run[_seed_of(path)] = records
        if run:
            runs[name] = run
    return runs, notes


def read_table(out: Path, items_field: str, known: Sequence[str]) -> tuple[dict, dict[str, Run], list[str], list[str]]:
    """``(config, runs, names, notes)`` of an evaluation directory whose table needs its base run: the
    config, the complete runs over ``config[items_field]`` (matched on each record's ``prompt``), their names
    in ``known``'s order, and notes on the files left out."""
    config = read_config(out)
    runs, notes = read_runs(out, config[items_field], "prompt")
    if "base" not in runs:
        raise ValueError(f"out_dir {str(out)!r} must hold the base run's raw records (raw/base/seed*.jsonl), "
                         f"found runs {sorted(runs)}.")
    return config, runs, order(runs, known), notes


def _seed_of(path: Path) -> int | None:
    m = re.fullmatch(r"seed(-?\d+)\.jsonl", path.name)
    return int(m.group(1)) if m else None


def _whole(path: Path) -> bool:
    """Every line of ``path`` is JSON (a torn last line: not whole)."""
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def order(names, known: Sequence[str]) -> list[str]:
    """Run names in table order: ``known``'s order, each ``X-norepeat`` right after ``X``, then the rest sorted."""
    names = list(dict.fromkeys(names))
    base = lambda n: n.removesuffix(NOREPEAT)  # noqa: E731
    rank = {n: i for i, n in enumerate(known)}
    return sorted(names, key=lambda n: (rank.get(base(n), len(rank)), base(n), n != base(n), n))


def compute_n(name: str, table: Mapping[str, int]) -> int | None:
    """A run's compute N: ``table``'s entry, that of ``X`` for ``X-norepeat``, or read off the name
    (``bon-N``, ``pruned-bon-N``: N; ``cbs|front|adaptive-WxK``: W·K; ``base``, ``*-alone``: 1); None if none."""
    while True:
        if name in table:
            return table[name]
        if not name.endswith(NOREPEAT):
            break
        name = name.removesuffix(NOREPEAT)
    if m := re.fullmatch(r"(?:pruned-)?bon-(\d+)", name):
        return int(m.group(1))
    if m := re.match(r"(?:cbs|front|adaptive)-(\d+)x(\d+)(?:-|$)", name):
        return int(m.group(1)) * int(m.group(2))
    return 1 if name == "base" or name.endswith("-alone") else None


def values(run: Run, column: str | Callable[[dict], float]) -> dict:
    """``(prompt index, seed) -> value`` of ``column`` (a record key or a function of the record)."""
    get = column if callable(column) else (lambda r: r[column])
    return {(i, seed): get(r) for seed, records in run.items() for i, r in enumerate(records)}


def texts(run: Run, field: str) -> dict:
    return values(run, field)


def flat(run: Run) -> list[dict]:
    return [r for records in run.values() for r in records]


def gold_stats(run: Run, column: str | Callable[[dict], float], prefix: str) -> dict:
    """``{prefix}_mean``, ``_low``, ``_high`` (95% interval over prompts) and ``_seed_sd`` (std of the
    per-seed means, the seed-to-seed spread) of one run's ``column``."""
    v = values(run, column)
    ci = stats.mean_interval(v, "prompt")
    return {f"{prefix}_mean": ci.mean, f"{prefix}_low": ci.low, f"{prefix}_high": ci.high,
            f"{prefix}_seed_sd": stats.seed_spread(v)}


def quality_stats(run: Run, text_field: str, max_new_tokens: int | None, gate: bool = False) -> dict:
    """The quality columns of one run: ``looping``, ``padded``, ``distinct2``, ``truncated`` (shares and a mean) and,
    with ``gate``, ``non_answers`` (count) and ``answers``."""
    records = flat(run)
    q = quality.summarize([r[text_field] for r in records], records, max_new_tokens, gate=gate)
    out = {k: q[k] for k in ("looping", "padded", "distinct2", "truncated", "answers")}
    if gate:
        out["non_answers"] = q["non_answers"]
    return out


# --- cells ------------------------------------------------------------------------------------------------
def num(x, digits: int = 3, sign: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def share(x) -> str:
    return "–" if x is None else f"{x:.0%}"


def quality_cells(row: dict) -> str:
    """The cells under :data:`QUALITY_HEADER`, joined by ``" | "``."""
    return (f"{share(row['looping'])} | {share(row['padded'])} | {num(row['distinct2'], 2)} "
            f"| {share(row['truncated'])}")


def gold_cell(row: dict, prefix: str, digits: int = 3) -> str:
    """``mean [low, high]`` (the interval left out when there is none)."""
    mean, low, high = row[f"{prefix}_mean"], row[f"{prefix}_low"], row[f"{prefix}_high"]
    if low is None:
        return num(mean, digits)
    return f"{num(mean, digits)} [{num(low, digits)}, {num(high, digits)}]"


def yerr(points: Sequence[dict], prefix: str) -> list[list[float]]:
    """Error bars for matplotlib: each point's 95% interval around its mean (0 where there is none)."""
    low = [0.0 if p[f"{prefix}_low"] is None else p[f"{prefix}_mean"] - p[f"{prefix}_low"] for p in points]
    high = [0.0 if p[f"{prefix}_high"] is None else p[f"{prefix}_high"] - p[f"{prefix}_mean"] for p in points]
    return [low, high]


QUALITY_HEADER = "loops | padded | distinct-2 | truncated"
QUALITY_NOTE = ("Loops: share of answers in which more than 30% of the word trigrams are repeats "
                "(1 − distinct/total over lower-cased whitespace-separated words). Padded: share of answers with "
                f"a run of {quality.PAD_RUN} or more spaces or tabs. Distinct-2: distinct/total word "
                "bigrams of an answer, mean over answers. Truncated: share of answers that did not finish and used "
                "the whole token budget.")
GOLD_NOTE = ("Mean over prompts with its 95% t-interval over prompts (each prompt's mean over seeds first); "
             "seed sd is the standard deviation of the per-seed means (the seed-to-seed spread), not an error bar.")


# --- comparisons --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a label, its columns' values and its answers' texts, keyed by (prompt, seed)."""

    label: str
    columns: dict  # column -> {(prompt, seed): value}
    texts: dict  # {(prompt, seed): text}


def arm(label: str, run: Run, columns: Mapping[str, str | Callable[[dict], float]], text_field: str) -> Arm:
    return Arm(label, {c: values(run, get) for c, get in columns.items()}, texts(run, text_field))


COMPARISON_COLUMNS = ("a", "b", "column", "unit", "n", "mean", "low", "high", "wins", "losses", "ties", "sign_p",
                      "identical", "answers")


def compare(arms: Mapping[str, Arm], pairs: Sequence[tuple[str, str, Sequence[str]]],
            unit: str = stats.DEFAULT_UNIT) -> list[dict]:
    """One row per (pair, column): the paired difference ``a - b`` of the column at ``unit`` (mean, 95%
    interval, wins/losses/ties), with how many of the shared answers are identical texts.  Pairs whose arms
    are missing, or which share no (prompt, seed), are skipped; a pair listed twice is done once."""
    rows, done = [], set()
    for a, b, columns in pairs:
        if (a, b) in done or a not in arms or b not in arms:
            continue
        done.add((a, b))
        x, y = arms[a], arms[b]
        shared = [k for k in x.texts if k in y.texts]
        if not shared:
            continue
        identical = sum(x.texts[k] == y.texts[k] for k in shared)
        for column in columns:
            if column not in x.columns or column not in y.columns:
                continue
            d = stats.paired(x.columns[column], y.columns[column], unit)
            rows.append({"a": a, "b": b, "column": column, "unit": d.unit, "n": d.n, "mean": d.mean, "low": d.low,
                         "high": d.high, "wins": d.wins, "losses": d.losses, "ties": d.ties, "sign_p": d.sign_p,
                         "identical": identical,
                         "answers": len(shared)})
    return rows


def comparisons_markdown(rows: list[dict], labels: Mapping[str, str] | None = None, note: str = "",
                         item: str = "prompt") -> str:
    """The comparisons as a markdown table (``item`` names what a prompt is in the task, e.g. "question")."""
    labels = labels or {}
    lines = ["| comparison | column | mean difference [95% CI] | n | wins / losses / ties | sign test p "
             "| identical answers |", "|:--|:--|--:|--:|--:|--:|--:|"]
    last = None
    for r in rows:
        first = (r["a"], r["b"]) != last
        last = (r["a"], r["b"])
        ci = "" if r["low"] is None else f" [{num(r['low'], sign=True)}, {num(r['high'], sign=True)}]"
        pair = f"{r['a']} − {r['b']}" if first else ""
        same = f"{r['identical']} of {r['answers']}" if first else ""
        lines.append(f"| {pair} | {labels.get(r['column'], r['column'])} | {num(r['mean'], sign=True)}{ci} "
                     f"| {r['n']} {item if r['unit'] == 'prompt' else r['unit']}s "
                     f"| {r['wins']} / {r['losses']} / {r['ties']} | {_p(r['sign_p'])} | {same} |")
    lines += ["", "Paired differences (first run minus second) over the (prompt, seed) pairs both runs answered. "
              "Unit prompt: each prompt's difference is its mean over seeds, and the 95% t-interval is over "
              "prompts (seeds of one prompt are correlated); unit answer: every (prompt, seed) pair. Wins / losses "
              "/ ties: units where the first run scores higher / lower / the same; sign test p: the exact two-sided "
              "sign test of wins against losses (ties left out; McNemar's exact test for a pass/fail gold at one "
              "seed). Identical answers: shared "
              "(prompt, seed) pairs where both runs returned the very same text."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def write_comparisons(out: Path, rows: list[dict], labels: Mapping[str, str] | None = None, note: str = "",
                      item: str = "prompt") -> None:
    out = Path(out)
    with open(out / "comparisons.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(COMPARISON_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    (out / "comparisons.md").write_text(comparisons_markdown(rows, labels, note, item), encoding="utf-8")


def norepeat_pairs(names: Sequence[str], columns: Sequence[str], base: str = "base") -> list:
    """Every ``X-norepeat`` against ``X`` and against ``base``."""
    pairs = []
    for n in names:
        if n.endswith(NOREPEAT):
            pairs += [(n, n.removesuffix(NOREPEAT), columns), (n, base, columns)]
    return pairs
