"""``w2s serve``: the search and aligner methods behind an OpenAI-compatible HTTP API.

- :mod:`.config`: what is served (models, default method, queue), from a TOML file or flags.
- :mod:`.app`: request schemas, their conversion to method parameters, the routes.
- :mod:`.batching`: the worker thread that owns the models and batches requests that agree.
- :mod:`.metrics`: Prometheus metrics.

FastAPI and uvicorn are imported only when the server starts (``pip install 'w2s-align[serve]'``).
"""

from __future__ import annotations

import argparse
import os

from .config import METHODS, ROLES, ModelSpec, ServeConfig, load_config, method_fields, parse_config

__all__ = ["METHODS", "ModelSpec", "ServeConfig", "add_parser", "config_from_args", "load_config", "load_served_models",
           "method_fields", "parse_config"]


def load_model_spec(spec: ModelSpec):
    """A local model (directory or .gguf), or a :class:`w2s.RemoteModel` for an http(s) URL."""
    if spec.path.startswith(("http://", "https://")):
        from ..backends.remote import RemoteModel

        if not spec.model:
            raise ValueError(f"model path {spec.path} is a URL: name the engine's model with model = \"NAME\".")
        return RemoteModel(spec.path, spec.model, tokenizer=spec.tokenizer, **spec.remote)
    from ..backends.transformers import load_model

    return load_model(os.path.expanduser(spec.path), dtype=spec.dtype, device=spec.device)


def _shipped_aligner(kind: str):
    """The shipped demo aligner (``"stream"`` or ``"whole"``) when :mod:`w2s.defaults` has one, else None."""
    from .. import defaults

    find = getattr(defaults, "aligner_dir", None)
    try:
        return find(kind) if find is not None else None
    except ValueError:  # not shipped in this installation
        return None


def load_served_models(config: ServeConfig) -> dict:
    """``strong``, ``tuned``, ``untuned``, ``aligner``, ``whole_aligner`` (None when there is none) and
    their ``*_template``s.

    A model the config leaves out is the demo's default one, with its template.  The Stream Aligner's
    ``aligner`` defaults to the shipped demo aligner when :mod:`w2s.defaults` has one; the Aligner
    baseline's ``whole_aligner`` to the configured ``aligner``, else the shipped whole-answer aligner.
    """
    from .. import defaults

    shipped_template = getattr(defaults, "ALIGNER_TEMPLATE", "chat")
    default_paths = {"strong": defaults.strong_model_dir, "tuned": lambda: defaults.guide_dir("tuned"),
                     "untuned": lambda: defaults.guide_dir("untuned"), "aligner": lambda: _shipped_aligner("stream"),
                     "whole_aligner": lambda: _shipped_aligner("whole")}
    default_templates = {"strong": defaults.STRONG_TEMPLATE, "tuned": defaults.GUIDE_TEMPLATE,
                         "untuned": defaults.GUIDE_TEMPLATE, "aligner": shipped_template,
                         "whole_aligner": shipped_template}
    models = {}
    for role, default_path in default_paths.items():
        spec = config.models.get(role) or ModelSpec(None)
        if role == "whole_aligner" and spec.path is None and config.models.get("aligner", ModelSpec()).path:
            models[role], models[f"{role}_template"] = models["aligner"], spec.template or models["aligner_template"]
        elif spec.path is None:  # the default model, with its template unless one is given
            path = default_path()
            models[role] = None if path is None else load_model_spec(
                ModelSpec(str(path), dtype=spec.dtype, device=spec.device))
            models[f"{role}_template"] = spec.template or default_templates[role]
        else:
            models[role] = load_model_spec(spec)
            models[f"{role}_template"] = spec.template or ("chat" if "aligner" in role else "{prompt}")
    return models


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``w2s`` subcommands."""
    from ..cli import add_model_flags

    p = subparsers.add_parser("serve", help="an OpenAI-compatible server (completions, chat, streaming)",
                              description="Serve the search and aligner methods over HTTP. Flags override the "
                                          "config file; a model named by neither is the demo's default one.")
    p.add_argument("--config", metavar="FILE", help="TOML file naming the models, the default method and its "
                                                    "parameters (see the README's Serving section)")
    add_model_flags(p)
    p.add_argument("--aligner", help="the Stream Aligner's aligner model (method stream_aligner; default: the "
                   "shipped demo aligner, if any)")
    p.add_argument("--aligner-template", metavar="T", help="the aligner's template (default 'chat')")
    p.add_argument("--whole-aligner", help="the Aligner baseline's model (method aligner; default: --aligner, "
                   "else the shipped whole-answer aligner, if any)")
    p.add_argument("--whole-aligner-template", metavar="T", help="its template (default 'chat')")
    p.add_argument("--method", choices=list(METHODS), help="default method of requests that name none (default cbs)")
    p.add_argument("--name", help="the model id clients send (default 'w2s')")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--queue-size", type=int, help="requests waiting beyond this get 503 (default 64)")
    p.add_argument("--batch-window-ms", type=float, help="time to gather a batch (default 10)")
    p.add_argument("--max-batch-size", type=int, help="prompts per batch (default 8)")
    p.set_defaults(func=cmd_serve)
    return p


def config_from_args(args) -> ServeConfig:
    """The config file (if any) with the flags given on top of it."""
    config = load_config(args.config) if args.config else ServeConfig()
    for role in ROLES:
        path, template = getattr(args, role, None), getattr(args, f"{role}_template", None)
        if path is not None:
            remote = {key: getattr(args, flag) for key, flag in (("concurrency", "concurrency"),
                      ("timeout", "request_timeout"), ("max_retries", "max_retries"), ("api_key_env", "api_key_env"))
                      if role == "strong" and getattr(args, flag, None) is not None}
            config.models[role] = ModelSpec(path, template, dtype=args.dtype, device=args.device,
                                            model=getattr(args, f"{role}_model", None),
                                            tokenizer=getattr(args, f"{role}_tokenizer", None), remote=remote)
        elif template is not None:  # a template for the configured (or the default) model
            config.models.setdefault(role, ModelSpec(None, dtype=args.dtype, device=args.device)).template = template
    overrides = {k: getattr(args, k) for k in ("method", "name", "host", "port", "queue_size", "batch_window_ms",
                                               "max_batch_size") if getattr(args, k) is not None}
    return ServeConfig(**{**config.__dict__, **overrides})


def cmd_serve(args) -> None:
    try:
        import uvicorn

        from .app import create_app
    except ImportError as err:
        raise ValueError(f"w2s serve needs its extra: pip install 'w2s-align[serve]' ({err}).") from None
    config = config_from_args(args)
    app = create_app(config, load_served_models(config))
    print(f"w2s serve: model {config.name!r}, default method {config.method!r}, "
          f"http://{config.host}:{config.port}/v1", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")
