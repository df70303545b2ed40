"""The OpenAI-compatible app: request schemas, their conversion to method parameters, thin routes.

Three layers (as vLLM's ``entrypoints/openai``):

1. Request models in OpenAI's field order; w2s's own parameters in one marked block, ``"w2s": {...}``,
   whose field names are those of the method's config class (:func:`w2s.serve.config.method_fields`).
2. :func:`resolve_method`: one conversion with one precedence, request -> server config -> method
   default.  OpenAI's fields map onto the method's: ``max_tokens`` -> ``max_new_tokens``,
   ``temperature``, ``top_p``, ``stop``, ``frequency_penalty``, ``presence_penalty`` (and vLLM's
   ``repetition_penalty``, ``no_repeat_ngram_size``); ``seed`` seeds the request's prompts.
3. Routes that submit a :class:`w2s.serve.batching.Job` and relay its events (JSON or server-sent events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..backends.base import ERROR_KINDS, ContextLengthError, Conversation, RemoteError, context_error, error_kind
from ..configs import METHOD_ALIASES, canonical_method
from ..jsonl import finite
from ..models import Models
from ..scoring import guide_context_error
from ..search.eft import check_same_vocabulary
from ..validation import check_choice
from .batching import Batcher, DeadlineExceeded, Job, Output, QueueFull
from .config import ALIGNER_METHODS, ALIGNER_ROLE, SERVED_METHODS, ServeConfig, build_method, method_fields
from .guard import Guard
from .metrics import Metrics, MetricsMiddleware

log = logging.getLogger("w2s.serve")
MAX_SEED = 2**63 - 1  # OpenAI's seed is a signed 64-bit integer; w2s takes the non-negative ones
RETRY_AFTER_S = 1  # what a 503 tells the client to wait
PLAYGROUND = Path(__file__).with_name("playground")  # the page at / and its files, served from the package
PLAYGROUND_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
                    "favicon.svg": "image/svg+xml"}
# the playground loads nothing from elsewhere (no CDN) and runs no inline script
PLAYGROUND_HEADERS = {"Content-Security-Policy": "default-src 'self'", "X-Content-Type-Options": "nosniff"}

try:  # what a chat template's raise_exception() raises (e.g. "roles must alternate user/assistant")
    from jinja2.exceptions import TemplateError
except ImportError:  # pragma: no cover - jinja2 comes with transformers' chat templates
    class TemplateError(Exception):
        pass

# OpenAI request field -> the method parameter it sets (repetition_penalty and no_repeat_ngram_size as vLLM
# takes them, top-level extra fields)
OPENAI_FIELDS = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens",
                 "temperature": "temperature", "top_p": "top_p", "stop": "stop",
                 "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
                 "repetition_penalty": "repetition_penalty", "no_repeat_ngram_size": "no_repeat_ngram_size"}


class APIError(Exception):
    """An error in OpenAI's schema: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or ({"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# -- 1. request schemas ---------------------------------------------------------------------------

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class _Request(BaseModel):
    """The fields both endpoints take."""

    # an unsupported OpenAI field is a 400 that names it; no coercion: "10" is not an integer, true not a number
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    max_tokens: int | None = None
    temperature: float | None = Field(None, allow_inf_nan=False)
    top_p: float | None = Field(None, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, allow_inf_nan=False)
    presence_penalty: float | None = Field(None, allow_inf_nan=False)
    repetition_penalty: float | None = Field(None, allow_inf_nan=False)  # vLLM's extra field
    no_repeat_ngram_size: int | None = None  # as vLLM would take it (transformers' meaning)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    w2s: dict[str, Any] | None = None  # extension block: {"method": ..., <the method's parameters>}


class CompletionRequest(_Request):
    prompt: str | list[str]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None


# -- 2. conversion to method parameters -------------------------------------------------------------

def _param_of(message: str, names) -> str | None:
    """The parameter a library ValueError names (they start with it: 'top_p must be in (0, 1], ...')."""
    first = message.split(" ", 1)[0]
    return first if first in names else None


def resolve_method(body: _Request, config: ServeConfig) -> tuple[str, dict]:
    """The method and its parameters: request (``w2s`` block, then mapped OpenAI fields) -> server
    config (``[methods.NAME]``) -> the method's own default.  Raises :class:`APIError` (400)."""
    block = dict(body.w2s or {})
    method = canonical_method(block.pop("method", config.method))
    try:
        check_choice("w2s.method", method, SERVED_METHODS)
    except ValueError as err:
        raise APIError(400, str(err), param="w2s.method") from None
    allowed = method_fields(method)
    unknown = sorted(set(block) - set(allowed))
    if unknown:
        raise APIError(400, f"unknown w2s parameter(s) {unknown} for method {method!r}; its parameters are "
                            f"{sorted(allowed)}.", param=f"w2s.{unknown[0]}")
    if body.n != 1:
        raise APIError(400, f"n must be 1 (one answer per prompt), got {body.n}; for Best-of-N sampling use "
                            '"w2s": {"method": "bon", "n": N}.', param="n")
    mapped = {}
    for name, target in OPENAI_FIELDS.items():
        value = getattr(body, name, None)
        if value is None:
            continue
        if target not in allowed:
            raise APIError(400, f"{name} is not used by method {method!r} (its parameters: {sorted(allowed)}).",
                           param=name)
        if target in block and block[target] != value:
            raise APIError(400, f"{name}={value!r} contradicts w2s.{target}={block[target]!r}; give one.",
                           param=name)
        mapped[target] = value
    params = {**config.method_defaults(method), **mapped, **block}
    if isinstance(params.get("stop"), (str, list)):
        params["stop"] = (params["stop"],) if isinstance(params["stop"], str) else tuple(params["stop"])
    try:
        build_method(method, params)  # the config dataclass validates every value
    except (ValueError, TypeError) as err:
        raise APIError(400, str(err), param=_param_of(str(err), allowed)) from None
    return method, params


def chat_conversation(messages: list[ChatMessage]) -> Conversation:
    """A chat request's messages as one prompt, a :class:`w2s.Conversation`: a model with the ``"chat"``
    template renders the turns themselves (roles and system prompt kept), a format-string template
    sees the plain transcript (``System: ...`` / ``User: ...`` / ``Assistant: ...`` lines; a lone user
    message is just its text).

    A message's content is its text (text parts joined); empty content is a 400.  ``developer`` is given
    as the ``system`` role (most chat templates know no other).  The last message must not be the
    assistant's: the reply is a new assistant turn, and continuing a partial one is not supported (400).
    """
    if not messages:
        raise APIError(400, "messages must not be empty.", param="messages")
    turns = []
    for i, m in enumerate(messages):
        if not m.text:
            raise APIError(400, f"messages[{i}].content must not be empty.", param=f"messages.{i}.content")
        turns.append({"role": "system" if m.role == "developer" else m.role, "content": m.text})
    if turns[-1]["role"] == "assistant":
        raise APIError(400, f"messages must not end with an assistant message (messages[{len(turns) - 1}]): the "
                            "answer is a new assistant turn, and continuing a partial one is not supported; end with "
                            "a user message, or send the rendered text to /v1/completions.", param="messages")
    return Conversation(turns)


def chat_template(model, prompt: Conversation) -> str:
    """The large model's template for a chat request: ``"chat"`` (its chat template, over the turns),
    else the plain fallback over the transcript."""
    if getattr(getattr(model, "tokenizer", None), "chat_template", None):
        return "chat"
    if len(prompt.messages) == 1 and prompt.messages[0]["role"] == "user":
        return "User: {prompt}\nAssistant:"
    return "{prompt}\nAssistant:"


# -- 3. the app -----------------------------------------------------------------------------------

class Server:
    """The models, the worker and the metrics behind one app."""

    def __init__(self, config: ServeConfig, models: Models):
        bound = getattr(models.strong.model, "max_tokens_per_forward", None)
        if bound is not None and config.max_batch_size * config.max_rows > bound:
            raise ValueError(f"max_batch_size x max_rows = {config.max_batch_size} x {config.max_rows} rows may run in "
                             f"one forward of the large model, more than its max_tokens_per_forward={bound}; lower "
                             f"them or raise it.")
        self.config, self.models = config, models
        self.metrics = Metrics()
        self.batcher = Batcher(models, queue_size=config.queue_size, batch_window=config.batch_window_ms / 1000,
                               max_batch_size=config.max_batch_size, metrics=self.metrics)
        self.checks = ThreadPoolExecutor(1, thread_name_prefix="w2s-serve-check")  # tokenizing: off the loop
        self.checking = 0  # requests in or waiting for the check stage (counted on the event loop)
        self._eft_error: str | None | bool = False  # False: not checked yet
        # what clients must not see (paths of the models, engine URLs), replaced by the role's name
        hidden = {}
        for role, loaded in models.items():
            model = loaded.model
            for value in (loaded.spec.path, getattr(model, "name", None), getattr(model, "base_url", None)):
                if isinstance(value, str) and ("/" in value or "\\" in value):
                    hidden[value] = f"<{role}>"
        self._hidden = sorted(hidden.items(), key=lambda kv: -len(kv[0]))  # longest first: a path inside a URL

    def hide(self, message: str) -> str:
        """``message`` without the server's model paths and engine URLs."""
        for secret, role in self._hidden:
            message = message.replace(secret, role)
        return re.sub(r"https?://\S+", "<engine>", message)

    def methods(self) -> list[str]:
        return [m for m in SERVED_METHODS if self.unavailable(m) is None]

    def unavailable(self, method: str) -> str | None:
        """Why a method cannot run with these models, or None."""
        m = self.models
        if method in ALIGNER_METHODS and m.get(ALIGNER_ROLE[method]) is None:
            role = ALIGNER_ROLE[method]
            return (f"method {method!r} needs an aligner model and this server has none; start it with "
                    f"--{role.replace('_', '-')} PATH or [models.{role}] in the config file.")
        if method == "eft":
            if self._eft_error is False:
                try:
                    check_same_vocabulary(m.strong.model, tuned=m.tuned.model, untuned=m.untuned.model)
                    self._eft_error = None
                except (ValueError, AttributeError) as err:
                    self._eft_error = str(err) if isinstance(err, ValueError) else \
                        "EFT needs local models that share one vocabulary."
            return self._eft_error
        return None

    def prepare(self, body: _Request, prompts: list[str], template: str, prompt_param: str):
        """Check a request before it is queued: method, parameters, limits, seed, model, context length
        of every model the method uses.  Raises :class:`APIError`."""
        if body.model != self.config.name:
            raise APIError(404, f"model {body.model!r} does not exist; this server serves {self.config.name!r} "
                                "(see GET /v1/models).", param="model", code="model_not_found")
        method, params = resolve_method(body, self.config)
        why = self.unavailable(method)
        if why:
            raise APIError(400, why, param="w2s.method")
        if body.seed is not None and not 0 <= body.seed <= MAX_SEED:
            raise APIError(400, f"seed must be in [0, {MAX_SEED}], got {body.seed}.", param="seed")
        if not prompts:
            raise APIError(400, f"{prompt_param} must not be empty.", param=prompt_param)
        if len(prompts) > self.config.max_prompts:
            raise APIError(400, f"{prompt_param} has {len(prompts)} prompts; this server takes at most "
                                f"{self.config.max_prompts} per request.", param=prompt_param)
        built = build_method(method, params)
        self._check_engine(built, method)
        if hasattr(built, "check_rows"):
            try:
                built.check_rows(self.config.max_rows, "this server's max_rows")
            except ValueError as err:
                raise APIError(400, str(err), param="w2s." + {"n": "n", "children": "children"}.get(
                    built.rows_formula, "beam_width")) from None
        prompt_tokens = []
        for i, prompt in enumerate(prompts):
            where = prompt_param if len(prompts) == 1 or prompt_param == "messages" else f"{prompt_param}.{i}"
            try:
                prompt.encode("utf-8")
                why = self._context_error(method, built, prompt, template)
                prompt_tokens.append(self._count(prompt, template))
            except UnicodeEncodeError as err:
                raise APIError(400, f"{where} is not valid Unicode text ({err.reason} at character {err.start}).",
                               param=where) from None
            except (ValueError, TemplateError) as err:
                raise APIError(400, self.hide(_template_message(err, "the large model")), param=where) from None
            if why:
                raise APIError(400, why, param=where, code="context_length_exceeded")
        return method, params, prompt_tokens

    def _check_engine(self, built, method: str) -> None:
        """A remote large model's engine must take the request's sampling settings (a repetition control it
        lacks is a 400 naming it); with engine "auto" this may ask the engine which it is (once)."""
        strong, sampling = self.models.strong.model, getattr(built, "sampling", None)
        if sampling is None or not hasattr(strong, "sampling_fields"):
            return
        try:
            strong.sampling_fields(sampling)
        except ValueError as err:
            raise APIError(400, self.hide(str(err)), param=_param_of(str(err), method_fields(method))) from None
        except RemoteError as err:
            raise error_of(self, err) from None

    def _count(self, prompt: str, template: str) -> int:
        """The prompt's tokens (0 for a remote model without a local tokenizer: the engine checks)."""
        strong = self.models.strong.model
        text = strong.render(template, prompt)
        return len(strong.encode_prompt(text, template)) if hasattr(strong, "encode_prompt") else 0

    def _context_error(self, method: str, built, prompt: str, template: str) -> str | None:
        """Why ``prompt`` does not fit a model the method uses, with the method's whole token budget; also
        renders it with every model's template (a chat template may refuse the turns)."""
        m = self.models
        if method in ALIGNER_METHODS:
            aligner = m[ALIGNER_ROLE[method]]
            return built.context_error(m.strong.model, aligner.model, prompt, upstream_template=template,
                                       aligner_template=aligner.template)
        if method == "nudging":
            return built.context_error(m.strong.model, m.tuned.model, prompt, base_template=template,
                                       nudger_template=m.tuned.template)
        why = context_error(m.strong.model, template, prompt, built.max_new_tokens, who="the large model")
        guided = method == "eft" or built.max_rows > 1
        for role in ("tuned", "untuned") if guided else ():
            guide = m[role]
            try:
                why = why or guide_context_error(guide.model, guide.template, prompt, built.max_new_tokens, role)
            except (ValueError, TemplateError) as err:
                raise ValueError(_template_message(err, f"the {role} guide")) from None
        return why

    async def engine_state(self) -> str | None:
        """None when the large model is local or its engine answers; else why not."""
        base_url = getattr(self.models.strong.model, "base_url", None)
        if base_url is None:
            return None
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                response = await client.get(base_url + "/models", headers=self.models.strong.model.auth_headers())
            return None if response.status_code == 200 else f"the engine answers HTTP {response.status_code}"
        except httpx.HTTPError as err:
            log.warning("engine health check failed: %r", err)
            return "the engine does not answer"


def create_app(config: ServeConfig, models: Models) -> FastAPI:
    """The app over the loaded models (see :func:`w2s.serve.load_served_models`)."""
    server = Server(config, models)
    api_key = None
    if config.server_api_key_env is not None:
        api_key = os.environ.get(config.server_api_key_env, "")
        if not api_key:
            raise ValueError(f"server_api_key_env {config.server_api_key_env!r}: that environment variable is unset "
                             "or empty.")
        if not (api_key.isascii() and api_key.isprintable()) or api_key != api_key.strip():
            raise ValueError(f"server_api_key_env {config.server_api_key_env!r}: the key holds characters a client "
                             "cannot send in an HTTP header; use printable ASCII with no space at either end.")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.batcher.close()
        server.checks.shutdown(wait=False)

    docs = dict(docs_url="/docs", openapi_url="/openapi.json") if config.docs else \
        dict(docs_url=None, redoc_url=None, openapi_url=None)
    app = FastAPI(title="w2s", description="weak-to-strong alignment at generation time, OpenAI-compatible",
                  lifespan=lifespan, **docs)
    app.state.server = server
    page = ("/", *(f"/playground/{name}" for name in PLAYGROUND_FILES)) if config.playground else ()
    app.add_middleware(Guard, api_key=api_key, open_endpoints=config.open_endpoints + page,
                       max_body_bytes=config.max_body_bytes, error=lambda e: APIError(*e).response(),
                       body_timeout=config.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=server.metrics)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        codes = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}
        message = {400: "the body could not be read: it must be JSON in UTF-8.", 404: f"no route {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}
        return APIError(err.status_code, message.get(err.status_code, str(err.detail)),
                        code=codes.get(err.status_code), headers=getattr(err, "headers", None)).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        if first.get("type") == "json_invalid":
            return APIError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'malformed')}.",
                            code="invalid_json").response()
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg", "invalid body")
        if first.get("type") == "extra_forbidden":
            message = f"{param} is not supported by this server."
        return APIError(400, message, param=param).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return APIError(500, "internal error; the server's log has the details.", type="server_error").response()

    @app.get("/health")
    async def health():
        alive, engine = server.batcher.alive, await server.engine_state()
        status = "worker stopped" if not alive else (engine or "ok")
        return JSONResponse({"status": status, "model": config.name,
                             "queue_depth": server.batcher.depth + server.checking},
                            status_code=200 if alive and engine is None else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if config.playground:
        @app.get("/", include_in_schema=False)
        async def playground():
            return HTMLResponse((PLAYGROUND / "index.html").read_text(encoding="utf-8"), headers=PLAYGROUND_HEADERS)

        @app.get("/playground/{name}", include_in_schema=False)
        async def playground_file(name: str):
            if name not in PLAYGROUND_FILES:
                raise StarletteHTTPException(404)
            return Response((PLAYGROUND / name).read_bytes(), media_type=PLAYGROUND_FILES[name],
                            headers=PLAYGROUND_HEADERS)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{
            "id": config.name, "object": "model", "created": int(time.time()), "owned_by": "w2s",
            "w2s": {"default_method": config.method, "methods": server.methods(),
                    "parameters": {m: sorted(method_fields(m)) for m in server.methods()}},
        }]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        return await _generate(request, body, prompts, models.strong.template, "prompt", chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise APIError(400, "give max_tokens or max_completion_tokens, not both.", param="max_tokens")
        prompt = chat_conversation(body.messages)
        template = chat_template(models.strong.model, prompt)
        return await _generate(request, body, [prompt], template, "messages", chat=True)

    async def _generate(request: Request, body, prompts: list[str], template: str, prompt_param: str, chat: bool):
        named = (body.w2s or {}).get("method", config.method)  # any JSON value may come here: checked in prepare
        named = METHOD_ALIASES.get(named, named) if isinstance(named, str) else ""
        request.scope["w2s_method"] = named if named in SERVED_METHODS else ""  # the metrics' label
        loop, events, arrived = asyncio.get_running_loop(), asyncio.Queue(), time.perf_counter()
        # the check stage (tokenizing, context checks) shares the queue's bound and the request's deadline
        if server.checking + server.batcher.depth >= config.queue_size:
            raise _queue_full(QueueFull.of(config.queue_size))
        server.checking += 1
        try:
            checked = loop.run_in_executor(server.checks, server.prepare, body, prompts, template, prompt_param)
            method, params, prompt_tokens = await asyncio.wait_for(checked, config.request_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(504, f"the request took longer than the server's deadline of {config.request_timeout_s:g} "
                                "s before it could be queued; retry later.", code="timeout", type="timeout") from None
        finally:
            server.checking -= 1

        def emit(kind, index, payload):  # called from the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, index, payload))
            except RuntimeError:  # the loop has closed
                pass

        seed = body.seed if body.seed is not None else secrets.randbits(31)
        job = Job(prompts, method, params, seed, template, body.stream, emit, deadline_s=config.request_timeout_s,
                  enqueued=arrived)
        try:
            server.batcher.submit(job)
        except QueueFull as err:
            raise _queue_full(err) from None
        reply = _Reply(body, config.name, method, chat, prompt_tokens)
        if body.stream:
            return StreamingResponse(_stream(server, job, events, reply, request.scope), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        outputs: dict[int, Output] = {}
        while len(outputs) < len(prompts):
            try:
                kind, index, payload = await asyncio.wait_for(events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    server.batcher.cancel(job)
                    return Response(status_code=499)
                continue
            if kind == "error":
                raise error_of(server, payload)
            if kind == "done":
                outputs[index] = payload
        return JSONResponse(reply.whole([outputs[i] for i in range(len(prompts))]))

    return app


def _template_message(err: Exception, who: str) -> str:
    return f"{who}'s chat template refuses these messages: {err}" if isinstance(err, TemplateError) else str(err)


def _queue_full(err: QueueFull) -> APIError:
    return APIError(503, str(err), code="queue_full", type="server_overloaded")


def error_of(server: Server, err: Exception) -> APIError:
    """The client's view of a failure in the worker, by its kind (:data:`ERROR_KINDS`): no paths, URLs or
    exception types (the log has them)."""
    if isinstance(err, DeadlineExceeded):
        return APIError(504, str(err), code="timeout", type="timeout")
    if isinstance(err, (ValueError, TemplateError)) and not isinstance(err, ContextLengthError):
        return APIError(400, server.hide(str(err)))
    kind = error_kind(err)
    code, status = ERROR_KINDS[kind]
    if kind in ("engine", "timeout"):  # the large model's or the Stream Aligner's upstream engine
        why = ("did not answer in time" if kind == "timeout" else
               f"failed ({f'it answered HTTP {err.status}' if err.status else 'it could not be reached'})")
        return APIError(status, f"the large model's engine {why}; retry later.", code=code, type="upstream_error")
    if kind == "context":
        return APIError(status, server.hide(str(err)), code=code)
    if kind == "cancelled":  # nobody is left to read it; said for the log and the metrics
        return APIError(status, "the request was cancelled.", code=code, type="cancelled")
    return APIError(status, "generation failed; the server's log has the details.", code=code, type="server_error")


class _Reply:
    """OpenAI's response and chunk formats for one request."""

    def __init__(self, body, model: str, method: str, chat: bool, prompt_tokens: list[int]):
        self.chat, self.model, self.method, self.prompt_tokens = chat, model, method, prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.include_usage = body.stream_options is not None and body.stream_options.include_usage

    def envelope(self, choices: list[dict], chunk: bool) -> dict:
        """The response object (or, with ``chunk``, the stream chunk) around ``choices``."""
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    @staticmethod
    def finish_reason(output: Output) -> str:
        return "stop" if output.finished else "length"

    def usage(self, outputs: list[Output]) -> dict:
        completion = sum(o.num_tokens for o in outputs)
        prompt = sum(self.prompt_tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @staticmethod
    def costs(output: Output) -> dict:
        """A choice's ``w2s`` block: its score and what it cost in each model's tokens."""
        return {"score": finite(output.score), "sampled_tokens": output.sampled_tokens,
                "small_tokens": output.small_tokens}

    def whole(self, outputs: list[Output]) -> dict:
        choices = []
        for i, o in enumerate(outputs):
            choice = {"index": i, "finish_reason": self.finish_reason(o), "w2s": self.costs(o)}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": o.text}
            else:
                choice.update(text=o.text, logprobs=None)
            choices.append(choice)
        out = self.envelope(choices, chunk=False)
        out.update(usage=self.usage(outputs), w2s={"method": self.method})
        return out

    def chunk(self, index: int, text: str | None, finished: Output | None = None, role: bool = False) -> dict:
        """A stream chunk: ``text``, the role (chat's first chunk), or the last of a choice (``finished``: its
        finish reason and ``w2s`` block)."""
        finish = None if finished is None else self.finish_reason(finished)
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        if finished is not None:
            choice["w2s"] = self.costs(finished)
        return self.envelope([choice], chunk=True)


def _sse(data) -> str:
    return f"data: {json.dumps(data) if not isinstance(data, str) else data}\n\n"


async def _stream(server: Server, job: Job, events: asyncio.Queue, reply: _Reply, scope: dict):
    """Server-sent events: text as soon as it is final, a last chunk per prompt, then ``[DONE]``.
    If the client goes away the generator is cancelled, and so is the job.  An error event is counted
    by the metrics with its status (``scope["w2s_status"]``), not as the stream's 200."""
    outputs: dict[int, Output] = {}
    done, first = False, True
    try:
        if reply.chat:
            for i in range(len(job.prompts)):
                yield _sse(reply.chunk(i, None, role=True))
        while len(outputs) < len(job.prompts):
            kind, index, payload = await events.get()
            if kind == "error":
                err = error_of(server, payload)
                scope["w2s_status"] = err.status
                yield _sse(err.body())
                break
            if kind == "delta":
                if first:
                    server.metrics.first_chunk.labels(method=job.method).observe(time.perf_counter() - job.enqueued)
                    first = False
                yield _sse(reply.chunk(index, payload))
            elif kind == "done":
                outputs[index] = payload
                yield _sse(reply.chunk(index, None, finished=payload))
        if reply.include_usage and len(outputs) == len(job.prompts):
            final = reply.envelope([], chunk=True)
            final["usage"] = reply.usage(list(outputs.values()))
            yield _sse(final)
        yield _sse("[DONE]")
        done = True
    finally:
        if not done:
            server.batcher.cancel(job)
