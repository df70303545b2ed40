"""Train a small causal LM from scratch on a text corpus: the *untuned* guide of weak-to-strong search.

A byte-level BPE tokenizer is trained on the corpus (guides may use any tokenizer: the search passes
text between models), then a small Llama is trained with the ``transformers`` ``Trainer`` on packed
blocks of ``context_length`` tokens (documents joined by the end-of-text token).  Plain pretraining
needs no more than that; TRL's ``SFTTrainer`` computes per-step token entropy and accuracy over the
full vocabulary, which made it six times slower here.  Checkpoints are kept in ``OUT/checkpoints``
and a rerun resumes from the last one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from . import check_schedule, schedule_args, train_and_save

SPECIAL = {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "pad_token": "<pad>"}


@dataclass(frozen=True)
class LMTrainingConfig:
    """Size and schedule of the small LM.

    Attributes:
        vocab_size: BPE vocabulary trained on the corpus.
        hidden_size: the Llama's width.
        num_layers: its decoder layers.
        num_heads: its attention heads.
        intermediate_size: its MLP width.
        context_length: packed sequence length in tokens.
        epochs: passes over the corpus (AdamW with a cosine schedule).
        learning_rate: the peak learning rate.
        batch_size: sequences per step.
        warmup_ratio: the share of steps the learning rate warms up over.
        save_steps: checkpoint interval (a rerun resumes from the last checkpoint).
        seed: seeds the initial weights and the data order.
    """

    vocab_size: int = 8192
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    intermediate_size: int = 768
    context_length: int = 128
    epochs: float = 2.0
    learning_rate: float = 2e-3
    batch_size: int = 32
    warmup_ratio: float = 0.03
    save_steps: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        check_schedule(self, ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                              "context_length"))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size must be a multiple of num_heads ({self.num_heads}), got {self.hidden_size}.")


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer (any text is representable) with one end-of-text token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL["eos_token"], SPECIAL["pad_token"]],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def build_model(tokenizer, config: LMTrainingConfig):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(config.seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads, max_position_embeddings=max(1024, config.context_length),
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))


def train_lm(texts: Sequence[str], out_dir: str | Path, config: LMTrainingConfig = LMTrainingConfig(),
             *, progress: bool = True) -> Path:
    """Train (or resume training) a small LM on ``texts``; the model and tokenizer end up in ``out_dir``."""
    from datasets import Dataset
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("texts is empty: the corpus has no non-blank text.")
    out = Path(out_dir)
    tok_dir = out / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():  # a resumed run must keep the tokenizer it started with
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tokenizer = train_tokenizer(texts, config.vocab_size)
        tokenizer.save_pretrained(tok_dir)
    blocks = pack(tokenizer, texts, config.context_length)
    trainer = Trainer(model=build_model(tokenizer, config), args=TrainingArguments(**schedule_args(config, out, progress)),
                      train_dataset=Dataset.from_dict({"input_ids": blocks, "labels": blocks}),
                      processing_class=tokenizer)
    return train_and_save(trainer, out, {"recipe": "lm", **asdict(config), "texts": len(texts)})


def pack(tokenizer, texts: Sequence[str], length: int) -> list[list[int]]:
    """Concatenate the documents, each followed by EOS, and cut the stream into blocks of ``length``."""
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    return [stream[i : i + length] for i in range(0, len(stream) - length + 1, length)]
