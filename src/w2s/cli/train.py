"""``w2s train lm | dpo | aligner``: the training recipes of the small models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..training.aligner import AlignerTrainingConfig
from ..training.dpo import DPOTrainingConfig
from ..training.lm import LMTrainingConfig
from .common import read_corpus, read_records
from .flags import add_config_flags, config_from_args


@dataclass
class TrainLMOptions:
    """``w2s train lm``'s data and output.

    Attributes:
        out: output directory (a rerun resumes from its checkpoints).
        corpus: text files (one document per blank-line-separated paragraph) or JSONL with a 'text' field;
            none: the sentiment task's five Austen novels.
    """

    out: str
    corpus: tuple[str, ...] = ()


@dataclass
class TrainDPOOptions:
    """``w2s train dpo``'s model, data and output.

    Attributes:
        base: the model to tune (it is also the DPO reference).
        out: output directory (a rerun resumes).
        pairs: JSONL of {prompt, chosen, rejected}; none: build them for --task from the base model's own
            samples (saved as OUT/pairs.jsonl).
        task: the task the pairs are built for: sentiment (continuations of Austen openings, gold VADER) or
            reviews (answers to review and story instructions over the training topics, rendered with the
            base's chat template, gold VADER less the fluency penalty of w2s.tasks.reviews, scored by
            gemma-3-270m: `w2s setup gemma-3-270m`).
        num_prompts: prompts for the built pairs (reviews: at most its training instructions).
        pair_samples: samples per prompt; the pair is the highest- and lowest-reward one.
        pair_tokens: length of each sampled continuation.
        bt_scale: Bradley-Terry scale: P(a preferred) = sigmoid(scale * (reward(a) - reward(b))).
    """

    base: str
    out: str
    pairs: str | None = None
    task: str = field(default="sentiment", metadata={"choices": ("sentiment", "reviews")})
    num_prompts: int = 4000
    pair_samples: int = 4
    pair_tokens: int = 24
    bt_scale: float = 5.0


@dataclass
class TrainAlignerOptions:
    """``w2s train aligner``'s model, data and output.

    Attributes:
        base: any causal LM directory.
        records: JSONL from `w2s data corrections` (or its --whole-out).
        out: output directory (a rerun resumes).
    """

    base: str
    records: str
    out: str


def add_parser(sub) -> None:
    train = sub.add_parser("train", help="training recipes for the small models").add_subparsers(
        dest="recipe", required=True)
    lm = train.add_parser("lm", help="train a small causal LM from scratch (the untuned guide)")
    add_config_flags(lm, TrainLMOptions, LMTrainingConfig)
    lm.set_defaults(func=run_lm)
    dpo = train.add_parser("dpo", help="DPO-tune a copy of a model on preference pairs (the tuned guide)")
    add_config_flags(dpo, TrainDPOOptions, DPOTrainingConfig)
    dpo.set_defaults(func=run_dpo)
    al = train.add_parser("aligner", help="supervised fine-tuning of an aligner, loss on the correction only")
    add_config_flags(al, TrainAlignerOptions, AlignerTrainingConfig)
    al.set_defaults(func=run_aligner)


def run_lm(args) -> None:
    from ..tasks import sentiment
    from ..training.lm import train_lm

    texts = read_corpus(args.corpus) if args.corpus else sentiment.training_texts()
    print(f"trained model in {train_lm(texts, args.out, config_from_args(LMTrainingConfig, args))}")


def run_dpo(args) -> None:
    from ..models import ModelSpec, load
    from ..tasks import reviews, sentiment
    from ..training.dpo import build_preference_pairs, train_dpo

    config = config_from_args(DPOTrainingConfig, args)
    if args.pairs:
        pairs = [r for r in read_records(args.pairs, "prompt", "--pairs", plain=False) if not r.get("skipped")]
    else:
        if args.task == "reviews":
            prompts, reward = reviews.training_instructions()[: args.num_prompts], reviews.pair_reward()
        else:
            prompts = sentiment.training_prompts(args.num_prompts, seed=config.seed)
            reward = lambda _, texts: [sentiment.gold_reward(t) for t in texts]  # noqa: E731
        pairs = build_preference_pairs(load(ModelSpec(args.base)).model, prompts, reward, Path(args.out) / "pairs.jsonl",
                                       template="chat" if config.chat else "{prompt}", samples=args.pair_samples,
                                       max_new_tokens=args.pair_tokens, bt_scale=args.bt_scale, seed=config.seed)
    print(f"tuned model in {train_dpo(args.base, pairs, args.out, config)}")


def run_aligner(args) -> None:
    from ..training.aligner import train_aligner

    config = config_from_args(AlignerTrainingConfig, args)
    records = read_records(args.records, "correction", "--records", plain=False)
    print(f"aligner in {train_aligner(args.base, records, args.out, config)}")
