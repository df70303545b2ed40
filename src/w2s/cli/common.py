"""What the commands share: reading inputs, the phases ``w2s stream`` reports, the output files of long
runs (their settings record, their error records and exit status)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

from ..backends.base import error_code
from ..configs import flatten
from ..jsonl import append_batches
from ..models import PER_ROLE, ROLE_OVERRIDES
from .flags import flag_name

# wall-clock times (time.time()) at which a command reached its phases; `w2s stream` writes them as JSON to
# the file $W2S_TIMINGS names (benchmarks/bench_startup.py): main, imported, loaded, first (text out), end
PHASES: dict[str, float] = {}

# the exit status of a run that wrote error records (some items failed); 2 is a bad input or setting
FAILED = 1
# output path -> the descriptor holding its lock while this process's run writes it (release_outputs)
_LOCKED: dict[str, int] = {}


def mark(phase: str) -> None:
    """Note when ``phase`` was first reached."""
    PHASES.setdefault(phase, time.time())


def command_name(args) -> str:
    """``w2s search``, ``w2s data corrections``, ...: the command ``args`` were parsed for."""
    return " ".join(["w2s", args.command, *(getattr(args, k) for k in ("builder", "task", "recipe") if hasattr(args, k))])


def read_text(source: str, flag: str) -> str:
    """The text of the input ``source`` (``-``: stdin), without a byte-order mark; one that cannot be read
    is a ValueError naming ``flag``."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        return text.removeprefix("\ufeff")
    except OSError as err:
        raise ValueError(f"{flag} {source}: {(err.strerror or str(err)).lower()}.") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{flag} {source}: not UTF-8 text (byte {err.start} is {err.object[err.start]:#x}).") from None


def read_records(source: str, field: str = "prompt", flag: str | None = None, plain: bool = True) -> list[dict]:
    """Records with a string ``field`` from JSONL, or with ``plain`` ``{field: line}`` for each non-empty
    line of plain text.

    ``source`` is JSONL when its name ends in ``.jsonl``, or (a name not ending in ``.txt``, or stdin)
    when its first non-empty line starts with ``{``.  Then every non-empty line must be a JSON object
    with a string ``field``: a malformed line is an error naming the file and the line (``flag``, by
    default ``--{field}s``), never an item of its own text."""
    flag = flag or f"--{field}s"
    lines = [(n, line) for n, line in enumerate(read_text(source, flag).splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{flag} {source}: holds no {field}s (an empty file, or only blank lines).")
    sniffed = not source.endswith(".txt") and lines[0][1].lstrip().startswith("{")
    if plain and not source.endswith(".jsonl") and not sniffed:
        return [{field: line} for _, line in lines]
    records = []
    for number, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{flag} {source}: line {number} is not JSON ({err.msg}, column {err.colno}); "
                             "a JSONL file holds one JSON object per line.") from None
        if not (isinstance(record, dict) and isinstance(record.get(field), str)):
            raise ValueError(f"{flag} {source}: line {number} is not a JSON object with a string '{field}' field.")
        records.append(record)
    return records


def read_questions(source: str) -> list[str]:
    return [r["question"] for r in read_records(source, field="question")]


def read_corpus(paths) -> list[str]:
    """Texts: one document per blank-line-separated paragraph of a text file, or the 'text' field of JSONL."""
    texts = []
    for path in map(str, paths):
        if path.endswith(".jsonl"):
            texts += [r["text"] for r in read_records(path, "text", "--corpus", plain=False)]
        else:
            texts += [" ".join(p.split()) for p in read_text(path, "--corpus").split("\n\n") if p.strip()]
    return texts


def is_error_record(record: dict) -> bool:
    """A line that says an item failed (a remote model was down): ``--resume`` does it again."""
    return "error" in record and "index" in record and not ({"response", "corrected"} & record.keys())


def error_record(index: int, key: str, item: str, message: str, kind: str, status: int | None = None) -> dict:
    """The output line of an item that failed: its index and input (under ``key``), the message, and the
    error's kind, code and HTTP status (:data:`w2s.backends.base.ERROR_KINDS`; the status is the remote
    engine's, None when it sent none)."""
    return {"index": index, key: item, "error": message, "error_kind": kind, "error_code": error_code(kind),
            "error_status": status}


def run_settings(args, config, roles: dict[str, str], inputs: list, inputs_flag: str) -> dict:
    """What the lines of a run's output depend on: the command; as flags, the config's parameters, the
    seed and each model's path and template (``roles``: each role's flag name); the inputs' count and
    hash.  Not the flags that change only how it runs (batch size, devices, the engine's connection)."""
    flags = {"--method": args.method} if hasattr(args, "method") else {}
    flags.update({flag_name(k): v for k, v in flatten(config).items()})
    flags["--seed"] = args.seed
    for role, name in roles.items():
        for f in PER_ROLE + ROLE_OVERRIDES:
            dest = role if f == "path" else f"{role}_{f}"
            if hasattr(args, dest):
                flags[flag_name(name if f == "path" else f"{name}_{f}")] = getattr(args, dest)
    flags["--dtype"] = args.dtype
    text = json.dumps(inputs, ensure_ascii=False, sort_keys=True)
    settings = {"command": command_name(args), "flags": flags, "inputs": {
        "flag": inputs_flag, "count": len(inputs), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}}
    return json.loads(json.dumps(settings, default=str))  # as read back from the record (tuples as lists)


def run_record(path: str | Path) -> Path:
    """Where the settings of the run that writes ``path`` are recorded: ``PATH.run.json``."""
    path = Path(path)
    return path.with_name(path.name + ".run.json")


def start_output(path: str, settings: dict, *, resume: bool = True, overwrite: bool = False,
                 flag: str = "--output") -> None:
    """Check the output ``path`` against this run before anything is computed, and record ``settings``
    beside it (:func:`run_record`).  Afterwards the file is empty, or holds lines of this same run to go on
    from.  A file with lines is refused unless ``resume`` (with the recorded settings) or ``overwrite``
    (it is emptied).  ``-`` (stdout) has nothing to check."""
    if path == "-":
        return
    out, record = Path(path), run_record(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _lock(out, flag)
    if overwrite:
        os.truncate(out, 0)
    elif out.stat().st_size:
        if not resume:
            raise ValueError(f"{flag} {path} already holds lines; give --resume to go on with that run, or "
                             "--overwrite to start over.")
        if not record.exists():
            warnings.warn(f"{flag} {path} has no {record.name} (written before runs were recorded): going on "
                          "with it unchecked.", stacklevel=2)
        else:
            difference = _difference(json.loads(record.read_text(encoding="utf-8")), settings)
            if difference:
                raise ValueError(f"{flag} {path} holds a run with {difference}; go on with the same settings, "
                                 "give another output, or --overwrite to start over.")
    record.write_text(json.dumps(settings, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _lock(out: Path, flag: str) -> None:
    """Hold an exclusive lock on ``out`` (created if missing) until :func:`release_outputs`: a second run
    writing the same file (another process) is refused before it reads or cuts a line."""
    key = str(out.resolve())
    if key in _LOCKED:
        return
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"{flag} {out} is being written by another run; wait for it to end or give another "
                         "output.") from None
    _LOCKED[key] = fd


def release_outputs() -> None:
    """Let other runs write the outputs this process's runs locked (the end of a command)."""
    while _LOCKED:
        os.close(_LOCKED.popitem()[1])


def _difference(old: dict, new: dict) -> str | None:
    """The first setting of ``new`` that ``old`` does not share, in words."""
    if old.get("command") != new["command"]:
        return f"another command ({old.get('command')}, not {new['command']})"
    was_flags = old.get("flags", {})
    for flag in dict.fromkeys([*new["flags"], *was_flags]):
        was, now = was_flags.get(flag), new["flags"].get(flag)
        if was != now:
            return f"{flag} {_show(was)}, not {_show(now)}"
    was, now = old.get("inputs") or {}, new["inputs"]
    if (was.get("count"), was.get("sha256")) != (now["count"], now["sha256"]):
        return (f"other {now['flag']} ({was.get('count')} items with sha256 {str(was.get('sha256'))[:12]} there, "
                f"{now['count']} with {now['sha256'][:12]} now)")
    return None


def _show(value) -> str:
    text = "none" if value is None else value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def write_output(args, items: list, make_rows, *, unit: str, desc: str) -> int:
    """Append the rows ``make_rows(batch, start)`` of ``items`` to ``args.output`` batch by batch, going on
    from the lines it holds (:func:`start_output` checked them), then the exit status: 0, or
    :data:`FAILED` with a summary on stderr when some items became error records."""
    failed = []

    def rows(batch, start):
        for row in make_rows(batch, start):
            if is_error_record(row):
                failed.append(row)
            yield row

    # the lines kept hold no error record (those are done again), so this run's are all of them
    append_batches(args.output, items, args.batch_size, rows, keep=lambda r: not is_error_record(r), desc=desc,
                   unit=unit, progress=True)
    if not failed:
        return 0
    where = "stdout" if args.output == "-" else args.output
    lines = [f"{command_name(args)}: {len(failed)} of {len(items)} {unit}s failed (error records in {where}):"]
    lines += [f"  index {r['index']}: {r['error']}" for r in failed[:3]]
    lines += [f"  ... and {len(failed) - 3} more"] if len(failed) > 3 else []
    print("\n".join(lines), file=sys.stderr)
    return FAILED
