"""GGUF files as plain ``transformers`` checkpoints: converted once, then loaded in under a second."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .. import defaults


# bumped when the converted copy's format changes: an older copy in the cache is converted again
FORMAT = {"format": 2, "tensor_names": "canonical"}
MARKER = "w2s_converted.json"


def convert_gguf(gguf: Path, target: Path) -> Path:
    """De-quantize a GGUF causal LM once and save it as a plain ``transformers`` checkpoint.

    The checkpoint has its architecture's canonical tensor names (``save_pretrained``: tied weights are
    stored once, under the input embedding's name), so vLLM and llama.cpp's converter load it as
    transformers does; ``save_pretrained`` refuses a GGUF-loaded model until its quantization record is
    dropped (the weights are already plain float32).  The copy appears atomically (a crash leaves none).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({**FORMAT, "source": gguf.name}) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_current(target: Path) -> bool:
    """Whether ``target`` holds a copy converted in the current format."""
    try:
        marker = json.loads((target / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (target / "model.safetensors").exists() and all(marker.get(k) == v for k, v in FORMAT.items())


def strong_model_dir() -> Path:
    """The cached checkpoint of the default strong model (:mod:`w2s.defaults`), converted on first use
    (and again when the cache holds a copy in an older format)."""
    target = defaults.strong_model_path()
    if not is_current(target):
        convert_gguf(defaults.strong_gguf(), target)
    return target
