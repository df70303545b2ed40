"""``w2s eval sentiment | reviews | stream | code``: the evaluations, with their tables and plots (resumable)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..defaults import CODE_GUIDE_KINDS
from ..evaluation.code import CODE_RUNS
from ..evaluation.reviews import REVIEW_RUNS
from ..evaluation.sentiment import SENTIMENT_RUNS
from ..evaluation.stream import STREAM_SYSTEMS
from ..models import load_all
from ..validation import check_range
from .common import read_records
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
        from_raw: rewrite the summary, comparisons and plots from OUT/config.json and OUT/raw alone, loading no
            model (the other settings are ignored).
    """

    out: str
    prompts: int = 120
    seeds: tuple[int, ...] = (0, 1, 2)
    max_new_tokens: int = 50
    methods: tuple[str, ...] = field(default=(), metadata={"choices": tuple(SENTIMENT_RUNS)})
    batch_size: int = 8
    from_raw: bool = False


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
        from_raw: rewrite the summary, comparisons and plot from OUT/config.json and OUT/raw alone, loading no
            model (the other settings are ignored).
    """

    out: str
    questions: int = 40
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = field(default=(), metadata={"choices": tuple(STREAM_SYSTEMS)})
    batch_size: int = 1
    max_sentences: int = 4
    max_sentence_tokens: int = 48
    temperature: float = 0.7
    from_raw: bool = False


@dataclass
class ReviewsOptions:
    """``w2s eval reviews``'s settings.

    Attributes:
        out: output directory (rerun to resume).
        topics: a file of topics, one per line ("Write a short review of {topic}." each); none: the task's
            held-out topics.
        prompts: how many of the topics to evaluate, spread evenly over them; 0: all.
        seeds: the seeds, each a full run.
        max_new_tokens: length limit in generator tokens.
        methods: the compared runs (base always runs: the reference row); none: all.
        batch_size: instructions generated together.
        fluency: the model that scores fluency and takes no part in generation or guidance.
        from_raw: rescore and rewrite the summary, comparisons and plot from OUT/config.json and OUT/raw alone
            (each record keeps its vader and fluency), loading no model (the other settings are ignored).
    """

    out: str
    topics: str | None = None
    prompts: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    max_new_tokens: int = 64
    methods: tuple[str, ...] = field(default=(), metadata={"choices": tuple(REVIEW_RUNS)})
    batch_size: int = 4
    fluency: str = "gemma-3-270m"
    from_raw: bool = False


@dataclass
class CodeOptions:
    """``w2s eval code``'s settings.

    Attributes:
        out: output directory (rerun to resume).
        problems: a HumanEval-format JSONL file (task_id, prompt, entry_point, test; .jsonl or .jsonl.gz); none:
            HumanEval.  Its held-out split (odd task numbers) is evaluated.
        prompts: how many of the held-out problems, spread evenly over them; 0: all.
        seeds: the seeds, each a full run.
        max_new_tokens: length limit in strong-model tokens.
        methods: the compared runs (base always runs: the reference row); none: all.
        batch_size: problems generated together.
        guides: the guide pair: style (SmolLM2-135M-Instruct and its DPO adapter preferring commented code) or
            correct (Qwen2.5-Coder-0.5B-Instruct and its DPO adapter preferring passing code); --tuned and
            --untuned replace either model.
        exec_timeout: seconds each completion's tests may run in the sandbox.
        aligner: the line-level aligner of the stream-aligner runs (a model directory or a w2s: name, in its chat
            template); needed by those runs only.
        whole_aligner: the whole-answer aligner of the aligner run (the same kinds of name); needed by it only.
        from_raw: rewrite the summary, comparisons and plot from OUT/config.json and OUT/raw alone, executing and
            loading nothing (the other settings are ignored).
    """

    out: str
    problems: str | None = None
    prompts: int = 0
    seeds: tuple[int, ...] = (0,)
    max_new_tokens: int = 320
    methods: tuple[str, ...] = field(default=(), metadata={"choices": tuple(CODE_RUNS)})
    batch_size: int = 4
    guides: str = field(default="style", metadata={"choices": CODE_GUIDE_KINDS})
    exec_timeout: float = 5.0
    aligner: str | None = None
    whole_aligner: str | None = None
    from_raw: bool = False


STREAM_ROLES = {"upstream": "upstream", "aligner": "aligner", "whole_aligner": "whole_aligner"}
# w2s eval reviews: the models of the weak-to-strong claim (each a flag away)
REVIEW_DEFAULTS = {"strong": "qwen2.5-coder-0.5b-instruct", "tuned": "w2s:reviews-tuned",
                   "untuned": "w2s:default-strong"}
REVIEW_HELPS = {"strong": "the large model: a model directory, a set-up name or an engine URL (default: "
                          "qwen2.5-coder-0.5b-instruct, `w2s setup qwen2.5-coder-0.5b-instruct`)",
                "tuned": "the tuned guide (default: the shipped DPO adapter of SmolLM2-135M-Instruct, "
                         "`make review-guides`; `w2s train dpo --task reviews` trains another)",
                "untuned": "the untuned guide (default: SmolLM2-135M-Instruct, the default strong model)"}


# w2s eval code: each guide pair's models (the strong model is the 0.5B coder unless told otherwise)
CODE_DEFAULTS = {"style": {"strong": "qwen2.5-coder-0.5b-instruct", "tuned": "w2s:code-style-tuned",
                           "untuned": "w2s:default-strong"},
                 "correct": {"strong": "qwen2.5-coder-1.5b-instruct", "tuned": "w2s:code-correct-tuned",
                             "untuned": "qwen2.5-coder-0.5b-instruct"}}
CODE_HELPS = {"strong": "the large model: a model directory, a set-up name or an engine URL (default: the 0.5B "
                        "coder with --guides style, the 1.5B with --guides correct; `w2s setup NAME`)",
              "tuned": "the tuned guide (default: the shipped adapter of --guides' pair, `make code-guides`)",
              "untuned": "the untuned guide (default: SmolLM2-135M-Instruct for style, Qwen2.5-Coder-0.5B-Instruct "
                         "for correct)"}


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluations with tables and plots").add_subparsers(dest="task", required=True)
    s = ev.add_parser("sentiment", help="the paper's controlled-sentiment comparison",
                      description="Gold reward vs compute for CBS, Best-of-N, EFT and the tuned small model alone, "
                                  "with one strong model (resumable).")
    add_model_flags(s, ROLES, remote=("strong",), helps=MODEL_HELP)
    add_config_flags(s, SentimentOptions)
    s.set_defaults(func=run_sentiment)
    r = ev.add_parser("reviews", help="weak-to-strong on review instructions: VADER, fluency, combined gold",
                      description="Base, Best-of-4/16, CBS 2x2 and 4x4 and the guides alone on 'Write a short review "
                                  "of {topic}.' over held-out topics; gold VADER and fluency under a model that takes "
                                  "no part (resumable). All models use their chat template unless told otherwise.")
    add_model_flags(r, ROLES, remote=("strong",), helps=REVIEW_HELPS)
    add_config_flags(r, ReviewsOptions)
    r.set_defaults(func=run_reviews)
    t = ev.add_parser("stream", help="the Stream Aligner demo task: gold metrics and latency",
                      description="Upstream alone, Aligner, Stream Aligner (plain and speculative) and the teacher "
                                  "on held-out questions of the positive-rewrite task (resumable).")
    add_model_flags(t, STREAM_ROLES, helps=HELPS)
    add_config_flags(t, StreamEvalOptions)
    t.set_defaults(func=run_stream)
    c = ev.add_parser("code", help="weak-to-strong on HumanEval: executed tests and the comment rule",
                      description="Greedy and sampled strong model, Best-of-4/16, CBS 2x2 and 4x4 with line chunks, "
                                  "the guides alone, and the strong model's answer corrected by an aligner (line by "
                                  "line, or whole) on HumanEval's held-out problems (odd task numbers), every "
                                  "completion's tests run in the sandbox (resumable). Every model continues the "
                                  "problem's text (template '{prompt}').")
    add_model_flags(c, ROLES, remote=("strong",), helps=CODE_HELPS)
    add_config_flags(c, CodeOptions)
    c.set_defaults(func=run_code)


def _from_raw(args, module: str) -> bool:
    """With ``--from-raw``: rewrite ``args.out``'s tables from its raw files (no model) and print the summary."""
    if not getattr(args, "from_raw", False):
        return False
    import importlib

    importlib.import_module(f"w2s.evaluation.{module}").rewrite_from_raw(args.out)
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"), end="")
    return True


def run_sentiment(args) -> None:
    from ..evaluation.sentiment import evaluate_sentiment
    from ..tasks.sentiment import heldout_prompts

    if _from_raw(args, "sentiment"):
        return
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

    if _from_raw(args, "stream"):
        return
    questions = spread("questions", positive.questions("heldout"), args.questions, "held-out questions")
    m = load_all(model_specs(args, STREAM_ROLES))
    evaluate_stream(args.out, m.upstream.model, m.aligner.model, m.whole_aligner.model, questions,
                    upstream_template=m.upstream.template, aligner_template=m.aligner.template,
                    max_sentences=args.max_sentences, max_sentence_tokens=args.max_sentence_tokens,
                    temperature=args.temperature, seeds=args.seeds, methods=args.methods or None,
                    batch_size=args.batch_size, whole_aligner_template=m.whole_aligner.template)
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"), end="")


def spread(name: str, items: list, count: int, what: str) -> list:
    """``count`` of ``items``, evenly spaced over the whole list (its topics and forms all represented)."""
    check_range(name, count, low=1, integer=True)
    if count > len(items):
        raise ValueError(f"{name} must be at most {len(items)} ({what}), got {count}.")
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def _with_defaults(specs: dict, defaults: dict, template: str) -> dict:
    """``specs`` with each role's path defaulted (``defaults``: role -> a path, a set-up name or a shipped
    ``w2s:`` name) and its template defaulted to ``template``."""
    from ..names import resolve_model

    return {role: replace(spec, path=resolve_model(spec.path or defaults[role], f"the {role} model"),
                          template=spec.template or template) for role, spec in specs.items()}


def run_reviews(args) -> None:
    from ..evaluation.reviews import evaluate_reviews
    from ..models import ModelSpec, load
    from ..tasks import reviews

    if _from_raw(args, "reviews"):
        return
    topics = [r["topic"] for r in read_records(args.topics, "topic")] if args.topics else list(reviews.HELDOUT_TOPICS)
    if args.prompts:
        topics = spread("prompts", topics, args.prompts, "the topics")
    m = load_all(_with_defaults(model_specs(args, ROLES), REVIEW_DEFAULTS, "chat"))
    evaluate_reviews(args.out, m.strong.model, m.tuned.model, m.untuned.model, load(ModelSpec(args.fluency)).model,
                     reviews.review_instructions(topics), strong_template=m.strong.template,
                     tuned_template=m.tuned.template, untuned_template=m.untuned.template, seeds=args.seeds,
                     max_new_tokens=args.max_new_tokens, methods=args.methods or None, batch_size=args.batch_size)
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"), end="")


def run_code(args) -> None:
    from ..evaluation.code import evaluate_code
    from ..models import ModelSpec, load
    from ..tasks import code

    if _from_raw(args, "code"):
        return
    problems = code.split(code.load_problems(args.problems), "test")
    if args.prompts:
        problems = spread("prompts", problems, args.prompts, "the held-out problems")
    limits = code.Limits(timeout=args.exec_timeout)
    m = load_all(_with_defaults(model_specs(args, ROLES), CODE_DEFAULTS[args.guides], "{prompt}"))
    aligners = {role: load(ModelSpec(path, role=role)).model for role in ("aligner", "whole_aligner")
                if (path := getattr(args, role)) is not None}
    evaluate_code(args.out, m.strong.model, m.tuned.model, m.untuned.model, problems, strong_template=m.strong.template,
                  tuned_template=m.tuned.template, untuned_template=m.untuned.template, seeds=args.seeds,
                  max_new_tokens=args.max_new_tokens, methods=args.methods or None, batch_size=args.batch_size,
                  limits=limits, guides=args.guides, **aligners)
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"), end="")
