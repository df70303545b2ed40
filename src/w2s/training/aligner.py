"""Supervised fine-tuning of an aligner: the loss on the correction only (prompt tokens masked).

Lou et al. 2025 (Stream Aligner) and Ji et al. 2024 (Aligner) train with the authors' schedule: 3 epochs,
lr 2e-5, cosine, 3% warm-up, no weight decay.  The input is the same template constant that
inference uses (``w2s.aligner.STREAM_ALIGNER_TEMPLATE`` or ``ALIGNER_TEMPLATE``), in the model's chat
template when it has one; TRL's ``SFTTrainer`` masks the prompt of prompt-completion examples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ..aligner.stream import aligner_input, stream_aligner_input
from ..backends.base import chat_turn_end_id
from ..validation import check_choice, check_range
from . import check_lora, check_micro_batch, check_schedule, lora_config, no_checkpointing, schedule_args, train_and_save


@dataclass(frozen=True)
class AlignerTrainingConfig:
    """SFT settings (defaults: the authors' schedule).

    Attributes:
        kind: ``"stream"`` (records {question, prefix, sentence, correction}) or ``"whole"`` (records
            {question, answer, correction}, the Aligner baseline).
        epochs: passes over the records (cosine schedule).
        learning_rate: the peak learning rate.
        warmup_ratio: the share of steps the learning rate warms up over.
        weight_decay: AdamW's weight decay.
        batch_size: records per step.
        micro_batch_size: records per forward and backward pass, their gradients accumulated into a step
            (bounds memory: long records at batch size 16 need over 24 GB on a CPU); none: batch_size.
            batch_size must be a multiple of it.
        max_length: prompt + correction tokens kept per example.
        lora_rank: 0 fine-tunes every weight; above 0, a LoRA adapter of that rank on the attention and MLP
            projections is trained instead (the output directory then holds only the adapter, which
            :func:`w2s.load_model` merges into its base).
        lora_alpha: the adapter's scale numerator (scale = lora_alpha / lora_rank).
        save_steps: checkpoint interval (a rerun resumes from the last checkpoint).
        seed: seeds the data order (and a LoRA adapter's initial weights).
    """

    kind: str = dataclasses.field(default="stream", metadata={"choices": ("stream", "whole")})
    epochs: float = 3.0
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 8
    micro_batch_size: int | None = None
    max_length: int = 512
    save_steps: int = 100
    seed: int = 0
    lora_rank: int = 0
    lora_alpha: float = 16.0

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ("stream", "whole"))
        check_lora(self)
        check_range("weight_decay", self.weight_decay, low=0)
        check_schedule(self, ("max_length",))
        check_micro_batch(self)


def examples(records: Sequence[dict], kind: str, tokenizer) -> list[dict]:
    """Prompt-completion examples; conversational when the tokenizer has a chat template.

    The target must end with an end token, or the aligner never learns to stop: TRL appends EOS to a
    plain completion, and a chat template writes its end of turn after the assistant's message, except
    templates that write none (then the tokenizer's EOS is appended to the message).
    """
    chat = bool(getattr(tokenizer, "chat_template", None))
    end = tokenizer.eos_token if chat and chat_turn_end_id(tokenizer) is None else ""
    out = []
    for r in records:
        prompt = (stream_aligner_input(r["question"], r["prefix"], r["sentence"]) if kind == "stream"
                  else aligner_input(r["question"], r["answer"]))
        if chat:
            out.append({"prompt": [{"role": "user", "content": prompt}],
                        "completion": [{"role": "assistant", "content": r["correction"] + end}]})
        else:
            out.append({"prompt": prompt, "completion": r["correction"]})
    return out


def build_trainer(base_dir: str | Path, records: Sequence[dict], out_dir: str | Path,
                  config: AlignerTrainingConfig = AlignerTrainingConfig(), *, progress: bool = True):
    """TRL's ``SFTTrainer`` on prompt-completion examples, the prompt masked out of the loss."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if not records:
        raise ValueError("records is empty: training an aligner needs correction records.")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = SFTConfig(max_length=config.max_length, completion_only_loss=True, **no_checkpointing(SFTConfig),
                     train_sampling_strategy="group_by_length",
                     **schedule_args(config, out_dir, progress))
    return SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base_dir), args=args, peft_config=lora_config(config),
                      train_dataset=Dataset.from_list(examples(records, config.kind, tokenizer)), processing_class=tokenizer)


def train_aligner(base_dir: str | Path, records: Sequence[dict], out_dir: str | Path,
                  config: AlignerTrainingConfig = AlignerTrainingConfig(), *, progress: bool = True) -> Path:
    """Fine-tune the causal LM in ``base_dir`` into an aligner; a rerun resumes from the last checkpoint."""
    trainer = build_trainer(base_dir, records, out_dir, config, progress=progress)
    return train_and_save(trainer, out_dir, {"recipe": "aligner", "base": str(base_dir), **asdict(config),
                                             "records": len(records)})
