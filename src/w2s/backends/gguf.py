"""GGUF files as plain ``transformers`` checkpoints: converted once, then loaded in under a second."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .. import defaults


def convert_gguf(gguf: Path, target: Path) -> Path:
    """De-quantize a GGUF causal LM once and save it as a plain safetensors model directory.

    ``save_pretrained`` refuses GGUF-loaded models, so the weights are written with safetensors and
    the config without its ``quantization_config``.  The copy appears atomically (a crash leaves none).
    """
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    tmp.chmod(0o755)
    try:
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def strong_model_dir() -> Path:
    """The cached safetensors copy of the default strong model (:mod:`w2s.defaults`), made on first use."""
    target = defaults.strong_model_path()
    if not (target / "model.safetensors").exists():
        convert_gguf(defaults.strong_gguf(), target)
    return target
