"""The large model behind an OpenAI-compatible completions endpoint (vLLM, llama.cpp's server, a hosted API).

:class:`RemoteModel` implements :class:`w2s.backends.base.LanguageModel` over HTTP, so chunk-level beam
search, Best-of-N, plain sampling and the Stream Aligner run unchanged with the large model remote:

- ``SearchSession.expand`` sends one ``POST /v1/completions`` per live beam: prompt = rendered prompt + the
  beam's response so far, ``max_tokens`` = the chunk length, ``n`` = the successors.  Engines that ignore
  ``n`` (llama.cpp's server) return fewer choices; the missing ones are sampled by separate requests.
  A remote engine keeps nothing for us between chunks but text (vLLM's prefix cache does the rest).
  With a chunk-end rule (step-level chunks) every sample is its own streamed request instead, closed as
  soon as the rule cuts its text.
- ``generator()`` streams (``stream: true``) and closes the stream as soon as ``stop(text)`` cuts it, so
  the Stream Aligner's upstream really stops at the sentence end.
- ``response_logprobs()`` scores texts with ``echo`` + ``logprobs`` where the engine gets them right, so
  a remote model can be a guide too.  A self-check refuses engines whose echoed log-probabilities are
  not those of the tokens they are listed at (llama.cpp's server, see docs/remote.md).

All requests of a step are in flight at once, at most ``concurrency`` at a time, on a private event loop
in a background thread (so the model works from sync code and from any thread).  Timeouts, connection
errors, 429 and 5xx are retried with exponential backoff and full jitter, honouring ``Retry-After``; a
request that still fails ends *its prompt* with a :class:`RemoteError` carried on the continuations,
while the other prompts go on.

Engines name their sampling settings differently: :data:`ENGINE_CONTROLS` holds what each engine takes for
:class:`SamplingParams`' repetition controls, and a control an engine lacks is refused (``ValueError``)
before any request is sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import hashlib
import json
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import httpx

from ..validation import check_choice, check_range
from .base import (ENTROPY_MIN_TOKENS, TOP_LOGPROBS, Confident, Continuation, RemoteError, SamplingParams,
                   chat_turn_end_id, check_interrupt, per_row, render_prompt, stop_index, top_entropy)

# SamplingParams' repetition control -> the request field each engine takes it as (a control missing: refused).
# vLLM 0.32 (entrypoints/openai/completion/protocol.py) and llama-cpp-python's server (server/types.py) take
# these top-level fields; the hosted OpenAI API only its own two.  None has an n-gram ban.
ENGINE_CONTROLS = {
    "vllm": {"repetition_penalty": "repetition_penalty", "frequency_penalty": "frequency_penalty",
             "presence_penalty": "presence_penalty"},
    "llama.cpp": {"repetition_penalty": "repeat_penalty", "frequency_penalty": "frequency_penalty",
                  "presence_penalty": "presence_penalty"},
    "openai": {"frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty"},
}
ENGINES = ("auto", *ENGINE_CONTROLS)
REPETITION_CONTROLS = ("repetition_penalty", "frequency_penalty", "presence_penalty", "no_repeat_ngram_size")
# fields sent to an engine with every completion, so that it samples as the local loop does: llama-cpp-python's
# server applies repeat_penalty 1.1, min_p 0.05 and top_k 40 unless told otherwise (extra_body still overrides)
ENGINE_NEUTRAL = {"llama.cpp": {"repeat_penalty": 1.0, "min_p": 0.0}}
# GET /models' owned_by -> the engine ("me": llama-cpp-python's server; "llamacpp": llama.cpp's own llama-server)
# the controls every engine takes under their own name (sent as such with engine "auto")
SHARED_NAMES = {c: c for c in REPETITION_CONTROLS if all(e.get(c) == c for e in ENGINE_CONTROLS.values())}
OWNERS = {"vllm": "vllm", "me": "llama.cpp", "llamacpp": "llama.cpp", "openai": "openai", "system": "openai",
          "openai-internal": "openai"}

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})  # and any other 5xx
MAX_RETRY_AFTER = 600.0  # seconds: a longer Retry-After is capped (and said so in the error if it fails)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)].

    >>> backoff_delay(3, 0.5, 30.0, random.Random(0)) <= 4.0
    True
    """
    return rng.uniform(0.0, min(cap, base * 2.0**attempt))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None when absent or
    unreadable.  Dates in the past give 0."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def derive_seed(*keys: int) -> int:
    """A request seed in [0, 2**31) that depends only on ``keys`` (prompt seed, step, row, sample)."""
    digest = hashlib.blake2b(repr(tuple(int(k) for k in keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


@dataclass
class CompletionChoice:
    """One choice of a completion response: its text, why it ended, and its tokens."""

    text: str
    finish_reason: str | None
    num_tokens: int


class RemoteModel:
    """A large model served by an OpenAI-compatible engine (``/v1/completions``).

    Args:
        base_url: the API root, e.g. ``http://host:8000/v1``.
        model: the engine's model name (the ``model`` field of each request).
        api_key_env: environment variable holding the API key, sent as ``Authorization: Bearer``; unset
            or empty means no key.  The key is never taken as an argument.
        concurrency: requests in flight at once, at most.
        timeout: seconds per request (connect, and each read of a streamed response).
        max_retries: retries of a request after a timeout, a connection error, 429 or 5xx.
        backoff_base: the retry delay before retry ``a`` is uniform in
            ``[0, min(backoff_max, backoff_base * 2**a)]``, or ``Retry-After`` when the engine sends one.
        backoff_max: the cap of that delay (see ``backoff_base``).
        tokenizer: a local tokenizer of the served model (a directory, a hub id, or a ``.gguf`` file);
            needed for the ``"chat"`` template and for scoring finished responses (its EOS token).
        extra_body: more request fields sent with every completion (engine-specific sampling settings);
            they override what w2s sends.
        engine: the engine behind ``base_url``, which decides the names the sampling settings are sent as:
            ``"vllm"``, ``"llama.cpp"`` (llama-cpp-python's server), ``"openai"`` (the hosted API) or
            ``"auto"``.  ``"auto"`` is ``"openai"`` at ``api.openai.com``; elsewhere it sends the fields
            every engine shares, and asks ``GET /models`` (once, cached: vLLM says ``owned_by: "vllm"``,
            llama-cpp-python ``"me"``) only when a request needs an engine's own name
            (``repetition_penalty``), and then sends that request as to that engine; an engine it cannot
            tell apart is an error naming this parameter.
        send_top_k: send ``top_k``; None (the default): unless the engine is ``"openai"``, whose API has
            no ``top_k``.

    What each engine is sent (a control only when it is on, see :attr:`SamplingParams.repetition_controls`):

    ========================  ===================  ==================  =================
    SamplingParams            vLLM                 llama.cpp           OpenAI
    ========================  ===================  ==================  =================
    ``top_k``                 ``top_k`` (when >0)  ``top_k`` (always)  not sent
    ``repetition_penalty``    same name            ``repeat_penalty``  refused
    ``frequency_penalty``     same name            same name           same name
    ``presence_penalty``      same name            same name           same name
    ``no_repeat_ngram_size``  refused              refused             refused
    ========================  ===================  ==================  =================

    With ``engine="llama.cpp"`` every request also carries ``repeat_penalty`` (1.0 when off), ``min_p``
    0 and ``top_k`` (0 when off), since that server would otherwise apply 1.1, 0.05 and 40 (with ``"auto"``
    only the requests that needed detecting do: name the engine).  A refused
    control raises ``ValueError`` (naming it, its value, the engine and what the engine takes) when a
    session or generator opens, before any request.

    The controls do not mean quite what they mean locally (:class:`SamplingParams`), in three ways:

    - **Each request counts alone.**  The engines count ``frequency_penalty`` and ``presence_penalty``
      over the tokens *this request* generated.  In chunked search (CBS) every chunk is a request whose
      prompt holds the beam's text so far, so those tokens are not counted: the penalties see one chunk
      (the Stream Aligner's upstream: one sentence), where the local loop counts the whole response.
      vLLM's ``repetition_penalty`` covers prompt and output, as locally, so it does see earlier chunks
      (and the prompt).
    - **llama.cpp's window.**  llama-cpp-python's penalties look only at the last 64 tokens the request
      generated (its ``last_n_tokens_size``), never at the prompt: ``repeat_penalty`` there does not
      see the prompt nor earlier chunks.
    - **Order.**  vLLM applies the penalties before temperature, top-k and top-p, as the local loop does;
      llama.cpp applies them first too, but then top-k, top-p and min-p *before* the temperature.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 16,
                 timeout: float = 60.0, max_retries: int = 5, backoff_base: float = 0.5, backoff_max: float = 30.0,
                 tokenizer: str | None = None, extra_body: dict | None = None, engine: str = "auto",
                 send_top_k: bool | None = None):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}.")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be the engine's model name (a non-empty string), got {model!r}.")
        check_range("concurrency", concurrency, low=1, integer=True)
        check_range("timeout", timeout, low=0, low_open=True)
        check_range("max_retries", max_retries, low=0, integer=True)
        check_range("backoff_base", backoff_base, low=0)
        check_range("backoff_max", backoff_max, low=0)
        if not isinstance(api_key_env, str) or not api_key_env:
            raise ValueError(f"api_key_env must name an environment variable, got {api_key_env!r}.")
        check_choice("engine", engine, ENGINES)
        if send_top_k not in (None, True, False):
            raise ValueError(f"send_top_k must be True, False or None (by the engine), got {send_top_k!r}.")
        self.base_url, self.model, self.name = base_url.rstrip("/"), model, f"{model} @ {base_url}"
        self.api_key_env, self.concurrency, self.timeout = api_key_env, concurrency, timeout
        self.max_retries, self.backoff_base, self.backoff_max = max_retries, backoff_base, backoff_max
        self.extra_body, self.engine, self.send_top_k = dict(extra_body or {}), engine, send_top_k
        self.detected: tuple[str | None, str] | None = None  # engine="auto": (engine or None, what /models said)
        self._fields: dict[SamplingParams, dict] = {}  # sampling settings -> their request fields
        self.tokenizer = None
        if tokenizer is not None:
            from pathlib import Path

            from transformers import AutoTokenizer

            path = Path(tokenizer)
            if path.suffix == ".gguf":  # the tokenizer inside a GGUF file of the served model
                self.tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            else:
                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.n_supported: bool | None = None  # learnt from the first response with n > 1
        self.echo_checked: str | None = None  # None: not yet; "" ok; otherwise why echo logprobs are refused
        self.stats = {"requests": 0, "retries": 0}
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None

    # -- the private event loop -----------------------------------------------------------------------
    def run(self, coro):
        """Run a coroutine on this model's event loop (started on first use) and wait for its result."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="w2s-remote", daemon=True)
                self._thread.start()
        if threading.current_thread() is self._thread:
            raise RuntimeError("RemoteModel.run was called from its own event loop thread.")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        while True:
            try:
                return future.result(timeout=0.05)
            except concurrent.futures.TimeoutError:
                try:
                    check_interrupt()  # a caller's interrupt_when: the requests in flight are cancelled
                except BaseException:
                    future.cancel()
                    raise

    def close(self) -> None:
        """Close the HTTP connections and stop the background loop (a later call starts them again)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None:
            return
        if self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.aclose(), loop).result()
        self._client, self._slots = None, None
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def __enter__(self) -> "RemoteModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def auth_headers(self) -> dict[str, str]:
        """The ``Authorization`` header of the engine's API key (none without one)."""
        key = os.environ.get(self.api_key_env, "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _http(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        if self._client is None:  # created on the loop's thread, bound to its loop
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), limits=limits)
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._client, self._slots

    # -- requests with retries ------------------------------------------------------------------------
    async def _with_retries(self, what: str, attempt_once):
        """Run ``attempt_once()`` (a coroutine function holding one slot while it runs) until it succeeds;
        it raises ``_Retryable`` for failures worth retrying, :class:`RemoteError` for the others."""
        client, slots = self._http()
        failures, last = [], None
        for attempt in range(self.max_retries + 1):
            try:
                async with slots:
                    self.stats["requests"] += 1
                    return await attempt_once(client)
            except _Retryable as err:
                failures.append(str(err))
                last = err
                if attempt == self.max_retries:
                    break
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, self._rng)
                if err.retry_after is not None:
                    delay = max(delay, err.retry_after)
                self.stats["retries"] += 1
                await asyncio.sleep(delay)
        raise RemoteError(f"{what} failed after {len(failures)} attempt(s) to {self.base_url}: "
                          f"{'; '.join(_dedupe(failures))}", kind=last.kind, status=last.status)

    async def post(self, path: str, body: dict | None) -> dict:
        """``POST`` the JSON ``body`` to ``path`` under the API root (with retries); the JSON response.
        A ``body`` of None sends ``GET`` instead."""
        url = f"{self.base_url}{path}"

        async def once(client: httpx.AsyncClient) -> dict:
            try:
                if body is None:
                    response = await client.get(url, headers=self.auth_headers())
                else:
                    response = await client.post(url, json=body, headers=self.auth_headers())
            except (httpx.TimeoutException, httpx.TransportError) as err:
                raise _Retryable(f"{type(err).__name__}: {err}".rstrip(": "), kind=_kind_of(err)) from None
            _raise_for_status(response, response.text)
            try:
                return response.json()
            except ValueError:
                raise _Retryable(f"HTTP {response.status_code} with a body that is not JSON",
                                 status=response.status_code) from None

        return await self._with_retries(f"{'GET' if body is None else 'POST'} {path}", once)

    async def stream_completion(self, body: dict, stop, entropy: float | None = None) -> CompletionChoice:
        """One streamed completion.  ``stop(text)`` is asked after each delta; a cut closes the stream at
        once (finish reason ``"cut"``).  The body's stop strings are checked here too (an end, ``"stop"``, as
        in local sampling), whatever the engine does with them.  The token count is the number of deltas
        that carried text (engines stream one token per delta).  With ``entropy``, the engine's top
        log-probs are asked for and the stream is cut before the token whose distribution's entropy
        (:func:`top_entropy`) reaches it, once :data:`ENTROPY_MIN_TOKENS` tokens came (finish reason
        ``"cut"``).  A stream that breaks off (no finish_reason) is retried from the start."""
        if entropy is not None:
            body = {**body, "logprobs": TOP_LOGPROBS}
        stop_strings = body.get("stop") or ()
        url = f"{self.base_url}/completions"

        async def once(client: httpx.AsyncClient) -> CompletionChoice:
            text, finish, deltas = "", None, 0
            try:
                async with client.stream("POST", url, json={**body, "stream": True},
                                         headers=self.auth_headers()) as response:
                    if response.status_code != 200:
                        _raise_for_status(response, (await response.aread()).decode("utf-8", "replace"))
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        try:
                            chunk = json.loads(data)
                        except ValueError:
                            raise _Retryable("a stream event that is not JSON") from None
                        if "error" in chunk and not chunk.get("choices"):
                            raise _Retryable(f"error event in the stream: {chunk['error']}")
                        choice = chunk["choices"][0]
                        if entropy is not None and deltas >= ENTROPY_MIN_TOKENS and choice.get("text"):
                            tops = (choice.get("logprobs") or {}).get("top_logprobs") or [None]
                            if tops[0] is None:
                                raise ValueError(f"the engine serving {self.model!r} streamed no top log-probs "
                                                 "(logprobs), which entropy-cut chunks need.")
                            if top_entropy(list(tops[0].values())) >= entropy:
                                return CompletionChoice(text, "cut", deltas)
                        delta = choice.get("text") or ""
                        text, deltas = text + delta, deltas + bool(delta)
                        finish = choice.get("finish_reason") or finish
                        if (at := stop_index(text, stop_strings)) is not None:
                            return CompletionChoice(text[:at], "stop", deltas)
                        if stop is not None and (cut := stop(text)) is not None:
                            return CompletionChoice(text[:cut], "cut", deltas)  # leaving the block closes the stream
                        if finish is not None:
                            break
            except (httpx.TimeoutException, httpx.TransportError) as err:
                raise _Retryable(f"stream broke off: {type(err).__name__}: {err}".rstrip(": "),
                                 kind=_kind_of(err)) from None
            if finish is None:
                raise _Retryable("stream ended without a finish_reason (cut mid-way)")
            return CompletionChoice(text, finish, deltas)

        return await self._with_retries("streamed POST /completions", once)

    def completion_body(self, prompt: str, params: SamplingParams, max_tokens: int, n: int, seed: int) -> dict:
        """The ``/completions`` request for ``n`` samples of ``prompt`` (the engine's extra fields last)."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "n": n, "seed": seed,
                **self.sampling_fields(params)}
        return {**body, **self.extra_body}

    # -- the engine and its names for the sampling settings ---------------------------------------------
    def sampling_fields(self, params: SamplingParams) -> dict:
        """The request fields of ``params`` under the names this model's engine takes (see the class
        docstring).  A repetition control the engine lacks is a ``ValueError``; with ``engine="auto"`` the
        engine is asked ``GET /models`` (once) when a control needs its own name.  Cached per ``params``."""
        if params not in self._fields:
            engine = self.engine_for(params)
            fields = {"temperature": params.temperature, "top_p": params.top_p}
            if params.stop:
                fields["stop"] = list(params.stop)
            send_top_k = self.send_top_k if self.send_top_k is not None else engine != "openai"
            if send_top_k and (params.top_k or engine == "llama.cpp"):  # llama.cpp's own default is 40
                fields["top_k"] = params.top_k
            fields.update(ENGINE_NEUTRAL.get(engine, {}))
            names = ENGINE_CONTROLS.get(engine, SHARED_NAMES)
            fields.update({names[control]: value for control, value in params.repetition_controls.items()})
            self._fields[params] = fields
        return self._fields[params]

    def engine_for(self, params: SamplingParams) -> str | None:
        """The engine whose names a request with ``params`` is sent with: the ``engine`` setting, or with
        ``"auto"`` None (the names all engines share) unless a control needs the engine's own name, which
        is then detected.  Raises ``ValueError`` for a control the engine lacks."""
        controls = params.repetition_controls
        engine = self.engine
        if engine == "auto" and httpx.URL(self.base_url).host == "api.openai.com":
            engine = "openai"  # told by its address, no request needed
        if engine != "auto":
            for control, value in controls.items():
                if control not in ENGINE_CONTROLS[engine]:
                    raise ValueError(_refusal(control, value, engine))
            return engine
        for control, value in controls.items():
            if not any(control in names for names in ENGINE_CONTROLS.values()):
                raise ValueError(_refusal(control, value, None))
        needs = [c for c in controls if c not in SHARED_NAMES]
        if not needs:
            return None
        engine, said = self.detect_engine()
        if engine is None:
            raise ValueError(f"{needs[0]} is sent under each engine's own name, and engine 'auto' cannot tell which "
                             f"engine serves {self.base_url} (GET /models: {said}); set engine to one of "
                             f"{', '.join(repr(e) for e in ENGINE_CONTROLS)} (--engine on the command line, "
                             "engine = in the server config).")
        for control in needs:
            if control not in ENGINE_CONTROLS[engine]:
                raise ValueError(_refusal(control, controls[control], engine, detected=True))
        return engine

    def detect_engine(self) -> tuple[str | None, str]:
        """``(engine, what GET /models said)``: the engine from the ``owned_by`` of the served model, None
        when it is none of :data:`ENGINE_CONTROLS`; asked once, then cached.
        An engine that cannot be reached raises :class:`RemoteError` (and is asked again next time)."""
        if self.detected is None:
            listed = (self.run(self.post("/models", None)) or {}).get("data") or []
            mine = [m for m in listed if isinstance(m, dict) and m.get("id") == self.model] or listed[:1]
            owner = mine[0].get("owned_by") if mine and isinstance(mine[0], dict) else None
            self.detected = (OWNERS.get(owner), f"owned_by {owner!r}" if owner is not None else
                             "no owned_by for the model")
        return self.detected

    async def sample_choices(self, prompt: str, params: SamplingParams, max_tokens: int, n: int,
                             seed_keys: tuple[int, ...], end=None, entropy: float | None = None
                             ) -> list[CompletionChoice]:
        """``n`` continuations of ``prompt``; sample k is seeded with ``derive_seed(*seed_keys, k)``.  With a
        chunk-end rule ``end`` (or an ``entropy`` cut) each sample is its own stream, closed where it is cut."""
        def request(choices: int, k: int):  # asks for ``choices`` samples, seeded as sample k
            return self.post("/completions", self.completion_body(prompt, params, max_tokens, choices,
                                                                  derive_seed(*seed_keys, k)))

        if end is not None or entropy is not None:
            return list(await asyncio.gather(*[
                self.stream_completion(self.completion_body(prompt, params, max_tokens, 1, derive_seed(*seed_keys, k)),
                                       end, entropy) for k in range(n)]))

        if self.n_supported is False or n == 1:
            singles = [request(1, k) for k in range(n)]
            return [parse_choices(r, max_tokens)[0] for r in await asyncio.gather(*singles)]
        first = parse_choices(await request(n, 0), max_tokens)
        if len(first) >= n:
            self.n_supported = True
            return first[:n]
        self.n_supported = False  # the engine ignores n: fan the rest out as separate requests
        rest = [request(1, k) for k in range(len(first), n)]
        return first + [parse_choices(r, max_tokens)[0] for r in await asyncio.gather(*rest)]

    # -- the LanguageModel protocol -------------------------------------------------------------------
    def render(self, template: str, prompt: str) -> str:
        """``template.format(prompt=prompt)``, or the local tokenizer's chat template for ``"chat"``."""
        hint = (f" (pass tokenizer=PATH, a local copy of {self.model!r}'s tokenizer with a chat template; "
                "--strong-tokenizer / --upstream-tokenizer on the command line)")
        return render_prompt(self.tokenizer, f"the remote model {self.model}", template, prompt,
                             hint if self.tokenizer is None else "")

    def open(self, prompts: Sequence[str], params: SamplingParams, seeds: Sequence[int],
             template: str = "{prompt}") -> "RemoteSearchSession":
        if len(seeds) != len(prompts):
            raise ValueError(f"seeds must have one entry per prompt ({len(prompts)}), got {len(seeds)}.")
        self.sampling_fields(params)  # a control the engine lacks is refused before any request
        return RemoteSearchSession(self, [self.render(template, p) for p in prompts], params, seeds)

    def generator(self, n_rows: int, params: SamplingParams, seeds: Sequence[int], template: str = "{prompt}"
                  ) -> "RemoteGenerator":
        if len(seeds) != n_rows:
            raise ValueError(f"seeds must have one entry per row ({n_rows}), got {len(seeds)}.")
        self.sampling_fields(params)
        return RemoteGenerator(self, params, seeds)

    def response_logprobs(self, template: str, incremental: bool = True, batch_size: int = 32
                          ) -> "RemoteLogProbs":
        """Log-likelihoods of responses by ``echo`` + ``logprobs`` (``incremental`` and ``batch_size`` do
        not apply: every text is one request)."""
        return RemoteLogProbs(self, template)


def _refusal(control: str, value, engine: str | None, detected: bool = False) -> str:
    """Why ``control`` = ``value`` cannot be sent to ``engine`` (None: to any engine), and what it takes."""
    off = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}.get(control, 0.0)
    takes = lambda e: ", ".join(c if c == n else f"{c} (as {n})" for c, n in ENGINE_CONTROLS[e].items())  # noqa: E731
    if engine is None:
        return (f"{control} must be {off} (off) on a remote engine, got {value}: none of "
                f"{', '.join(repr(e) for e in ENGINE_CONTROLS)} has it "
                f"({'; '.join(f'{e} takes {takes(e)}' for e in ENGINE_CONTROLS)}); use a local model for it.")
    how = f"the engine detected ({engine!r})" if detected else f"engine {engine!r}"
    return f"{control} must be {off} (off) with {how}, which has no such control, got {value}; it takes {takes(engine)}."


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None, kind: str = "engine",
                 status: int | None = None):
        super().__init__(message)
        self.retry_after, self.kind, self.status = retry_after, kind, status


def _kind_of(err: Exception) -> str:
    """A transport failure's kind: ``timeout`` for httpx's timeouts, else ``engine``."""
    return "timeout" if isinstance(err, httpx.TimeoutException) else "engine"


def _raise_for_status(response: httpx.Response, body: str) -> None:
    code = response.status_code
    if code == 200:
        return
    detail = " ".join(body.split())[:300]
    if code in RETRY_STATUS or code >= 500:
        raise _Retryable(f"HTTP {code}: {detail}", parse_retry_after(response.headers.get("retry-after")),
                         status=code)
    raise RemoteError(f"HTTP {code} from {response.request.url}: {detail}", status=code)


def parse_choices(response: dict, max_tokens: int) -> list[CompletionChoice]:
    """The choices of a completion response, in index order, with a token count each.

    ``usage.completion_tokens`` covers all choices; a choice cut by the length limit has ``max_tokens``,
    and the finished ones share the rest (exact when one choice, an even split otherwise)."""
    raw = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
    if not raw:
        raise RemoteError(f"the engine returned no choices: {json.dumps(response)[:300]}")
    total = (response.get("usage") or {}).get("completion_tokens")
    choices = [CompletionChoice(c.get("text") or "", c.get("finish_reason"), max_tokens) for c in raw]
    ended = [c for c in choices if c.finish_reason != "length"]
    if ended and total is not None:
        share = max(0, total - max_tokens * (len(choices) - len(ended)))
        for i, c in enumerate(ended):
            c.num_tokens = share // len(ended) + (1 if i < share % len(ended) else 0)
    return choices


class RemoteSearchSession:
    """A search session on a remote model: each live beam is its prompt index and its response text so far."""

    def __init__(self, lm: RemoteModel, contexts: list[str], params: SamplingParams, seeds: Sequence[int]):
        self.lm, self.contexts, self.params = lm, contexts, params
        self.seeds = [int(s) for s in seeds]
        self.steps = [0] * len(contexts)  # expansions so far, per prompt: part of each request's seed
        self.live = [Continuation(p, p, "", False, 0) for p in range(len(contexts))]
        self.candidates: list[Continuation] = []

    def expand(self, parents: Sequence[int], n, max_tokens, end=None, entropy=None) -> list[Continuation]:
        ns, limits = per_row(n, len(parents)), per_row(max_tokens, len(parents))
        assert parents and min(ns) >= 1 and min(limits) >= 1
        beams = [self.live[i] for i in parents]
        rank: dict[int, int] = {}  # parent's position among its prompt's parents: part of the seed
        seed_keys = []
        for beam in beams:
            p = beam.prompt_index
            seed_keys.append((self.seeds[p], self.steps[p], rank.get(p, 0)))
            rank[p] = rank.get(p, 0) + 1
        for p in rank:
            self.steps[p] += 1

        async def sample_beam(beam: Continuation, keys: tuple[int, ...], n: int, max_tokens: int):
            try:
                return await self.lm.sample_choices(self.contexts[beam.prompt_index] + beam.text, self.params,
                                                    max_tokens, n, keys, end, entropy)
            except RemoteError as err:
                return err

        results = self.lm.run(_gather([sample_beam(*args) for args in zip(beams, seed_keys, ns, limits)]))
        failed = {beam.prompt_index: r for beam, r in zip(beams, results) if isinstance(r, RemoteError)}
        self.candidates = []
        for parent, beam, choices, n in zip(parents, beams, results, ns):
            p = beam.prompt_index
            for k in range(n):
                if p in failed:  # the whole prompt ends with the error, its other beams included
                    continuation = Continuation(p, parent, beam.text, True, beam.num_tokens, error=str(failed[p]),
                                                failure=failed[p])
                else:
                    choice = choices[k]
                    text, finished = beam.text + choice.text, choice.finish_reason == "stop"
                    if (at := stop_index(text, self.params.stop)) is not None:  # a stop string across chunks
                        text, finished = text[:at], True
                    continuation = Continuation(p, parent, text, finished, beam.num_tokens + choice.num_tokens,
                                                drawn=choice.num_tokens)
                self.candidates.append(continuation)
        return self.candidates

    def select(self, indices: Sequence[int]) -> None:
        for i in indices:
            if self.candidates[i].finished:
                raise ValueError(f"continuation {i} is finished and cannot be selected for expansion.")
        self.live = [self.candidates[i] for i in indices]
        self.candidates = []


async def _gather(coros):
    return await asyncio.gather(*coros)


class RemoteGenerator:
    """Rows of text continued by streamed completions (the Stream Aligner's upstream on a remote engine).

    Each call sends every row's context as one streamed request, all in flight at once; ``stop(text)``
    is asked after each delta and a cut closes that stream.  Row i's request seed is derived from its
    seed and the number of calls it has had, so a rerun draws the same text on engines that honour
    ``seed``.  A row whose request fails for good raises :class:`RemoteError` once the others are done.
    """

    def __init__(self, lm: RemoteModel, params: SamplingParams, seeds: Sequence[int]):
        self.lm, self.params = lm, params
        self.seeds = [int(s) for s in seeds]
        self.calls = [0] * len(seeds)

    def generate(self, contexts: dict[int, str], max_new_tokens: int, stop=None) -> dict[int, tuple[str, bool]]:
        got = self._requests(contexts, max_new_tokens, lambda body: self.lm.stream_completion(body, stop))
        return {i: (c.text, c.finish_reason == "stop") for i, c in got.items()}

    def generate_confident(self, contexts: dict[int, str], max_new_tokens: int, threshold: float,
                           keep_first: bool = True) -> dict[int, Confident]:
        """As :meth:`IncrementalGenerator.generate_confident`, from the engine's top log-probs
        (``logprobs: 1``; the highest of the entries it returns at a position is the top probability): one
        request of ``max_new_tokens`` per row, cut before the first token (after the first, with
        ``keep_first``) whose top probability is below ``threshold``.  The engine must return the model's
        raw log-probs (vLLM's default; llama.cpp's server needs ``--logits_all true``)."""
        got = self._requests(contexts, max_new_tokens, lambda body: self.lm.post("/completions", body),
                             {"logprobs": 1})
        return {i: self._confident(answer, threshold, keep_first) for i, answer in got.items()}

    def _requests(self, contexts: dict[int, str], max_new_tokens: int, send, extra: dict | None = None) -> dict:
        """row -> the answer of its request (all in flight at once; ``send(body)`` awaits one), each row's
        seed derived from its calls so far.  A row whose request fails for good raises :class:`RemoteError`
        once the others are done."""
        rows = sorted(contexts)
        bodies = []
        for i in rows:
            bodies.append({**self.lm.completion_body(contexts[i], self.params, max_new_tokens, 1,
                                                     derive_seed(self.seeds[i], self.calls[i])), **(extra or {})})
            self.calls[i] += 1

        async def one(body):
            try:
                return await send(body)
            except RemoteError as err:
                return err

        answers = self.lm.run(_gather([one(b) for b in bodies])) if bodies else []
        failed = [(i, r) for i, r in zip(rows, answers) if isinstance(r, RemoteError)]
        if failed:
            raise RemoteError("; ".join(f"row {i}: {r}" for i, r in failed), kind=failed[0][1].kind,
                              status=failed[0][1].status)
        return dict(zip(rows, answers))

    def _confident(self, answer: dict, threshold: float, keep_first: bool) -> Confident:
        choice = answer["choices"][0]
        logprobs = choice.get("logprobs") or {}
        tokens, tops = logprobs.get("tokens"), logprobs.get("top_logprobs")
        if tokens is None or tops is None or (tokens and not all(tops)):
            raise ValueError(f"the engine serving {self.lm.model!r} returned no top log-probs (logprobs: 1), which "
                             "Nudging needs; llama.cpp's server gives them with --logits_all true.")
        top = [math.exp(max(t.values())) for t in tops]
        kept = next((k for k in range(len(tokens)) if (k > 0 or not keep_first) and top[k] < threshold),
                    len(tokens))
        whole = kept == len(tokens)
        text = choice["text"] if whole else "".join(tokens[:kept])
        # an engine that ends at once says nothing of how sure it was: taken as unsure (the authors' reading)
        return Confident(text, whole and choice.get("finish_reason") == "stop", top[0] if top else 0.0,
                         kept + (whole and choice.get("finish_reason") == "stop"))


class RemoteLogProbs:
    """Sum of log p(response token | context) by ``echo: true`` + ``logprobs``, one request per text.

    Counted tokens are those that end after the rendered prompt (``text_offset`` + token length), the
    remote analogue of the local definition's longest common prefix; a finished response gets the
    model's EOS token text appended (needs ``tokenizer=``).  Before the first use the engine's echo is
    checked against its own sampling log-probabilities (:func:`check_echo_logprobs`).
    """

    def __init__(self, lm: RemoteModel, template: str):
        lm.render(template, "")  # fail early when 'chat' is asked without a chat template
        self.lm, self.template = lm, template
        # the end token scored after a finished response: the chat template's end of turn, else EOS
        tokenizer = lm.tokenizer
        turn_end = chat_turn_end_id(tokenizer) if template == "chat" else None
        self.end_text = (tokenizer.convert_ids_to_tokens(turn_end) if turn_end is not None
                         else getattr(tokenizer, "eos_token", None))

    def reset(self) -> None:
        pass

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool]) -> list[float]:
        if not (len(prompts) == len(responses) == len(finished)):
            raise ValueError("prompts, responses and finished must have the same length.")
        if any(finished):
            if not self.end_text:
                raise ValueError("scoring a finished response counts the model's end-of-sequence token, whose text "
                                 "a remote model only knows from a local tokenizer: pass tokenizer=PATH.")
        return self.lm.run(self._score(list(prompts), list(responses), list(finished)))

    async def _score(self, prompts, responses, finished) -> list[float]:
        await check_echo_logprobs(self.lm)
        jobs = []
        for p, r, f in zip(prompts, responses, finished):
            context = self.lm.render(self.template, p)
            jobs.append(_logprobs_after(self.lm, context + r + (self.end_text if f else ""), len(context)))
        return [sum(lps) for lps in await asyncio.gather(*jobs)]


async def echo_logprobs(lm: RemoteModel, text: str) -> tuple[list[str], list[float | None], list[int]]:
    """``text`` echoed by the engine: its tokens, their log-probabilities and their character offsets."""
    body = {"model": lm.model, "prompt": text, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0.0}
    response = await lm.post("/completions", body)
    logprobs = (response.get("choices") or [{}])[0].get("logprobs") or {}
    tokens, values, offsets = logprobs.get("tokens"), logprobs.get("token_logprobs"), logprobs.get("text_offset")
    if not tokens or values is None or offsets is None:
        raise RemoteError(f"{lm.name} returned no echo logprobs (llama.cpp needs --logits_all true).")
    return tokens, values, offsets


async def _logprobs_after(lm: RemoteModel, text: str, context_chars: int) -> list[float]:
    """Log-probabilities of the echoed prompt tokens of ``text`` that end after ``context_chars``."""
    tokens, values, offsets = await echo_logprobs(lm, text)
    # the response has max_tokens=1 generated token after the echoed prompt: the prompt is what fits in text
    out = []
    for tok, value, offset in zip(tokens, values, offsets):
        if offset >= len(text):
            break  # the generated token
        if offset + len(tok) > context_chars:
            if value is None:
                raise RemoteError(f"{lm.name} gave no logprob for the response token {tok!r} at offset {offset}.")
            out.append(float(value))
    return out


async def check_echo_logprobs(lm: RemoteModel, tolerance: float = 0.05) -> None:
    """Refuse engines whose echoed prompt log-probabilities are not those of the tokens they are listed at.

    The check greedily samples a few tokens with ``logprobs`` (log p of each *generated* token, which
    engines get right), then echoes prompt + those tokens and compares the echoed values of the same
    tokens.  Done once per model; an engine that fails it gets a :class:`RemoteError` on every scoring
    call instead of wrong numbers.
    """
    if lm.echo_checked is None:
        probe = "The capital of France is Paris. The capital of Italy is"
        body = {"model": lm.model, "prompt": probe, "max_tokens": 4, "temperature": 0.0, "logprobs": 1}
        sampled = (await lm.post("/completions", body))["choices"][0]
        logprobs = sampled.get("logprobs") or {}
        gen_tokens, gen_values = logprobs.get("tokens") or [], logprobs.get("token_logprobs") or []
        if not gen_tokens:
            raise RemoteError(f"{lm.name} returned no logprobs for generated tokens; cannot score texts remotely.")
        tokens, values, offsets = await echo_logprobs(lm, probe + "".join(gen_tokens))
        echoed = [(t, v) for t, v, o in zip(tokens, values, offsets) if len(probe) <= o < len(probe) + len(
            "".join(gen_tokens))]
        if [t for t, _ in echoed] != gen_tokens:
            lm.echo_checked = (f"its echoed tokens {[t for t, _ in echoed]} do not re-tokenize like its sampled "
                               f"tokens {gen_tokens}")
        else:
            worst = max(abs(float(v) - float(g)) for (_, v), g in zip(echoed, gen_values) if v is not None)
            lm.echo_checked = "" if worst <= tolerance else (
                f"its echoed log-probabilities differ from its sampled ones by up to {worst:.3f} nats "
                f"(sampled {[round(g, 3) for g in gen_values]}, echoed {[round(float(v), 3) for _, v in echoed]})")
    if lm.echo_checked:
        raise RemoteError(f"{lm.name} cannot score texts: {lm.echo_checked}. Its echo logprobs are not trusted "
                          "(llama.cpp's server is known to shift them); use a local model or vLLM as the guide.")
