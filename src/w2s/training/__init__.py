"""Training recipes for the small models: the guides of weak-to-strong search and the aligners."""

import json
from pathlib import Path

from ..validation import check_range


def check_schedule(config, integers: tuple[str, ...] = ()) -> None:
    """Checks shared by the recipes' configs: the optimizer schedule, plus positive integer fields."""
    check_range("epochs", config.epochs, low=0, low_open=True)
    check_range("learning_rate", config.learning_rate, low=0, low_open=True)
    check_range("warmup_ratio", config.warmup_ratio, low=0, high=1)
    for name in ("batch_size", "save_steps", *integers):
        check_range(name, getattr(config, name), low=1, integer=True)


def check_micro_batch(config) -> None:
    """``micro_batch_size``: none, or a positive divisor of ``batch_size``."""
    micro = config.micro_batch_size
    check_range("micro_batch_size", micro, low=1, integer=True, allow_none=True)
    if micro is not None and config.batch_size % micro:
        raise ValueError(f"micro_batch_size must divide batch_size ({config.batch_size}), got {micro}.")


def schedule_args(config, out_dir, progress: bool) -> dict:
    """``TrainingArguments`` keywords shared by the recipes: cosine schedule, checkpoints in
    ``OUT/checkpoints`` every ``save_steps`` (the last one kept), progress bars."""
    import torch

    micro = getattr(config, "micro_batch_size", None) or config.batch_size  # records per forward
    return dict(
        output_dir=str(Path(out_dir) / "checkpoints"), num_train_epochs=config.epochs,
        per_device_train_batch_size=micro, gradient_accumulation_steps=config.batch_size // micro,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=config.warmup_ratio,  # a float below 1 is a fraction of the steps
        weight_decay=getattr(config, "weight_decay", 0.0), save_steps=config.save_steps, save_total_limit=1,
        logging_steps=10, report_to="none", seed=config.seed, disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        # TRL's configs default to bfloat16 autocast, which on a CPU without bfloat16 units is many times slower
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )


def no_checkpointing(args_class) -> dict:
    """The keyword that turns activation checkpointing off in TRL's configs (on by default there; off, a CPU
    step of a small model is several times faster).  transformers 5.23 renamed it."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(args_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": False}


LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_config(config):
    """PEFT's ``LoraConfig`` for a recipe config's ``lora_rank`` and ``lora_alpha`` (None for rank 0: every
    weight is tuned), on the attention and MLP projections."""
    if not config.lora_rank:
        return None
    from peft import LoraConfig

    return LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, task_type="CAUSAL_LM",
                      target_modules=LORA_MODULES)


def check_lora(config) -> None:
    check_range("lora_rank", config.lora_rank, low=0, integer=True)
    check_range("lora_alpha", config.lora_alpha, low=0, low_open=True)


def train_and_save(trainer, out_dir, record: dict) -> Path:
    """Train, resuming from the last checkpoint in ``OUT/checkpoints`` if any; save the model, its
    tokenizer and ``w2s_training.json`` (the recipe and its settings) in ``out_dir``."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(out_dir)
    checkpoints = out / "checkpoints"
    trainer.train(resume_from_checkpoint=get_last_checkpoint(str(checkpoints)) if checkpoints.exists() else None)
    trainer.save_model(str(out))
    trainer.processing_class.save_pretrained(out)
    (out / "w2s_training.json").write_text(json.dumps(record, indent=2) + "\n")
    return out
