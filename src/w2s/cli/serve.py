"""``w2s serve``: the OpenAI-compatible server; flags override the config file."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..serve.config import ROLES, ServeConfig, load_config
from .flags import add_config_flags, add_model_flags, model_specs
from .search import MODEL_HELP

SERVE_HELPS = {**MODEL_HELP,
               "aligner": "the Stream Aligner's aligner model (method stream_aligner; default: the shipped demo "
                          "aligner, if any)",
               "whole_aligner": "the Aligner baseline's model (method aligner; default: --aligner, else the shipped "
                                "whole-answer aligner, if any)"}


@dataclass
class ServeOptions:
    """Where ``w2s serve`` reads its settings.

    Attributes:
        config: TOML file naming the models, the default method and its parameters (see
            docs/serving.md); the flags given override it.
    """

    config: str | None = None


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible server (completions, chat, streaming)",
                       description="Serve the search and aligner methods over HTTP. Flags override the config "
                                   "file; a model named by neither is the demo's default one.")
    add_config_flags(p, ServeOptions)
    add_model_flags(p, {role: role for role in ROLES}, remote=("strong",), helps=SERVE_HELPS)
    add_config_flags(p, ServeConfig, skip=("models", "methods"), suppress=True)
    p.set_defaults(func=run)


def config_from_args(args) -> ServeConfig:
    """The config file (if any) with the flags given on top of it."""
    config = load_config(args.config) if args.config else ServeConfig()
    given = model_specs(args, ROLES)
    models = dict(config.models)
    for role in ROLES:
        path, template = getattr(args, role, None), getattr(args, f"{role}_template", None)
        if path is not None:
            models[role] = given[role]
        elif template is not None:  # a template for the configured (or the default) model
            models[role] = replace(models.get(role) or given[role], template=template)
    overrides = {f.name: getattr(args, f.name) for f in fields(ServeConfig) if hasattr(args, f.name)}
    return replace(config, models=models, **overrides)


def run(args) -> None:
    from ..serve import serve

    serve(config_from_args(args))
