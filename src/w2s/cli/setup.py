"""``w2s demo`` and ``w2s setup``: the offline demo, and the one-time preparation of the default models."""

from __future__ import annotations

from dataclasses import dataclass

from ..models import ModelSpec, is_url, load, load_all
from .flags import add_config_flags, add_model_flags, model_specs
from .search import MODEL_HELP, ROLES


@dataclass
class DemoOptions:
    """What ``w2s demo`` shows.

    Attributes:
        prompts: number of held-out prompts.
        max_new_tokens: length of each continuation, in strong-model tokens.
        seed: seeds each prompt's randomness, with its position.
    """

    prompts: int = 6
    max_new_tokens: int = 40
    seed: int = 0


def add_parsers(sub) -> None:
    d = sub.add_parser("demo", help="plain vs weak-to-strong continuations of a real model, side by side")
    add_model_flags(d, ROLES, remote=(), helps=MODEL_HELP)
    add_config_flags(d, DemoOptions)
    d.set_defaults(func=run_demo)
    u = sub.add_parser("setup", help="convert the default strong model (GGUF) once to a cached safetensors copy, "
                       "and merge the shipped aligners into it once (cached too)")
    u.set_defaults(func=run_setup)


def run_demo(args) -> None:
    from ..demo import run_demo

    if is_url(args.strong):
        raise ValueError("w2s demo needs a local --strong model (it reports its size); use w2s search with a URL.")
    run_demo(load_all(model_specs(args, ROLES)), num_prompts=args.prompts, max_new_tokens=args.max_new_tokens,
             seed=args.seed)


def run_setup(args) -> None:
    from .. import defaults
    from ..backends.gguf import strong_model_dir

    print(f"default strong model ready at {strong_model_dir()}")
    for role in ("aligner", "whole_aligner"):  # the first load merges an adapter and caches it (w2s.backends.adapters)
        load(ModelSpec(role=role))
    print(f"shipped aligners merged into it, cached in {defaults.cache_dir() / 'merged'}")
