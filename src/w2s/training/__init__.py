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


def schedule_args(config, out_dir, progress: bool) -> dict:
    """``TrainingArguments`` keywords shared by the recipes: cosine schedule, checkpoints in
    ``OUT/checkpoints`` every ``save_steps`` (the last one kept), progress bars."""
    import torch

    return dict(
        output_dir=str(Path(out_dir) / "checkpoints"), num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=config.warmup_ratio,  # a float below 1 is a fraction of the steps
        weight_decay=getattr(config, "weight_decay", 0.0), save_steps=config.save_steps, save_total_limit=1,
        logging_steps=10, report_to="none", seed=config.seed, disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
    )


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
