"""What ``w2s serve`` serves: the models, the default method and its parameters, the queue.

A TOML file (every key optional; a model left out is the demo's default one)::

    name = "w2s"                         # the model id clients send as "model"
    method = "cbs"                       # default method of requests that name none

    [models.strong]                      # also: tuned, untuned, aligner, whole_aligner
    path = "path/to/large"               # a model directory or a .gguf file
    template = "{prompt}"                # a format string with {prompt}, or "chat"
    dtype = "float32"
    device = "cpu"
    # or a large model behind an OpenAI-compatible engine (w2s.RemoteModel):
    # path = "http://host:8000/v1"
    # model = "NAME"                     # the engine's model name
    # tokenizer = "path/to/tokenizer"    # optional: its chat template
    # remote = {concurrency = 16, timeout = 60.0}

    [methods.cbs]                        # server defaults of a method's parameters
    beam_width = 2
    chunk_length = 8

    [server]
    host = "127.0.0.1"
    port = 8000
    queue_size = 64                      # requests waiting beyond this get 503
    batch_window_ms = 10                 # how long the worker gathers requests into one batch
    max_batch_size = 8                   # prompts per batch
"""

from __future__ import annotations

import importlib
import inspect
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..validation import check_choice, check_range


class _Methods(Mapping):
    """The server's method names -> the class whose fields (or keyword arguments) are the method's
    parameters; a class is imported when first looked up (``w2s --help`` lists the names without torch)."""

    _where = {"cbs": ("..search", "ChunkBeamSearch"), "bon": ("..search", "BestOfN"),
              "sampling": ("..search", "Sampling"), "eft": ("..search", "EmulatedFineTuning"),
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


METHODS = _Methods()
ALIGNER_METHODS = ("stream_aligner", "aligner")
ROLES = ("strong", "tuned", "untuned", "aligner", "whole_aligner")
# the model each aligner method corrects with
ALIGNER_ROLE = {"stream_aligner": "aligner", "aligner": "whole_aligner"}
# fields the server owns: templates come from the model config, all beams are never returned
SERVER_OWNED = {"return_beams", "upstream_template", "aligner_template"}


def method_fields(method: str) -> dict[str, object]:
    """The request-settable parameters of a method and their defaults, read from its class."""
    cls = METHODS[method]
    if hasattr(cls, "__dataclass_fields__"):
        found = {f.name: f.default for f in fields(cls) if f.init}
    else:  # the aligners: keyword-only constructor arguments
        found = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return {name: default for name, default in found.items() if name not in SERVER_OWNED}


@dataclass
class ModelSpec:
    """One model: a local path (directory or .gguf), an http(s) URL of an OpenAI-compatible engine, or
    None for the default model of that role."""

    path: str | None = None
    template: str | None = None  # None: the default model's template, else "{prompt}"
    dtype: str = "float32"
    device: str = "cpu"
    model: str | None = None  # the engine's model name, for a URL
    tokenizer: str | None = None  # for a URL: a local copy of the served model's tokenizer (chat template)
    remote: dict = field(default_factory=dict)  # for a URL: more w2s.RemoteModel arguments (concurrency, ...)


@dataclass
class ServeConfig:
    """Everything ``w2s serve`` needs; see the module docstring for the file format."""

    name: str = "w2s"
    method: str = "cbs"
    models: dict[str, ModelSpec] = field(default_factory=dict)  # strong, tuned, untuned, aligner, whole_aligner
    methods: dict[str, dict] = field(default_factory=dict)  # method -> parameter defaults
    host: str = "127.0.0.1"
    port: int = 8000
    queue_size: int = 64
    batch_window_ms: float = 10.0
    max_batch_size: int = 8

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        for role in self.models:
            check_choice("models", role, ROLES)
        for method, params in self.methods.items():
            check_choice("methods", method, METHODS)
            unknown = sorted(set(params) - set(method_fields(method)))
            if unknown:
                raise ValueError(f"[methods.{method}] has unknown parameters {unknown}; "
                                 f"allowed: {sorted(method_fields(method))}.")
        check_range("port", self.port, low=0, high=65535, integer=True)
        check_range("queue_size", self.queue_size, low=1, integer=True)
        check_range("batch_window_ms", self.batch_window_ms, low=0.0)
        check_range("max_batch_size", self.max_batch_size, low=1, integer=True)


def _table(where: str, value, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a table, got {value!r}.")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}.")
    return value


def parse_config(data: dict, source: str = "config") -> ServeConfig:
    """A :class:`ServeConfig` from parsed TOML; unknown keys are errors that name them."""
    _table(source, data, {"name", "method", "models", "methods", "server"})
    spec_keys = {f.name for f in fields(ModelSpec)}
    models = {}
    for role, spec in _table(f"{source} [models]", data.get("models", {}), set(ROLES)).items():
        spec = _table(f"{source} [models.{role}]", spec, spec_keys)
        models[role] = ModelSpec(**spec)
    server = _table(f"{source} [server]", data.get("server", {}),
                    {"host", "port", "queue_size", "batch_window_ms", "max_batch_size"})
    methods = {m: dict(_table(f"{source} [methods.{m}]", params, set(method_fields(m)) if m in METHODS else set()))
               for m, params in _table(f"{source} [methods]", data.get("methods", {}), set(METHODS)).items()}
    return ServeConfig(name=data.get("name", "w2s"), method=data.get("method", "cbs"), models=models,
                       methods=methods, **server)


def load_config(path: str | Path) -> ServeConfig:
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"--config {path}: not valid TOML ({err}).") from None
    return parse_config(data, source=str(path))
