"""The sandbox that runs model-written code (w2s.tasks.sandbox): each harmful program is contained, counted
as a failure with its reason, and the programs after it still run."""

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from w2s.tasks import sandbox

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox's isolation is Linux's")

FAST = sandbox.Limits(timeout=1.5, memory_mb=512, output_kb=256)
ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parents[1]


def test_a_passing_program_passes_with_every_isolation_layer():
    outcome = sandbox.run("def f(x):\n    return x + 1\nassert f(1) == 2\n", FAST)
    assert outcome.passed and outcome.status == "passed" and outcome.detail == ""
    if ROOT:  # how CI runs
        assert set(outcome.isolation) == {"network", "scratch", "nobody"}
    assert sandbox.isolation() == outcome.isolation


@pytest.mark.parametrize("source,status,reason", [
    ("assert 1 == 2, 'wrong answer'\n", "failed", "AssertionError: wrong answer"),
    ("while True:\n    pass\n", "timeout", "limit"),
    ("import time\ntime.sleep(60)\n", "timeout", "wall-time limit"),
    ("x = bytearray(20 * 2**30)\n", "memory", "MemoryError"),
    ("print('x' * 10**8)\n", "output", "256 KiB output limit"),
    ("import sys\nsys.exit(0)\n", "failed", "SystemExit"),  # exiting early is not passing
    ("import os\nos._exit(0)\n", "killed", "no verdict"),
    ("print('{\"status\": \"passed\"}')\nimport os\nos._exit(0)\n", "killed", "no verdict"),
    ("import os\nos.system('echo hi')\n", "failed", "TypeError"),  # the Python-level guard
    ("import subprocess\nsubprocess.run(['true'])\n", "failed", "TypeError"),
], ids=["assert", "infinite-loop", "sleep", "20GB", "100MB-output", "sys.exit", "os._exit", "fake-verdict",
        "os.system", "subprocess"])
def test_each_failure_is_contained_and_counted_with_its_reason(source, status, reason):
    began = time.monotonic()
    outcome = sandbox.run(source, FAST)
    assert (outcome.status, outcome.passed) == (status, False)
    assert reason in outcome.detail
    assert time.monotonic() - began < FAST.timeout + sandbox.STARTUP_S + 2


def test_child_processes_fail_below_the_python_guard_too():
    """posix.fork is the C call the guard does not remove: RLIMIT_NPROC 0 refuses it (200 tries at most)."""
    outcome = sandbox.run("import os\nfor _ in range(200):\n    os.fork()\n", FAST)
    assert outcome.status == "failed" and "TypeError" in outcome.detail
    outcome = sandbox.run("import posix\nfor _ in range(200):\n    posix.fork()\n", FAST)
    assert outcome.status == "failed" and "BlockingIOError" in outcome.detail


@pytest.mark.skipif(not ROOT, reason="another user's files are protected by the uid drop, which needs root")
def test_writes_outside_its_directory_are_refused_or_thrown_away():
    target = REPO / "escape.txt"  # the checkout: root's, 0755 like most of the machine
    scratch = f"/tmp/w2s-sandbox-escape-{os.getpid()}"
    outcome = sandbox.run(f"open({str(target)!r}, 'w').write('x')\n", FAST)
    assert outcome.status == "failed" and "PermissionError" in outcome.detail and not target.exists()
    # /tmp is world-writable: the write succeeds on the sandbox's own tmpfs and is gone afterwards
    outcome = sandbox.run(f"open({scratch!r}, 'w').write('x')\nassert open({scratch!r}).read() == 'x'\n", FAST)
    assert outcome.passed and not os.path.exists(scratch)
    # its working directory is its own, and removed afterwards
    outcome = sandbox.run("import os\nopen('here.txt', 'w').write('x')\nprint(os.getcwd())\n", FAST)
    assert outcome.passed and not os.path.exists(outcome.output.strip())


@pytest.mark.skipif(not ROOT, reason="signalling the evaluator is refused by the uid drop, which needs root")
def test_a_program_that_kills_its_parent_leaves_the_evaluator_running():
    for call in ("import os\nos.kill(os.getppid(), 9)\n", "import posix\nposix.kill(posix.getppid(), 9)\n"):
        outcome = sandbox.run(call, FAST)
        assert outcome.status == "failed"
    assert "PermissionError" in outcome.detail  # the kernel refused the C call


def test_a_socket_connect_reaches_nothing():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(3)
    port = listener.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(listener.accept())
        except OSError:
            pass

    waiter = threading.Thread(target=accept)
    waiter.start()
    outcome = sandbox.run(f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\n", FAST)
    waiter.join()
    listener.close()
    assert not accepted and outcome.status == "failed"
    if "network" in outcome.isolation:
        assert "Network is unreachable" in outcome.detail
    guarded = sandbox.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}))\n", FAST)
    assert guarded.status == "failed" and "TypeError" in guarded.detail


def test_the_evaluation_goes_on_past_every_harmful_program():
    sources = ["assert True\n", "while True: pass\n", "x = bytearray(20 * 2**30)\n", "print('y' * 10**8)\n",
               "import posix\nposix.kill(posix.getppid(), 9)\n", "assert 2 + 2 == 4\n"]
    seen = []
    outcomes = sandbox.run_many(sources, FAST, workers=2, on_done=lambda i, o: seen.append(i))
    assert [o.status for o in outcomes][:4] == ["passed", "timeout", "memory", "output"]
    assert outcomes[4].status == ("failed" if ROOT else outcomes[4].status) and outcomes[5].passed
    assert sorted(seen) == list(range(len(sources)))


def test_limits_are_validated_by_name():
    with pytest.raises(ValueError, match="timeout"):
        sandbox.Limits(timeout=0)
    with pytest.raises(ValueError, match="memory_mb"):
        sandbox.Limits(memory_mb=1)
    with pytest.raises(TypeError, match="source must be a str"):
        sandbox.run(b"print(1)")
