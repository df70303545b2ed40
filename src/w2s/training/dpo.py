"""The *tuned* guide: a DPO-tuned copy of the untuned LM, on preference pairs of its own continuations.

As in the paper's controlled-sentiment setup (Zhou et al. 2024, Sec. 5.1, after Rafailov et al. 2023):
the untuned model samples two continuations per prompt, a gold reward scores both, and the preferred
one is drawn from a Bradley–Terry model, P(a > b) = sigmoid(scale * (r(a) - r(b))).  DPO (TRL's
``DPOTrainer``) then tunes a copy, with the untuned model as its reference; the log-ratio of the pair
is the implicit reward that weak-to-strong search maximizes.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..jsonl import dumps, read_complete
from ..validation import check_range
from . import check_lora, check_schedule, lora_config, no_checkpointing, schedule_args, train_and_save


@dataclass(frozen=True)
class DPOTrainingConfig:
    """DPO settings.

    Attributes:
        beta: DPO's KL strength (the paper's sentiment guides: 0.1; every default is the shipped
            sentiment guide's).
        epochs: passes over the pairs (AdamW with a cosine schedule).
        learning_rate: the peak learning rate.
        batch_size: pairs per step.
        warmup_ratio: the share of steps the learning rate warms up over.
        max_length: prompt + response tokens kept per example.
        save_steps: checkpoint interval (a rerun resumes from the last checkpoint).
        seed: seeds the data order (and the built pairs' sampling).
        lora_rank: 0 tunes every weight; above 0, a LoRA adapter of that rank on the attention and MLP
            projections (the output then holds only the adapter, and the reference is the base itself).
        lora_alpha: the adapter's scale numerator (scale = lora_alpha / lora_rank).
        chat: the pairs' prompts are user turns of the base's chat template and the responses its
            assistant turns (as the "chat" template renders them when the guide scores).
    """

    beta: float = 0.1
    epochs: float = 2.0
    # DPO's gradient is scaled by beta: a small model trained from scratch at lr 2e-3 learned nothing
    # in an epoch at 1e-4 or 5e-4 (held-out ranking agreement 0.50), and did at 3e-3
    learning_rate: float = 3e-3
    batch_size: int = 16
    warmup_ratio: float = 0.03
    max_length: int = 96
    save_steps: int = 50
    seed: int = 0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    chat: bool = False

    def __post_init__(self) -> None:
        check_range("beta", self.beta, low=0, low_open=True)
        check_lora(self)
        check_schedule(self, ("max_length",))


def build_preference_pairs(
    model,
    prompts: Sequence[str],
    reward: Callable[[list[str], list[str]], list[float]],
    out_path: str | Path,
    *,
    template: str = "{prompt}",
    samples: int = 2,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    bt_scale: float = 5.0,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> list[dict]:
    """Sample continuations per prompt from ``model`` (its prompts rendered with ``template``) and make one
    preference pair of them; ``reward(prompts, responses)`` scores a batch.

    With ``samples=2`` the two are labelled by Bradley–Terry on ``reward``.  With more, the pair is the
    highest- and the lowest-reward sample (then labelled by Bradley–Terry): more contrast per pair, which a
    small model trained on few pairs needs, since a sentiment reward hangs on a few words of each text.

    Writes ``{prompt, chosen, rejected, chosen_reward, rejected_reward}`` JSON lines to ``out_path`` as
    it goes; a rerun keeps the lines already there and continues (prompts with two identical samples
    give no pair and are recorded as ``{"prompt": ..., "skipped": true}``).
    """
    from tqdm.auto import tqdm

    from ..backends.base import SamplingParams
    from ..search.cbs import prompt_seeds

    check_range("bt_scale", bt_scale, low=0, low_open=True)
    check_range("samples", samples, low=2, integer=True)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_complete(out_path)
    params = SamplingParams(temperature=temperature, top_k=0)
    with open(out_path, "a", encoding="utf-8") as out, tqdm(total=len(prompts), initial=len(done), disable=not progress,
                                                             desc="preference pairs", unit="prompt") as bar:
        for start in range(len(done), len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            seeds = prompt_seeds(seed, start, len(batch))
            drawn = model.open(batch, params, seeds, template).expand(list(range(len(batch))), samples,
                                                                      max_new_tokens)
            rewards = reward([batch[i // samples] for i in range(len(drawn))], [c.text for c in drawn])
            for i, prompt in enumerate(batch):
                scored = sorted({c.text: r for c, r in zip(drawn[i * samples : (i + 1) * samples],
                                                          rewards[i * samples : (i + 1) * samples])}.items(),
                                key=lambda item: item[1])
                if len(scored) < 2:
                    record = {"prompt": prompt, "skipped": True}
                else:
                    (a, ra), (b, rb) = scored[-1], scored[0]
                    # Bradley–Terry label, drawn with a per-prompt generator (reproducible, batch-independent)
                    a_wins = random.Random(seeds[i]).random() < 1 / (1 + math.exp(-bt_scale * (ra - rb)))
                    (c, rc), (r, rr) = ((a, ra), (b, rb)) if a_wins else ((b, rb), (a, ra))
                    record = {"prompt": prompt, "chosen": c, "rejected": r, "chosen_reward": rc, "rejected_reward": rr}
                out.write(dumps(record))
                done.append(record)
            out.flush()
            bar.update(len(batch))
    return [r for r in done if not r.get("skipped")]


def train_dpo(base_dir: str | Path, pairs: Sequence[dict], out_dir: str | Path,
              config: DPOTrainingConfig = DPOTrainingConfig(), *, progress: bool = True) -> Path:
    """DPO-tune a copy of the model in ``base_dir`` on ``{prompt, chosen, rejected}`` pairs."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    pairs = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
    if not pairs:
        raise ValueError("pairs is empty: DPO needs at least one {prompt, chosen, rejected} pair.")
    if config.chat:  # conversational examples: TRL renders them with the tokenizer's chat template
        pairs = [{"prompt": [{"role": "user", "content": p["prompt"]}],
                  **{k: [{"role": "assistant", "content": p[k].strip()}] for k in ("chosen", "rejected")}}
                 for p in pairs]
    args = DPOConfig(beta=config.beta, max_length=config.max_length, **no_checkpointing(DPOConfig),
                     **schedule_args(config, out_dir, progress))
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(base_dir), args=args,
                         train_dataset=Dataset.from_list(pairs), processing_class=AutoTokenizer.from_pretrained(base_dir),
                         peft_config=lora_config(config))
    return train_and_save(trainer, out_dir, {"recipe": "dpo", "base": str(base_dir), **asdict(config),
                                             "pairs": len(pairs)})
