"""LoRA adapters: merged into their base model once, the merged copy cached as a plain model directory.

Merging a PEFT adapter (``merge_and_unload``) costs about a second at every load, so the first load of an
adapter directory saves the merged model (safetensors, config, tokenizer) in the w2s cache
(:func:`w2s.defaults.cache_dir`: ``$W2S_CACHE``, default ``~/.cache/w2s``) under ``merged/``, and later
loads read that copy with ``AutoModelForCausalLM.from_pretrained`` (PEFT is not imported).

A cache entry is keyed by the adapter's files (their contents), the base's identity (its resolved path
and its files' sizes and modification times) and the dtype: a retrained adapter, a rebuilt base or
another dtype gets a new entry, and the entry it replaces (same adapter and dtype) is removed.  An entry
is written to a temporary directory and renamed into place, so an interrupted run leaves none.  A base
that is not a local directory (a hub id) is merged at every load, uncached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

DEFAULT_STRONG_BASE = "w2s:default-strong"  # an adapter's base meaning the default strong model (w2s.defaults)

MANIFEST = "w2s_merged.json"  # in each cache entry: the adapter, base and dtype it was merged from


def adapter_base(path: Path) -> str:
    """The base model of the adapter directory ``path`` (its ``base_model_name_or_path``): a model
    directory or hub id; ``w2s:default-strong`` is the default strong model (:mod:`w2s.defaults`), and a
    name of :mod:`w2s.backends.catalog` is that model's converted checkpoint (set up by ``w2s setup NAME``)."""
    from ..names import resolve_model

    config = path / "adapter_config.json"
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ValueError(f"adapter {str(path)!r}: {config.name} names no base_model_name_or_path.")
    resolved = resolve_model(base, what=f"the base model of the adapter in {str(path)!r}")
    if resolved != base:
        return resolved
    if not Path(base).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ValueError(f"the base model {base!r} of the adapter in {str(path)!r} does not exist.")
    return base


def merged_key(path: Path, base: str, dtype) -> str:
    """The cache key of ``path`` merged into the local directory ``base`` in ``dtype``: a SHA-256 of
    the adapter's files, the base's path and files' sizes and modification times, and the dtype."""
    digest = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(f"adapter {f.name} {f.stat().st_size}\n".encode())
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    root = Path(base).resolve()
    digest.update(f"base {root}\n".encode())
    for f in sorted(p for p in root.iterdir() if p.is_file()):
        stat = f.stat()
        digest.update(f"{f.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    digest.update(f"dtype {dtype}\n".encode())
    return digest.hexdigest()


def load_adapter(path: Path, dtype):
    """The model and tokenizer of the PEFT LoRA adapter directory ``path`` merged into its base
    (:func:`adapter_base`), in ``dtype`` (a ``torch.dtype``); from the cache when merged before.  The
    tokenizer is the adapter's if saved with it, else the base's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    base = adapter_base(path)
    if not Path(base).is_dir():  # a hub id: nothing local to key the cache on
        return merge(path, base, dtype)
    key = merged_key(path, base, dtype)
    target = _cache_root() / f"{path.resolve().name}-{key[:16]}"
    if not target.is_dir():
        model, tokenizer = merge(path, base, dtype)
        try:
            _save(model, tokenizer, target, {"adapter": str(path.resolve()), "base": str(Path(base).resolve()),
                                             "dtype": str(dtype), "key": key})
        except OSError as err:  # a read-only or full cache: use this merge, uncached
            warnings.warn(f"could not cache the merged adapter {str(path)!r} in {str(target)!r} ({err}); "
                          "it will be merged again at the next load.", stacklevel=2)
            return model, tokenizer
    return AutoModelForCausalLM.from_pretrained(target, dtype=dtype), AutoTokenizer.from_pretrained(target)


def merge(path: Path, base: str, dtype):
    """The adapter ``path`` merged into ``base`` with PEFT (``merge_and_unload``), and its tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    with warnings.catch_warnings():  # PEFT calls a transformers method that transformers 5 marks as deprecated
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    return model, AutoTokenizer.from_pretrained(path if has_tokenizer else base)


def _cache_root() -> Path:
    from ..defaults import cache_dir

    return cache_dir() / "merged"


def _save(model, tokenizer, target: Path, manifest: dict) -> None:
    """Write the merged model to ``target`` atomically (a temporary directory renamed into place), then
    remove older entries of the same adapter and dtype."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not another process that merged the same adapter meanwhile
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for entry in target.parent.iterdir():
        if entry != target and not entry.name.startswith(".") and _same_source(entry / MANIFEST, manifest):
            shutil.rmtree(entry, ignore_errors=True)


def _same_source(manifest_file: Path, manifest: dict) -> bool:
    try:
        old = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return old.get("adapter") == manifest["adapter"] and old.get("dtype") == manifest["dtype"]


def ship_adapter(trained, target, base: str = DEFAULT_STRONG_BASE) -> None:
    """Copy a LoRA adapter (``w2s train aligner|dpo --lora-rank``) into ``target``, its base recorded by
    name so that it loads on any machine: ``base`` is ``w2s:default-strong`` (the default strong model) or
    a name of :mod:`w2s.backends.catalog` (a model ``w2s setup`` prepares).  A model card (``README.md``)
    already in ``target`` is kept; every other file there is replaced."""
    from .catalog import CATALOG

    if base != DEFAULT_STRONG_BASE and base not in CATALOG:
        raise ValueError(f"base must be {DEFAULT_STRONG_BASE!r} or one of {sorted(CATALOG)}, got {base!r}.")
    trained, target = Path(trained), Path(target)
    config = json.loads((trained / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    card = target / "README.md"  # a model card written beside an earlier build is kept
    kept = card.read_text(encoding="utf-8") if card.exists() else None
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    if kept is not None:
        card.write_text(kept, encoding="utf-8")
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for name in ("adapter_model.safetensors", "w2s_training.json"):
        shutil.copy(trained / name, target / name)
