"""Lazy package attributes (PEP 562): a package's public names are imported on first use, so that
``import w2s`` and ``w2s --help`` do not import torch or transformers."""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]):
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``exports`` maps each submodule (relative,
    e.g. ``".search"``) to the names it defines, imported (and kept on the package) when first used."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
