"""``w2s eval sentiment | stream``: the evaluations, with their tables and plots (resumable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..evaluation.sentiment import SENTIMENT_RUNS
from ..evaluation.stream import STREAM_SYSTEMS
from ..models import load_all
from ..validation import check_range
from .flags import add_config_flags, add_model_flags, model_specs
from .search import MODEL_HELP, ROLES
from .stream import HELPS


@dataclass
class SentimentOptions:
    """``w2s eval sentiment``'s settings.

    Attributes:
        out: output directory (rerun to resume).
        prompts: number of held-out prompts.
        seeds: the seeds, each a full run.
        max_new_tokens: length limit in generator tokens.
        methods: the compared runs; none: all.
        batch_size: prompts generated together.
    """

    out: str
    prompts: int = 120
    seeds: tuple[int, ...] = (0, 1, 2)
    max_new_tokens: int = 50
    methods: tuple[str, ...] = field(default=(), metadata={"choices": tuple(SENTIMENT_RUNS)})
    batch_size: int = 8


@dataclass
class StreamEvalOptions:
    """``w2s eval stream``'s settings.

    Attributes:
        out: output directory (rerun to resume).
        questions: number of held-out questions.
        seeds: the seeds, each a full run.
        methods: the compared systems; none: all.
        batch_size: questions answered together (1: per-user latency).
        max_sentences: rounds (corrected sentences) per answer.
        max_sentence_tokens: upstream tokens per sentence.
        temperature: the upstream's sampling temperature.
    """

    out: str
    questions: int = 40
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = field(default=(), metadata={"choices": tuple(STREAM_SYSTEMS)})
    batch_size: int = 1
    max_sentences: int = 4
    max_sentence_tokens: int = 48
    temperature: float = 0.7


STREAM_ROLES = {"upstream": "upstream", "aligner": "aligner", "whole_aligner": "whole_aligner"}


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluations with tables and plots").add_subparsers(dest="task", required=True)
    s = ev.add_parser("sentiment", help="the paper's controlled-sentiment comparison",
                      description="Gold reward vs compute for CBS, Best-of-N, EFT and the tuned small model alone, "
                                  "with one strong model (resumable).")
    add_model_flags(s, ROLES, remote=("strong",), helps=MODEL_HELP)
    add_config_flags(s, SentimentOptions)
    s.set_defaults(func=run_sentiment)
    t = ev.add_parser("stream", help="the Stream Aligner demo task: gold metrics and latency",
                      description="Upstream alone, Aligner, Stream Aligner (plain and speculative) and the teacher "
                                  "on held-out questions of the positive-rewrite task (resumable).")
    add_model_flags(t, STREAM_ROLES, helps=HELPS)
    add_config_flags(t, StreamEvalOptions)
    t.set_defaults(func=run_stream)


def run_sentiment(args) -> None:
    from ..evaluation.sentiment import evaluate_sentiment
    from ..tasks.sentiment import heldout_prompts

    check_range("prompts", args.prompts, low=1, integer=True)
    m = load_all(model_specs(args, ROLES))
    evaluate_sentiment(args.out, m.strong.model, m.tuned.model, m.untuned.model, heldout_prompts(args.prompts),
                       strong_template=m.strong.template, tuned_template=m.tuned.template,
                       untuned_template=m.untuned.template, seeds=args.seeds, max_new_tokens=args.max_new_tokens,
                       methods=args.methods or None, batch_size=args.batch_size)
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"), end="")


def run_stream(args) -> None:
    from ..evaluation.stream import evaluate_stream
    from ..tasks import positive

    check_range("questions", args.questions, low=1, integer=True)
    held_out = positive.questions("heldout")
    if args.questions > len(held_out):
        raise ValueError(f"questions must be at most {len(held_out)} (held-out questions), got {args.questions}.")
    m = load_all(model_specs(args, STREAM_ROLES))
    step = len(held_out) / args.questions  # spread over topics and templates
    questions = [held_out[int(i * step)] for i in range(args.questions)]
    evaluate_stream(args.out, m.upstream.model, m.aligner.model, m.whole_aligner.model, questions,
                    upstream_template=m.upstream.template, aligner_template=m.aligner.template,
                    max_sentences=args.max_sentences, max_sentence_tokens=args.max_sentence_tokens,
                    temperature=args.temperature, seeds=args.seeds, methods=args.methods or None,
                    batch_size=args.batch_size, whole_aligner_template=m.whole_aligner.template)
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"), end="")
