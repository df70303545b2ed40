"""The OpenAI-compatible app: request schemas, their conversion to method parameters, thin routes.

Three layers (as vLLM's ``entrypoints/openai``):

1. Request models in OpenAI's field order; w2s's own parameters in one marked block, ``"w2s": {...}``,
   whose field names are those of the method's config class (:func:`w2s.serve.config.method_fields`).
2. :func:`resolve_method`: one conversion with one precedence, request -> server config -> method
   default.  OpenAI's fields map onto the method's: ``max_tokens`` -> ``max_new_tokens``,
   ``temperature``, ``top_p``, ``stop``; ``seed`` seeds the request's prompts.
3. Routes that submit a :class:`w2s.serve.batching.Job` and relay its events (JSON or server-sent events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from ..backends.base import Conversation
from ..search.eft import check_same_vocabulary
from ..validation import check_choice
from .batching import Batcher, Job, Output, QueueFull
from ..models import Models
from .config import ALIGNER_METHODS, ALIGNER_ROLE, SERVED_METHODS, ServeConfig, build_method, method_fields
from .metrics import Metrics, MetricsMiddleware

try:  # what a chat template's raise_exception() raises (e.g. "roles must alternate user/assistant")
    from jinja2.exceptions import TemplateError
except ImportError:  # pragma: no cover - jinja2 comes with transformers' chat templates
    class TemplateError(Exception):
        pass

# OpenAI request field -> the method parameter it sets
OPENAI_FIELDS = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens",
                 "temperature": "temperature", "top_p": "top_p", "stop": "stop"}


class APIError(Exception):
    """An error in OpenAI's schema: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


# -- 1. request schemas ---------------------------------------------------------------------------

class _Request(BaseModel):
    """The fields both endpoints take."""

    model_config = ConfigDict(extra="forbid")  # an unsupported OpenAI field is a 400 that names it
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    w2s: dict[str, Any] | None = None  # extension block: {"method": ..., <the method's parameters>}


class CompletionRequest(_Request):
    prompt: str | list[str]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
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
    method = block.pop("method", config.method)
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
    params = {**config.methods.get(method, {}), **mapped, **block}
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

def _context_length(model) -> int | None:
    config = getattr(getattr(model, "model", None), "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


class Server:
    """The models, the worker and the metrics behind one app."""

    def __init__(self, config: ServeConfig, models: Models):
        self.config, self.models = config, models
        self.metrics = Metrics()
        self.batcher = Batcher(models, queue_size=config.queue_size, batch_window=config.batch_window_ms / 1000,
                               max_batch_size=config.max_batch_size, metrics=self.metrics)
        self.context_length = _context_length(models.strong.model)
        self._eft_error: str | None | bool = False  # False: not checked yet

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
        """Check a request before it is queued: method, parameters, model, context length."""
        if body.model != self.config.name:
            raise APIError(404, f"model {body.model!r} does not exist; this server serves {self.config.name!r} "
                                "(see GET /v1/models).", param="model", code="model_not_found")
        method, params = resolve_method(body, self.config)
        why = self.unavailable(method)
        if why:
            raise APIError(400, why, param="w2s.method")
        m = self.models
        built = build_method(method, params)
        budget = getattr(built, "max_new_tokens", None) or built.max_sentence_tokens
        if not prompts:
            raise APIError(400, f"{prompt_param} must not be empty.", param=prompt_param)
        prompt_tokens, strong = [], m.strong.model
        for prompt in prompts:
            try:
                text = strong.render(template, prompt)
                # a remote model without a local tokenizer cannot count: the engine checks the context
                ids = strong.encode_prompt(text, template) if hasattr(strong, "encode_prompt") else []
            except (ValueError, TemplateError) as err:
                raise APIError(400, _template_message(err, "the large model"), param=prompt_param) from None
            if self.context_length is not None and len(ids) + budget > self.context_length:
                raise APIError(400, f"this model's context is {self.context_length} tokens; the prompt has "
                                    f"{len(ids)} and up to {budget} new tokens were asked for; shorten the prompt "
                                    "or lower max_tokens.", param=prompt_param, code="context_length_exceeded")
            prompt_tokens.append(len(ids))
        guided = method == "eft" or (method not in ALIGNER_METHODS and built.samples_per_step > 1)
        for role in ("tuned", "untuned") if guided else ():  # a guide's chat template may refuse the turns
            if m[role].template == "chat":
                for prompt in prompts:
                    try:
                        m[role].model.render("chat", prompt)
                    except (ValueError, TemplateError) as err:
                        raise APIError(400, _template_message(err, f"the {role} guide"), param=prompt_param) from None
        return method, params, prompt_tokens


def create_app(config: ServeConfig, models: Models) -> FastAPI:
    """The app over the loaded models (see :func:`w2s.serve.load_served_models`)."""
    server = Server(config, models)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.batcher.close()

    app = FastAPI(title="w2s", description="weak-to-strong alignment at generation time, OpenAI-compatible",
                  lifespan=lifespan)
    app.state.server = server
    app.add_middleware(MetricsMiddleware, metrics=server.metrics)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg", "invalid body")
        if first.get("type") == "extra_forbidden":
            message = f"{param} is not supported by this server."
        return APIError(400, message, param=param).response()

    @app.get("/health")
    async def health():
        alive = server.batcher.alive
        return JSONResponse({"status": "ok" if alive else "worker stopped", "model": config.name,
                             "queue_depth": server.batcher.depth}, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{
            "id": config.name, "object": "model", "created": int(time.time()), "owned_by": "w2s",
            "w2s": {"default_method": config.method, "methods": server.methods(),
                    "strong": models.strong.name},
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
        named = (body.w2s or {}).get("method", config.method)
        request.scope["w2s_method"] = named if named in SERVED_METHODS else ""  # the metrics' label
        method, params, prompt_tokens = server.prepare(body, prompts, template, prompt_param)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(kind, index, payload):  # called from the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, index, payload))
            except RuntimeError:  # the loop has closed
                pass

        seed = body.seed if body.seed is not None else secrets.randbits(31)
        job = Job(prompts, method, params, seed, template, body.stream, emit)
        try:
            server.batcher.submit(job)
        except QueueFull as err:
            raise APIError(503, str(err), code="queue_full", type="server_overloaded") from None
        reply = _Reply(body, config.name, method, chat, prompt_tokens)
        if body.stream:
            return StreamingResponse(_stream(server, job, events, reply), media_type="text/event-stream",
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
                raise _error_of(payload)
            if kind == "done":
                outputs[index] = payload
        return JSONResponse(reply.whole([outputs[i] for i in range(len(prompts))]))

    return app


def _template_message(err: Exception, who: str) -> str:
    return f"{who}'s chat template refuses these messages: {err}" if isinstance(err, TemplateError) else str(err)


def _error_of(err: Exception) -> APIError:
    if isinstance(err, (ValueError, TemplateError)):
        return APIError(400, str(err))
    return APIError(500, f"generation failed: {type(err).__name__}: {err}", type="server_error")


class _Reply:
    """OpenAI's response and chunk formats for one request."""

    def __init__(self, body, model: str, method: str, chat: bool, prompt_tokens: list[int]):
        self.chat, self.model, self.method, self.prompt_tokens = chat, model, method, prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.include_usage = bool((body.stream_options or {}).get("include_usage"))

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

    def whole(self, outputs: list[Output]) -> dict:
        choices = []
        for i, o in enumerate(outputs):
            choice = {"index": i, "finish_reason": self.finish_reason(o), "w2s": {"score": o.score}}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": o.text}
            else:
                choice.update(text=o.text, logprobs=None)
            choices.append(choice)
        out = self.envelope(choices, chunk=False)
        out.update(usage=self.usage(outputs), w2s={"method": self.method})
        return out

    def chunk(self, index: int, text: str | None, finish: str | None = None, role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return self.envelope([choice], chunk=True)


def _sse(data) -> str:
    return f"data: {json.dumps(data) if not isinstance(data, str) else data}\n\n"


async def _stream(server: Server, job: Job, events: asyncio.Queue, reply: _Reply):
    """Server-sent events: text as soon as it is final, a last chunk per prompt, then ``[DONE]``.
    If the client goes away the generator is cancelled, and so is the job."""
    outputs: dict[int, Output] = {}
    done, first = False, True
    try:
        if reply.chat:
            for i in range(len(job.prompts)):
                yield _sse(reply.chunk(i, None, role=True))
        while len(outputs) < len(job.prompts):
            kind, index, payload = await events.get()
            if kind == "error":
                err = _error_of(payload)
                yield _sse({"error": {"message": err.message, "type": err.type, "param": err.param,
                                      "code": err.code}})
                break
            if kind == "delta":
                if first:
                    server.metrics.first_chunk.labels(method=job.method).observe(time.perf_counter() - job.enqueued)
                    first = False
                yield _sse(reply.chunk(index, payload))
            elif kind == "done":
                outputs[index] = payload
                yield _sse(reply.chunk(index, None, finish=reply.finish_reason(payload)))
        if reply.include_usage and len(outputs) == len(job.prompts):
            final = reply.envelope([], chunk=True)
            final["usage"] = reply.usage(list(outputs.values()))
            yield _sse(final)
        yield _sse("[DONE]")
        done = True
    finally:
        if not done:
            server.batcher.cancel(job)
