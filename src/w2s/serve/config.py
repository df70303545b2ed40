"""What ``w2s serve`` serves: the models, the default method and its parameters, the queue.

A TOML file (every key optional; a model left out is the demo's default one)::

    name = "w2s"                         # the model id clients send as "model"
    method = "cbs"                       # default method of requests that name none
    sampling_preset = "stream-aligner"   # named sampling settings (w2s.SAMPLING_PRESETS) under [methods.*]

    [models.strong]                      # also: tuned, untuned, aligner, whole_aligner
    path = "path/to/large"               # a model directory or a .gguf file
    template = "{prompt}"                # a format string with {prompt}, or "chat"
    dtype = "float32"
    device = "cpu"                       # or device_map = "auto" (a large model over several GPUs)
    # or a large model behind an OpenAI-compatible engine (w2s.RemoteModel):
    # path = "http://host:8000/v1"
    # model = "NAME"                     # the engine's model name
    # tokenizer = "path/to/tokenizer"    # optional: its chat template
    # concurrency = 16                  # also timeout, max_retries, api_key_env (or a remote = {...} table)
    # engine = "vllm"                    # or "llama.cpp", "openai", "auto": the names sampling settings go by
    # extra_body = {min_p = 0}           # more engine-specific request fields

    [methods.cbs]                        # server defaults of a method's parameters
    beam_width = 2
    chunk_length = 8

    [server]
    host = "127.0.0.1"
    port = 8000
    queue_size = 64                      # requests waiting beyond this get 503
    batch_window_ms = 10                 # how long the worker gathers requests into one batch
    max_batch_size = 8                   # prompts per batch (a longer request is split)
    max_prompts = 64                     # prompts per request (400 beyond)
    max_rows = 256                       # large-model rows per prompt, W*K or n (400 beyond)
    max_body_bytes = 1048576             # request body size (413 beyond)
    request_timeout_s = 600              # a request still running after this gets 504
    header_timeout_s = 10                # a connection whose request headers take longer is closed
    body_timeout_s = 30                  # a client silent this long while sending its body gets 408
    server_api_key_env = "W2S_API_KEY"   # clients must send Authorization: Bearer <its value>
    open_endpoints = ["/health"]         # reachable without the key (also "/metrics")
    docs = true                          # serve /docs and /openapi.json
    playground = true                    # serve the playground page at /
"""

from __future__ import annotations

import importlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..backends.base import SAMPLING_PRESETS
from ..configs import build, canonical_method, params
from ..models import PER_ROLE, REMOTE_FIELDS, ModelSpec
from ..validation import check_choice, check_range


class _Methods(Mapping):
    """The server's method names -> their config class (whose flat parameters, :mod:`w2s.configs`, a
    request may set); a class is imported when first looked up (``w2s --help`` lists the names without torch)."""

    _where = {"cbs": ("..search", "ChunkBeamSearch"), "bon": ("..search", "BestOfN"),
              "sampling": ("..search", "Sampling"), "eft": ("..search", "EmulatedFineTuning"),
              "adaptive": ("..search", "AdaptiveSearch"), "pruned_bon": ("..search", "PrunedBestOfN"),
              "nudging": ("..search", "Nudging"), "tree": ("..search", "TreeSearch"),
              "stream_aligner": ("..aligner", "StreamAligner"), "aligner": ("..aligner", "Aligner")}

    def __getitem__(self, method: str):
        module, name = self._where[method]
        return getattr(importlib.import_module(module, __package__), name)

    def __contains__(self, method) -> bool:
        return method in self._where

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


SERVED_METHODS = _Methods()
ALIGNER_METHODS = ("stream_aligner", "aligner")
ROLES = ("strong", "tuned", "untuned", "aligner", "whole_aligner")
# the model each aligner method corrects with
ALIGNER_ROLE = {"stream_aligner": "aligner", "aligner": "whole_aligner"}
# parameters the server owns: all beams are never returned
SERVER_OWNED = {"return_beams"}
# keys of a [models.ROLE] table: ModelSpec's fields (role comes from the table's name); `remote` is an
# older spelling of the remote ones, as a table
MODEL_KEYS = {f.name for f in fields(ModelSpec)} - {"role"}
REMOTE_KEYS = set(REMOTE_FIELDS) - set(PER_ROLE)  # concurrency, timeout, max_retries, api_key_env, extra_body, engine
OPENABLE = ("/health", "/metrics")  # endpoints that may be reachable without the API key
SERVER_KEYS = ("host", "port", "queue_size", "batch_window_ms", "max_batch_size", "max_prompts", "max_rows",
               "max_body_bytes", "request_timeout_s", "header_timeout_s", "body_timeout_s", "server_api_key_env",
               "open_endpoints", "docs", "playground")


def method_fields(method: str) -> dict[str, object]:
    """The request-settable parameters of a method and their defaults: its config class's flat parameters."""
    return {p.name: p.default for p in params(SERVED_METHODS[method]) if p.name not in SERVER_OWNED}


def build_method(method: str, values: dict):
    """The method's config from flat parameter values (server defaults, then the request's)."""
    return build(SERVED_METHODS[method], values, where=f"method {method!r}")


@dataclass
class ServeConfig:
    """Everything ``w2s serve`` needs; see the module docstring for the file format.

    Attributes:
        name: the model id clients send as "model".
        method: default method of requests that name none.
        sampling_preset: named sampling settings (weak-to-strong, stream-aligner: w2s.SAMPLING_PRESETS)
            as the defaults of every method's sampling parameters; [methods.NAME] and the requests override
            them.
        models: role -> its :class:`w2s.models.ModelSpec` (strong, tuned, untuned, aligner, whole_aligner).
        methods: method -> server defaults of its parameters.
        host: address to listen on.
        port: port to listen on.
        queue_size: requests waiting beyond this get 503.
        batch_window_ms: how long the worker gathers requests into one batch.
        max_batch_size: prompts per batch; a request of more prompts runs as several batches.
        max_prompts: prompts per request; more is a 400.
        max_rows: large-model rows a prompt may sample at once (W*K for cbs, n for bon, W times the
            schedule's largest count for adaptive); more is a 400.
        max_body_bytes: request body size; more is a 413.
        request_timeout_s: a request still unfinished this many seconds after it arrived ends with a 504
            and its work stops (also while its prompts are checked, or it waits for a remote engine); none:
            no deadline.
        header_timeout_s: a connection that has not sent a request's line and headers this many seconds
            after it opened (or after the first byte of its next request) is closed, with no answer.
        body_timeout_s: a client that sends no part of its request body for this many seconds gets a 408
            and its connection is closed.
        server_api_key_env: environment variable holding the server's API key: clients must then send
            "Authorization: Bearer KEY" (401 otherwise); none: no key.
        open_endpoints: endpoints reachable without the API key.
        docs: serve the interactive API docs (/docs, /openapi.json).
        playground: serve the playground at / (a prompt, three methods streaming side by side, each with its
            score and tokens; its page and files need no key, its requests send the key the user types).
    """

    name: str = "w2s"
    method: str = field(default="cbs", metadata={"choices": tuple(SERVED_METHODS)})
    sampling_preset: str | None = field(default=None, metadata={"choices": tuple(SAMPLING_PRESETS)})
    models: dict[str, ModelSpec] = field(default_factory=dict)  # strong, tuned, untuned, aligner, whole_aligner
    methods: dict[str, dict] = field(default_factory=dict)  # method -> parameter defaults
    host: str = "127.0.0.1"
    port: int = 8000
    queue_size: int = 64
    batch_window_ms: float = 10.0
    max_batch_size: int = 8
    max_prompts: int = 64
    max_rows: int = 256
    max_body_bytes: int = 1 << 20
    request_timeout_s: float | None = 600.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    server_api_key_env: str | None = None
    open_endpoints: tuple[str, ...] = field(default=("/health",), metadata={"choices": OPENABLE})
    docs: bool = True
    playground: bool = True

    def __post_init__(self) -> None:
        self.method = canonical_method(self.method)
        check_choice("method", self.method, SERVED_METHODS)
        if self.sampling_preset is not None:
            check_choice("sampling_preset", self.sampling_preset, SAMPLING_PRESETS)
        for role in self.models:
            check_choice("models", role, ROLES)
        for method, values in self.methods.items():
            check_choice("methods", method, SERVED_METHODS)
            unknown = sorted(set(values) - set(method_fields(method)))
            if unknown:
                raise ValueError(f"[methods.{method}] has unknown parameters {unknown}; "
                                 f"allowed: {sorted(method_fields(method))}.")
            build_method(method, {**self.preset_values(method), **values})  # valid (each error names the parameter)
        check_range("port", self.port, low=0, high=65535, integer=True)
        check_range("queue_size", self.queue_size, low=1, integer=True)
        check_range("batch_window_ms", self.batch_window_ms, low=0.0)
        check_range("max_batch_size", self.max_batch_size, low=1, integer=True)
        check_range("max_prompts", self.max_prompts, low=1, integer=True)
        check_range("max_rows", self.max_rows, low=1, integer=True)
        check_range("max_body_bytes", self.max_body_bytes, low=1, integer=True)
        check_range("request_timeout_s", self.request_timeout_s, low=0.0, low_open=True, allow_none=True)
        check_range("header_timeout_s", self.header_timeout_s, low=0.0, low_open=True)
        check_range("body_timeout_s", self.body_timeout_s, low=0.0, low_open=True)
        key = self.server_api_key_env
        if key is not None and not (isinstance(key, str) and key):
            raise ValueError(f"server_api_key_env must name an environment variable, got {key!r}.")
        self.open_endpoints = tuple(self.open_endpoints)
        for endpoint in self.open_endpoints:
            check_choice("open_endpoints", endpoint, OPENABLE)

    def preset_values(self, method: str) -> dict:
        """The :attr:`sampling_preset`'s values of ``method``'s parameters (none without a preset)."""
        preset = SAMPLING_PRESETS.get(self.sampling_preset, {}) if self.sampling_preset else {}
        return {k: v for k, v in preset.items() if k in method_fields(method)}

    def method_defaults(self, method: str) -> dict:
        """The server's defaults of ``method``'s parameters: the preset's, then ``[methods.NAME]``'s."""
        return {**self.preset_values(method), **self.methods.get(method, {})}


def _table(where: str, value, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a table, got {value!r}.")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}.")
    return value


def parse_config(data: dict, source: str = "config") -> ServeConfig:
    """A :class:`ServeConfig` from parsed TOML; unknown keys are errors that name them."""
    _table(source, data, {"name", "method", "sampling_preset", "models", "methods", "server"})
    models = {}
    for role, spec in _table(f"{source} [models]", data.get("models", {}), set(ROLES)).items():
        spec = dict(_table(f"{source} [models.{role}]", spec, MODEL_KEYS | {"remote"}))
        spec.update(_table(f"{source} [models.{role}.remote]", spec.pop("remote", {}), REMOTE_KEYS))
        if isinstance(spec.get("extra_body"), dict):  # a TOML table, as ModelSpec's JSON text
            spec["extra_body"] = json.dumps(spec["extra_body"])
        models[role] = ModelSpec(**spec, role=role)
    server = _table(f"{source} [server]", data.get("server", {}), set(SERVER_KEYS))
    tables = _table(f"{source} [methods]", data.get("methods", {}), set(SERVED_METHODS))
    methods = {m: dict(_table(f"{source} [methods.{m}]", values, set(method_fields(m)))) for m, values in tables.items()}
    return ServeConfig(name=data.get("name", "w2s"), method=data.get("method", "cbs"),
                       sampling_preset=data.get("sampling_preset"), models=models, methods=methods, **server)


def load_config(path: str | Path) -> ServeConfig:
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"--config {path}: not valid TOML ({err}).") from None
    return parse_config(data, source=str(path))
