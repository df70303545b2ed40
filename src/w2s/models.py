"""One way to load a model: a :class:`ModelSpec` names it, :func:`load` loads it.

The command line, the server's config, the evaluations and the demo all build ``ModelSpec`` objects and
call :func:`load` (or :func:`load_all`).  A spec's ``role`` gives what is left out: a spec with no path
is the role's default model (:mod:`w2s.defaults`) with its template; a given model gets the role's
template rule ("{prompt}" for the search models, "chat" for the aligners and the upstream).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from . import defaults
from .backends import catalog, gguf
from .backends.base import MAX_TOKENS_PER_FORWARD
from .validation import check_choice, check_range

# role -> the template of a model given by path
GIVEN_TEMPLATE = {"strong": "{prompt}", "tuned": "{prompt}", "untuned": "{prompt}", "upstream": "chat",
                  "aligner": "chat", "whole_aligner": "chat", "teacher": "chat"}


def role_default(role: str) -> tuple[Path | None, str]:
    """The role's default model (its path, None when it has none) and that model's template, read from
    :mod:`w2s.defaults` when asked (a missing shipped model raises ``ValueError``)."""
    if role in ("strong", "upstream"):
        return gguf.strong_model_dir(), defaults.STRONG_TEMPLATE if role == "strong" else "chat"
    if role in ("tuned", "untuned"):
        return defaults.guide_dir(role), defaults.GUIDE_TEMPLATE
    if role in ("aligner", "whole_aligner"):
        return defaults.aligner_dir("stream" if role == "aligner" else "whole"), defaults.ALIGNER_TEMPLATE
    return None, GIVEN_TEMPLATE[role]


ROLES = tuple(GIVEN_TEMPLATE)
DTYPES = ("float32", "bfloat16", "float16")
# ModelSpec fields given once per role (w2s's flags --strong, --strong-template, ...) and those that
# only a model behind an engine uses
PER_ROLE = ("path", "template", "model", "tokenizer")
# fields given once for all models that one role may override (--dtype bfloat16 --tuned-dtype float32)
ROLE_OVERRIDES = ("dtype",)
REMOTE_FIELDS = ("model", "tokenizer", "concurrency", "timeout", "max_retries", "api_key_env", "extra_body", "engine")
# the engines a URL may name (w2s.backends.remote.ENGINES, without importing httpx here)
ENGINES = ("auto", "vllm", "llama.cpp", "openai")


def is_url(path) -> bool:
    """An http(s) URL names an OpenAI-compatible engine (a :class:`w2s.RemoteModel`)."""
    return isinstance(path, str) and path.startswith(("http://", "https://"))


CALLABLE_PREFIX = "py:"  # a Python function given by name: py:package.module:function


def is_callable_path(path) -> bool:
    """``py:package.module:function`` (a teacher given by name); without the prefix a name is a model."""
    return isinstance(path, str) and path.startswith(CALLABLE_PREFIX)


@dataclass
class ModelSpec:
    """One model to load.

    Attributes:
        path: a ``transformers`` model directory, a ``.gguf`` file, a LoRA adapter directory, the URL
            of an OpenAI-compatible engine (``http(s)://host:port/v1``), or for a teacher a Python
            function ``py:package.module:function``; None: the role's default model.
        role: strong, tuned, untuned, upstream, aligner, whole_aligner or teacher; it decides the
            default model and template (None: no defaults, the path is required).
        template: prompt template, a format string with ``{prompt}`` or ``chat``; None: the default
            model's own, else ``{prompt}`` for the search models and ``chat`` for the others.
        dtype: weights' dtype of a local model (float32, bfloat16 or float16).
        device: cpu, cuda, cuda:N or auto.
        device_map: a ``transformers`` device map (e.g. ``auto``) that spreads a large local model over
            the devices; it replaces ``device``.
        max_memory: with a device map, the memory each device may hold, as ``DEVICE=SIZE`` pairs joined
            by commas (e.g. ``0=20GiB,1=40GiB,cpu=60GiB``).
        max_tokens_per_forward: the most query tokens (rows times new positions) one forward of a local
            model runs; longer forwards (a long prompt, many candidates scored at once) run as several
            calls (the same logits).  On a GPU raise it until the throughput stops growing.  None: no bound.
        model: the engine's model name (a URL only).
        tokenizer: a local copy of the served model's tokenizer, for its chat template (a URL only).
        concurrency: requests in flight at once (a URL only).
        timeout: seconds per request (a URL only).
        max_retries: retries after a timeout, connection error, 429 or 5xx, with backoff (a URL only).
        api_key_env: environment variable holding the engine's API key (a URL only; never the key itself).
        extra_body: a JSON object of engine-specific fields sent with every request (a URL only), e.g.
            ``{"min_p": 0}``; they override what w2s sends.
        engine: the engine behind the URL, which decides the names the sampling settings are sent as: vllm,
            llama.cpp (llama-cpp-python's server), openai (the hosted API) or auto (asks the engine when a
            setting needs its own name); a URL only.
    """

    path: str | None = None
    role: str | None = None
    template: str | None = None
    dtype: str = field(default="float32", metadata={"choices": DTYPES})
    device: str = "cpu"
    device_map: str | None = None
    max_memory: str | None = None
    max_tokens_per_forward: int | None = MAX_TOKENS_PER_FORWARD
    model: str | None = None
    tokenizer: str | None = None
    concurrency: int = 16
    timeout: float = 60.0
    max_retries: int = 5
    api_key_env: str = "OPENAI_API_KEY"
    extra_body: str | None = None
    engine: str = field(default="auto", metadata={"choices": ENGINES})

    def __post_init__(self) -> None:
        if self.path is not None:
            self.path = os.fspath(self.path)
        if self.extra_body is not None:
            self.body()
        if self.role is not None:
            check_choice("role", self.role, ROLES)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("engine", self.engine, ENGINES)
        check_range("max_tokens_per_forward", self.max_tokens_per_forward, low=1, integer=True, allow_none=True)

    def body(self) -> dict | None:
        """:attr:`extra_body` parsed (None when not given)."""
        if self.extra_body is None:
            return None
        try:
            body = json.loads(self.extra_body)
        except json.JSONDecodeError as err:
            raise ValueError(f"extra_body must be a JSON object, got {self.extra_body!r} ({err.msg}).") from None
        if not isinstance(body, dict):
            raise ValueError(f"extra_body must be a JSON object, got {self.extra_body!r}.")
        return body

    @property
    def remote(self) -> bool:
        return is_url(self.path)

    def resolved(self) -> "ModelSpec":
        """This spec with its path and template filled in from its role's defaults."""
        if self.role is None:
            if self.path is None:
                raise ValueError("ModelSpec needs a path (or a role whose default model is used).")
            return replace(self, template=self.template or catalog_template(self.path) or "{prompt}")
        if self.path is not None:
            return replace(self, template=self.template or catalog_template(self.path) or GIVEN_TEMPLATE[self.role])
        default_path, default_template = role_default(self.role)
        if default_path is None:
            raise ValueError(f"the {self.role} model has no default: give its path.")
        return replace(self, path=str(default_path), template=self.template or default_template)


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model and the prompt template it is used with."""

    model: Any  # a w2s LanguageModel, or a Python function (a teacher)
    template: str
    spec: ModelSpec = field(repr=False)

    @property
    def name(self) -> str:
        return getattr(self.model, "name", self.spec.path)


def load(spec: ModelSpec) -> LoadedModel:
    """Load ``spec``'s model: a local directory, GGUF file or adapter, a remote engine, or a function."""
    spec = spec.resolved()
    if spec.remote:
        from .backends.remote import RemoteModel

        if not spec.model:
            flag = f"--{spec.role.replace('_', '-')}-model" if spec.role else "model"
            raise ValueError(f"model path {spec.path} is a URL: give the engine's model name ({flag} NAME).")
        model = RemoteModel(spec.path, spec.model, tokenizer=spec.tokenizer, concurrency=spec.concurrency,
                            timeout=spec.timeout, max_retries=spec.max_retries, api_key_env=spec.api_key_env,
                            extra_body=spec.body(), engine=spec.engine)
    elif is_callable_path(spec.path):
        if spec.role != "teacher":
            raise ValueError(f"{spec.path!r}: only the teacher may be a Python function; the {spec.role or 'model'} "
                             f"must be a model (a directory, a GGUF file, a name or a URL).")
        model = load_callable(spec.path[len(CALLABLE_PREFIX):])
    else:
        from .backends.transformers import load_model

        if spec.role == "teacher" and _looks_like_a_function(spec.path):
            raise ValueError(f"teacher {spec.path!r} is not a model folder; for a Python function write "
                             f"'{CALLABLE_PREFIX}{spec.path}'.")
        model = load_model(spec.path, dtype=spec.dtype, device=spec.device,
                           device_map=spec.device_map, max_memory=parse_max_memory(spec.max_memory),
                           max_tokens_per_forward=spec.max_tokens_per_forward)
    return LoadedModel(model, spec.template, spec)


def catalog_template(path: str) -> str | None:
    """The template of a model set up by name (:mod:`w2s.backends.catalog`), else None."""
    return catalog.CATALOG[path].template if path in catalog.CATALOG else None


def parse_max_memory(text: str | None) -> dict | None:
    """``"0=20GiB,cpu=60GiB"`` -> ``{0: "20GiB", "cpu": "60GiB"}`` (accelerate's ``max_memory``)."""
    if text is None:
        return None
    found = {}
    for pair in text.split(","):
        device, sep, size = pair.partition("=")
        if not sep or not device.strip() or not size.strip():
            raise ValueError(f"max_memory must be DEVICE=SIZE pairs joined by commas (e.g. '0=20GiB,cpu=60GiB'), "
                             f"got {text!r}.")
        device = device.strip()
        found[int(device) if device.isdigit() else device] = size.strip()
    return found


def _looks_like_a_function(path: str) -> bool:
    """``package.module:function`` that is no file: the prefix was forgotten."""
    module, sep, name = path.partition(":")
    return bool(sep) and not Path(path).exists() and all(p.isidentifier() for p in (*module.split("."), name))


def load_callable(path: str):
    """``package.module:function`` -> the function (a teacher named on the command line after ``py:``)."""
    module, sep, name = path.partition(":")
    if not sep or not name:
        raise ValueError(f"{CALLABLE_PREFIX}{path!r} must name a function as 'py:package.module:function'.")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{CALLABLE_PREFIX}{path} is not an importable function ({e}).") from e
    if not callable(fn):
        raise ValueError(f"{CALLABLE_PREFIX}{path} is not callable.")
    return fn


@dataclass
class Models:
    """The models of one command or server, by role (None: not loaded)."""

    strong: LoadedModel | None = None
    tuned: LoadedModel | None = None
    untuned: LoadedModel | None = None
    upstream: LoadedModel | None = None
    aligner: LoadedModel | None = None
    whole_aligner: LoadedModel | None = None
    teacher: LoadedModel | None = None

    def __getitem__(self, role: str) -> LoadedModel:
        found = getattr(self, role)
        if found is None:
            raise ValueError(f"no {role} model was loaded.")
        return found

    def get(self, role: str) -> LoadedModel | None:
        return getattr(self, role)

    def items(self) -> list[tuple[str, LoadedModel]]:
        """The loaded roles and their models."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]


def load_all(specs: dict[str, ModelSpec]) -> Models:
    """Load one spec per role (a spec's role is set from its key); a spec that names the same model as
    one loaded before (same resolved path, dtype, device and map) reuses it."""
    loaded: dict[tuple, LoadedModel] = {}
    models = Models()
    for role, spec in specs.items():
        spec = replace(spec, role=role).resolved()
        key = tuple(getattr(spec, f.name) for f in fields(ModelSpec) if f.name not in ("role", "template"))
        if key not in loaded:
            loaded[key] = load(spec)
        setattr(models, role, replace(loaded[key], template=spec.template, spec=spec))
    return models


def default_available(role: str) -> bool:
    """Whether the role's default model is installed (the shipped aligners may be missing)."""
    try:
        return role_default(role)[0] is not None
    except ValueError:
        return False
