"""One resolver for the names a model may be given by, used wherever a model is loaded (``w2s.load_model``,
the commands' and the server's model specs, an adapter's base):

- an ``http(s)://`` URL: an OpenAI-compatible engine, unchanged;
- ``w2s:NAME``: a model w2s ships or builds, e.g. ``w2s:default-strong`` or ``w2s:code-style-tuned``;
- a name of :mod:`w2s.backends.catalog` (``qwen2.5-coder-0.5b-instruct``): its checkpoint, once set up;
- anything else: a path (``~`` expanded) or hub id, unchanged.

An unknown ``w2s:`` name, or a catalog name that is not set up, is a ValueError saying what would work.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path


def _shipped() -> dict:
    from . import defaults
    from .backends.gguf import strong_model_dir

    return {
        "w2s:default-strong": strong_model_dir,
        "w2s:sentiment-tuned": lambda: defaults.guide_dir("tuned"),
        "w2s:sentiment-untuned": lambda: defaults.guide_dir("untuned"),
        "w2s:reviews-tuned": defaults.review_guide_dir,
        **{f"w2s:code-{kind}-tuned": lambda kind=kind: defaults.code_guide_dir(kind)
           for kind in defaults.CODE_GUIDE_KINDS},
        "w2s:stream-aligner": lambda: defaults.aligner_dir("stream"),
        "w2s:whole-aligner": lambda: defaults.aligner_dir("whole"),
    }


def resolve_model(name: str | os.PathLike, what: str = "model") -> str:
    """The path (or URL) a model name stands for (see the module docstring); ``what`` names it in errors."""
    from .backends import catalog

    name = os.fspath(name)
    if name.startswith(("http://", "https://")):
        return name
    if name.startswith("w2s:"):
        shipped = _shipped()
        if name not in shipped:
            hint = difflib.get_close_matches(name, list(shipped), n=1)
            raise ValueError(f"{what} {name!r} is not a model w2s ships; those are {', '.join(shipped)}."
                             + (f" Did you mean {hint[0]!r}?" if hint else ""))
        return str(shipped[name]())
    if name in catalog.CATALOG and not Path(name).exists():
        try:
            return catalog.resolve(name)
        except ValueError as err:  # not set up: say whose model it is
            raise ValueError(str(err) if what == "model" else f"{what}: {err}") from None
    return os.path.expanduser(name)
