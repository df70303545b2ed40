"""``w2s serve``: the search and aligner methods behind an OpenAI-compatible HTTP API.

- :mod:`.config`: what is served (models, default method, queue), from a TOML file or flags.
- :mod:`.app`: request schemas, their conversion to method parameters, the routes.
- :mod:`.batching`: the worker thread that owns the models and batches requests that agree.
- :mod:`.metrics`: Prometheus metrics.

FastAPI and uvicorn are imported only when the server starts (``pip install 'w2s-align[serve]'``).
"""

from __future__ import annotations

from dataclasses import replace

from ..models import ModelSpec, Models, default_available, load_all
from .config import ROLES, SERVED_METHODS, ServeConfig, load_config, method_fields, parse_config

__all__ = ["SERVED_METHODS", "ServeConfig", "load_config", "load_served_models", "method_fields", "parse_config",
           "serve"]


def served_specs(config: ServeConfig) -> dict[str, ModelSpec]:
    """The spec of every served role: the configured one, else the role's default model.

    The Aligner baseline's ``whole_aligner`` defaults to the configured ``aligner``, else the shipped
    whole-answer aligner; a shipped aligner that is not installed is left out (its method is then
    unavailable)."""
    specs = {}
    for role in ROLES:
        spec = config.models.get(role) or ModelSpec(role=role)
        aligner = config.models.get("aligner")
        if role == "whole_aligner" and spec.path is None and aligner is not None and aligner.path is not None:
            spec = replace(aligner, role=role, template=spec.template or aligner.template)
        elif spec.path is None and "aligner" in role and not default_available(role):
            continue
        specs[role] = spec
    return specs


def load_served_models(config: ServeConfig) -> Models:
    """The served models, by role (an aligner may be None); see :func:`served_specs`."""
    return load_all(served_specs(config))


def serve(config: ServeConfig) -> None:
    """Load the models and run the server until it is stopped."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as err:
        raise ValueError(f"w2s serve needs its extra: pip install 'w2s-align[serve]' ({err}).") from None
    app = create_app(config, load_served_models(config))
    print(f"w2s serve: model {config.name!r}, default method {config.method!r}, "
          f"http://{config.host}:{config.port}/v1", flush=True)
    uvicorn.Server(uvicorn_config(app, config, config.port)).run()


def uvicorn_config(app, config: ServeConfig, port: int, log_level: str = "info"):
    """uvicorn's settings for ``app``: the h11 protocol with the request-header deadline of ``config``."""
    import uvicorn

    from .guard import header_deadline_protocol

    return uvicorn.Config(app, host=config.host, port=port, log_level=log_level,
                          http=header_deadline_protocol(config.header_timeout_s))
