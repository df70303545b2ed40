"""``w2s stream``, ``w2s align`` and ``w2s data corrections``: the Stream Aligner, the Aligner baseline,
and the training records a teacher makes in the aligner's place."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import defaults
from ..aligner import Aligner, StreamAligner
from ..backends.base import SAMPLING_PRESETS, ContextLengthError, error_kind
from ..defaults import CODE_GUIDE_KINDS
from ..models import load_all
from .common import error_record, mark, PHASES, read_questions, run_settings, start_output, write_output
from .flags import SAMPLING_FLAGS, add_config_flags, add_model_flags, config_from_args, model_specs

# the demo task's lengths (w2s.tasks.positive), the defaults of these commands
DEMO_LENGTHS = {"max_sentences": defaults.STREAM_MAX_SENTENCES, "max_sentence_tokens": defaults.STREAM_SENTENCE_TOKENS}
ALIGN_LENGTHS = {"max_sentences": defaults.STREAM_MAX_SENTENCES,
                 "max_new_tokens": defaults.STREAM_MAX_SENTENCES * defaults.STREAM_SENTENCE_TOKENS}
UPSTREAM_HELP = ("the large model whose answers are corrected: a model directory, a .gguf file, or the URL of an "
                 "OpenAI-compatible engine, http(s)://host:port/v1 (default: SmolLM2-135M-Instruct)")
HELPS = {"upstream": UPSTREAM_HELP,
         "aligner": "the sentence-level aligner (default: the shipped positive-rewrite one)",
         "whole_aligner": "the whole-answer aligner (default: the shipped positive-rewrite one)",
         "teacher": "the teacher model (a causal LM directory), or a Python function 'py:package.module:function' "
                    "(question, prefix, sentence) -> correction"}
# each command's models: role -> flag name (align's --aligner is the whole-answer aligner)
STREAM_ROLES = {"upstream": "upstream", "aligner": "aligner"}
ALIGN_ROLES = {"upstream": "upstream", "whole_aligner": "aligner"}
CORRECTION_ROLES = {"upstream": "upstream", "teacher": "teacher"}


@dataclass
class AnswerOptions:
    """What ``w2s stream`` and ``w2s align`` answer.

    Attributes:
        question: one question: the corrected text is printed as it arrives.
        questions: JSONL with a 'question' field (or one question per line); needs --output.
        output: JSONL, one record per question (its settings in OUTPUT.run.json); a rerun with the same
            settings goes on with it.
        overwrite: start the output afresh, deleting the records it holds.
        seed: seeds each question's randomness, with its position.
        batch_size: questions answered together.
        sampling_preset: named sampling settings of the upstream (w2s.SAMPLING_PRESETS) as the defaults of
            the sampling flags (--temperature, --top-p, --top-k, --frequency-penalty, ...); the flags given
            override them.
    """

    question: str | None = None
    questions: str | None = None
    output: str | None = None
    overwrite: bool = False
    seed: int = 0
    batch_size: int = 8
    sampling_preset: str | None = field(default=None, metadata={"choices": tuple(SAMPLING_PRESETS)})


@dataclass
class CorrectionsOptions:
    """What ``w2s data corrections`` writes.

    Attributes:
        questions: JSONL with a 'question' field, or one question per line.
        out: sentence records {question, prefix, sentence, correction} (its settings in OUT.run.json); a
            rerun with the same settings goes on with it.
        whole_out: also whole-answer records {question, answer, correction} (for the Aligner).
        overwrite: start the outputs afresh, deleting the records they hold.
        seed: seeds each question's randomness, with its position.
        batch_size: questions answered together.
        sampling_preset: named sampling settings of the upstream (w2s.SAMPLING_PRESETS) as the defaults of
            the sampling flags (--temperature, --top-p, --top-k, --frequency-penalty, ...); the flags given
            override them.
    """

    questions: str
    out: str
    whole_out: str | None = None
    overwrite: bool = False
    seed: int = 0
    batch_size: int = 8
    sampling_preset: str | None = field(default=None, metadata={"choices": tuple(SAMPLING_PRESETS)})


@dataclass
class CodePairsOptions:
    """What ``w2s data code-pairs`` samples and writes (w2s.training.code_pairs).

    Attributes:
        model: the coder that samples (a model directory, a set-up name or a .gguf file).
        out: the pairs file (JSON lines; every sample with its verdict in samples.jsonl beside it); a rerun
            goes on with it.
        kind: style (passing commented over passing uncommented) or correct (passing over failing).
        problems: a HumanEval-format JSONL file; none: HumanEval.  Its training split (even task numbers) is used.
        samples: samples per problem (and, for style, per instruction variant).
        max_new_tokens: length limit per sample.
        temperature: the coder's sampling temperature (top-p 0.95).
        seed: seeds each problem's samples, with its position.
        batch_size: problems sampled together.
        limit: the first N training problems only; 0: all.
    """

    model: str
    out: str
    kind: str = field(default="style", metadata={"choices": CODE_GUIDE_KINDS})
    problems: str | None = None
    samples: int = 4
    max_new_tokens: int = 256
    temperature: float = 0.8
    seed: int = 0
    batch_size: int = 4
    limit: int = 0


@dataclass
class CodeCorrectionsOptions:
    """What ``w2s data code-corrections`` runs and writes (w2s.training.code_corrections).

    Attributes:
        upstream: the coder whose answers are corrected (a model directory, a set-up name or a .gguf file).
        teacher: the coder that explains each line (the same kinds of name).
        out: the loop's line records {question, prefix, sentence, correction, rejected} (a rerun goes on with it).
        train_out: also the line aligner's training records: the line records without a comment added under
            a comment line.
        whole_out: also whole-answer records {question, answer, correction} made of those (the Aligner's).
        problems: a HumanEval-format JSONL file; none: HumanEval.  Its training split (even task numbers) is used.
        max_lines: logical lines per answer.
        temperature: the upstream's sampling temperature (top-p 0.95).
        seed: seeds each problem's answer, with its position.
        batch_size: problems answered together.
        limit: the first N training problems only; 0: all.
    """

    upstream: str
    teacher: str
    out: str
    train_out: str | None = None
    whole_out: str | None = None
    problems: str | None = None
    max_lines: int = 24
    temperature: float = 0.8
    seed: int = 0
    batch_size: int = 4
    limit: int = 0


def add_parsers(sub) -> None:
    s = sub.add_parser("stream", help="Stream Aligner: correct the upstream's answer sentence by sentence, streaming")
    add_model_flags(s, STREAM_ROLES, remote=("upstream",), helps=HELPS)
    add_config_flags(s, AnswerOptions, StreamAligner, defaults=DEMO_LENGTHS, suppress=SAMPLING_FLAGS)
    s.set_defaults(func=run_stream)
    a = sub.add_parser("align", help="Aligner baseline: correct the upstream's whole answer in one pass")
    add_model_flags(a, ALIGN_ROLES, remote=("upstream",), helps=HELPS)
    add_config_flags(a, AnswerOptions, Aligner, defaults=ALIGN_LENGTHS, suppress=SAMPLING_FLAGS)
    a.set_defaults(func=run_align)
    data = sub.add_parser("data", help="data builders").add_subparsers(dest="builder", required=True)
    c = data.add_parser("corrections", help="run the Stream Aligner loop with a teacher: training records")
    add_model_flags(c, CORRECTION_ROLES, remote=("upstream",), required=("teacher",), helps=HELPS)
    add_config_flags(c, CorrectionsOptions, StreamAligner, defaults=DEMO_LENGTHS, suppress=SAMPLING_FLAGS)
    c.set_defaults(func=run_corrections)
    k = data.add_parser("code-pairs", help="preference pairs for the code guides, from a coder's executed samples "
                        "on HumanEval's training problems")
    add_config_flags(k, CodePairsOptions)
    k.set_defaults(func=run_code_pairs)
    r = data.add_parser("code-corrections", help="Stream Aligner records for code: a coder's answers to HumanEval's "
                        "training problems, each line explained in a comment by a coder teacher")
    add_config_flags(r, CodeCorrectionsOptions)
    r.set_defaults(func=run_code_corrections)


def run_stream(args) -> int:
    from ..backends import transformers  # noqa: F401 - torch and transformers: the start-up's first phase

    mark("imported")
    status = _answer(args, config_from_args(StreamAligner, args), STREAM_ROLES)
    mark("end")
    if os.environ.get("W2S_TIMINGS"):
        Path(os.environ["W2S_TIMINGS"]).write_text(json.dumps(PHASES) + "\n", encoding="utf-8")
    return status


def run_align(args) -> int:
    return _answer(args, config_from_args(Aligner, args), ALIGN_ROLES)


def _answer(args, config, roles: dict[str, str]) -> int:
    """One question printed, or a file of them written (checked before the models load); the exit status."""
    if args.question is None:
        if not (args.questions and args.output):
            raise ValueError("give --question TEXT, or --questions FILE with --output FILE.")
        questions = read_questions(args.questions)
        start_output(args.output, run_settings(args, config, roles, questions, "--questions"),
                     overwrite=args.overwrite)
    m = load_all(model_specs(args, roles))
    mark("loaded")
    upstream, aligner = (getattr(m, role) for role in roles)
    models = (upstream.model, aligner.model)
    templates = dict(upstream_template=upstream.template, aligner_template=aligner.template)
    if args.question is not None:
        if isinstance(config, StreamAligner):
            for step in config.stream(*models, args.question, seed=args.seed, **templates):
                print(step.corrected, end="", flush=True)
                mark("first")
            print()
        else:
            print(config.run(*models, [args.question], seed=args.seed, **templates)[0].corrected)
        return 0

    def rows(batch: list[str], start: int) -> list[dict]:
        return [answer_row(start + j, batch[j], answer)
                for j, answer in enumerate(_answer_batch(config, models, templates, batch, args.seed, start))]

    return write_output(args, questions, rows, unit="question", desc=args.command)


def answer_row(index: int, question: str, answer) -> dict:
    if isinstance(answer, Exception):
        return error_record(index, "question", question, str(answer), error_kind(answer),
                            getattr(answer, "status", None))
    return {"question": answer.question, "original": answer.original, "corrected": answer.corrected,
            "first_seconds": answer.first_seconds, "total_seconds": answer.total_seconds,
            "sentences": [{"original": s.original, "corrected": s.corrected, "elapsed": s.elapsed}
                          for s in answer.steps]}


def _answer_batch(config, models, templates, batch: list[str], seed: int, start: int) -> list:
    """Answers of a batch; when a remote upstream fails, or a question overflows a model's context, the
    questions are redone one by one (same randomness) so that only the failing ones become errors
    (returned as the exception)."""
    from ..backends.base import RemoteError

    try:
        return config.run(*models, batch, seed=seed, start_index=start, **templates)
    except (RemoteError, ContextLengthError):
        pass
    answers = []
    for j, question in enumerate(batch):
        try:
            answers.append(config.run(*models, [question], seed=seed, start_index=start + j, **templates)[0])
        except (RemoteError, ContextLengthError) as err:
            answers.append(err)
    return answers


def run_corrections(args) -> None:
    from ..aligner.data import build_corrections

    loop = config_from_args(StreamAligner, args)
    questions = read_questions(args.questions)
    settings = run_settings(args, loop, CORRECTION_ROLES, questions, "--questions")
    for flag, path in (("--out", args.out), ("--whole-out", args.whole_out)):
        if path is not None:
            start_output(path, settings, overwrite=args.overwrite, flag=flag)
    m = load_all(model_specs(args, CORRECTION_ROLES))
    n = build_corrections(m.upstream.model, m.teacher.model, questions, args.out,
                          whole_out_path=args.whole_out, loop=loop, upstream_template=m.upstream.template,
                          teacher_template=m.teacher.template, seed=args.seed, batch_size=args.batch_size)
    print(f"{n} sentence records in {args.out}")


def run_code_pairs(args) -> int:
    from ..models import ModelSpec, load
    from ..tasks import code
    from ..training.code_pairs import build_code_pairs, data_hash

    problems = code.split(code.load_problems(args.problems), "train")[: args.limit or None]
    pairs = build_code_pairs(load(ModelSpec(args.model)).model, problems, args.out, kind=args.kind,
                             samples=args.samples, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             seed=args.seed, batch_size=args.batch_size)
    print(f"{len(pairs)} pairs of {len(problems)} problems in {args.out} (sha256 {data_hash(args.out)})")
    return 0


def run_code_corrections(args) -> int:
    from ..models import ModelSpec, load
    from ..tasks import code
    from ..training.code_corrections import build_code_corrections
    from ..training.code_pairs import data_hash

    problems = code.split(code.load_problems(args.problems), "train")[: args.limit or None]
    upstream, teacher = (load(ModelSpec(path)).model for path in (args.upstream, args.teacher))
    n = build_code_corrections(upstream, teacher, problems, args.out, train_out_path=args.train_out,
                               whole_out_path=args.whole_out,
                               max_lines=args.max_lines, temperature=args.temperature, seed=args.seed,
                               batch_size=args.batch_size)
    print(f"{n} line records of {len(problems)} problems in {args.out} (sha256 {data_hash(args.out)})")
    return 0
