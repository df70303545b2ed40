"""Command-line interface: ``w2s search | demo | setup | train | eval | serve``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Iterator

from . import defaults
from .jsonl import dumps, read_complete, resume_point

METHODS = ("cbs", "bon", "base", "eft")
# which optional flags each method uses; any other one given is ignored with a warning
METHOD_FLAGS = {
    "cbs": {"beam_width", "successors", "chunk_length"},
    "bon": {"n"},
    "base": set(),
    "eft": {"beta"},
}
# wall-clock times (time.time()) at which a command reached its phases; `w2s stream` writes them as JSON to
# the file $W2S_TIMINGS names (benchmarks/bench_startup.py): main, imported, loaded, first (text out), end
PHASES: dict[str, float] = {}


def mark(phase: str) -> None:
    """Note when ``phase`` was first reached."""
    PHASES.setdefault(phase, time.time())


def _chunk_length(text: str) -> int | None:
    if text.lower() in ("inf", "none", "infinity"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--chunk-length must be a positive integer or 'inf', got {text!r}")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Model flags shared by the commands; any left out is the demo's default model (see w2s.defaults)."""
    p.add_argument("--strong", help="large model: a transformers model directory, a .gguf file, or the URL of "
                   "an OpenAI-compatible engine, http(s)://host:port/v1 (default: SmolLM2-135M-Instruct)")
    p.add_argument("--tuned", help="small tuned guide model, e.g. DPO or chat (default: the shipped sentiment guide)")
    p.add_argument("--untuned", help="small untuned reference of the tuned model (default: the shipped one)")
    for who in ("strong", "tuned", "untuned"):
        p.add_argument(f"--{who}-template", metavar="T",
                       help=f"prompt template of the {who} model: a format string with {{prompt}}, or 'chat' "
                            "(default: the default model's, else '{prompt}')")
    add_remote_flags(p, "strong")
    add_device_flags(p)


def add_remote_flags(p: argparse.ArgumentParser, role: str) -> None:
    """Flags of a large model served by an OpenAI-compatible engine (``--ROLE http://host:port/v1``)."""
    g = p.add_argument_group(f"remote {role} model (when --{role} is an http(s):// URL)")
    g.add_argument(f"--{role}-model", metavar="NAME", help="the engine's model name (required for a URL)")
    g.add_argument(f"--{role}-tokenizer", metavar="PATH",
                   help="a local copy of the served model's tokenizer: its chat template (template 'chat')")
    g.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default 16)")
    g.add_argument("--request-timeout", type=float, default=60.0, help="seconds per request (default 60)")
    g.add_argument("--max-retries", type=int, default=5,
                   help="retries after a timeout, connection error, 429 or 5xx, with backoff (default 5)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default OPENAI_API_KEY; never a flag)")


def is_remote(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(("http://", "https://"))


def load_lm(args, role: str, path=None):
    """The ``role`` model: a :class:`w2s.RemoteModel` for an http(s) URL, else a local model."""
    path = getattr(args, role) if path is None else path
    if not is_remote(path):
        from .backends.transformers import load_model

        return load_model(path, dtype=args.dtype, device=args.device)
    from .backends.remote import RemoteModel

    name = getattr(args, f"{role}_model", None)
    if not name:
        raise ValueError(f"--{role} {path} is a URL: give the engine's model name with --{role}-model NAME.")
    return RemoteModel(path, name, api_key_env=args.api_key_env, concurrency=args.concurrency,
                       timeout=args.request_timeout, max_retries=args.max_retries,
                       tokenizer=getattr(args, f"{role}_tokenizer", None))


def add_device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")


def load_models(args) -> dict:
    """``strong``, ``tuned``, ``untuned`` and their templates: given paths, or the default models."""
    import w2s
    from w2s import defaults

    load = dict(dtype=args.dtype, device=args.device)
    paths = {
        "strong": args.strong or defaults.strong_model_dir(),
        "tuned": args.tuned or defaults.guide_dir("tuned"),
        "untuned": args.untuned or defaults.guide_dir("untuned"),
    }
    default_template = {"strong": defaults.STRONG_TEMPLATE, "tuned": defaults.GUIDE_TEMPLATE,
                        "untuned": defaults.GUIDE_TEMPLATE}
    models = {}
    for who, path in paths.items():
        models[who] = load_lm(args, who, path) if who == "strong" else w2s.load_model(path, **load)
        given = getattr(args, f"{who}_template")
        models[f"{who}_template"] = given or (default_template[who] if getattr(args, who) is None else "{prompt}")
    return models


def add_dataclass_flags(p: argparse.ArgumentParser, config_class) -> None:
    """One ``--field-name`` flag per field of a config dataclass, defaulting to the field's default."""
    for f in fields(config_class):
        if f.init and f.default is not MISSING:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                           help=f"(default: {f.default})")


def dataclass_from_args(config_class, args):
    return config_class(**{f.name: getattr(args, f.name) for f in fields(config_class) if f.init})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="w2s", description="Align a large LM at generation time with small ones.")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="weak-to-strong search (and its baselines) over a file of prompts",
                       description="Steer the strong model with a tuned/untuned pair of small models.")
    add_model_flags(s)
    s.add_argument("--method", required=True, choices=METHODS,
                   help="cbs: chunk-level beam search; bon: Best-of-N; base: plain sampling; eft: emulated fine-tuning")
    # method flags default to the config dataclass's own defaults (absent from args unless given)
    method_flag = dict(default=argparse.SUPPRESS)
    s.add_argument("--beam-width", type=int, help="W, beams kept per prompt (cbs; default 4)", **method_flag)
    s.add_argument("--successors", type=int, help="K, samples per beam per chunk (cbs; default 4)", **method_flag)
    s.add_argument("--chunk-length", type=_chunk_length, help="L, tokens per chunk or 'inf' (cbs; default 5)",
                   **method_flag)
    s.add_argument("--n", type=int, help="N, samples (bon; default 16)", **method_flag)
    s.add_argument("--beta", type=float, help="weight of the tuned/untuned log-ratio (eft; default 1.0)",
                   **method_flag)
    s.add_argument("--max-new-tokens", type=int, required=True, help="length limit in strong-model tokens")
    s.add_argument("--temperature", type=float, default=0.7)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=50, help="0 disables top-k")
    s.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=8, help="prompts searched together")
    s.add_argument("--prompts", required=True, help="JSONL with a 'prompt' field, or one prompt per line; - for stdin")
    s.add_argument("--output", required=True, help="JSONL, one line per prompt in input order; - for stdout")
    s.add_argument("--resume", action="store_true", help="keep the lines already in --output and do the rest")
    s.set_defaults(func=cmd_search)

    d = sub.add_parser("demo", help="plain vs weak-to-strong continuations of a real model, side by side")
    add_model_flags(d)
    d.add_argument("--prompts", type=int, default=6, help="number of held-out prompts")
    d.add_argument("--max-new-tokens", type=int, default=40)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    u = sub.add_parser("setup", help="convert the default strong model (GGUF) once to a cached safetensors copy, "
                       "and merge the shipped aligners into it once (cached too)")
    u.set_defaults(func=cmd_setup)

    from .training.dpo import DPOTrainingConfig
    from .training.lm import LMTrainingConfig

    train = sub.add_parser("train", help="training recipes for the small models").add_subparsers(
        dest="recipe", required=True)
    lm = train.add_parser("lm", help="train a small causal LM from scratch (the untuned guide)")
    lm.add_argument("--out", required=True, help="output directory (a rerun resumes from its checkpoints)")
    lm.add_argument("--corpus", nargs="+", help="text files (one document per blank-line-separated paragraph) "
                    "or JSONL with a 'text' field; default: the sentiment task's five Austen novels")
    add_dataclass_flags(lm, LMTrainingConfig)
    lm.set_defaults(func=cmd_train_lm)
    dpo = train.add_parser("dpo", help="DPO-tune a copy of a model on preference pairs (the tuned guide)")
    dpo.add_argument("--base", required=True, help="the model to tune (it is also the DPO reference)")
    dpo.add_argument("--out", required=True, help="output directory (a rerun resumes)")
    dpo.add_argument("--pairs", help="JSONL of {prompt, chosen, rejected}; default: build them for the "
                     "sentiment task from the base model's own samples (saved as OUT/pairs.jsonl)")
    dpo.add_argument("--num-prompts", type=int, default=4000, help="prompts for the built pairs")
    dpo.add_argument("--pair-samples", type=int, default=4,
                     help="samples per prompt; the pair is the highest- and lowest-reward one")
    dpo.add_argument("--pair-tokens", type=int, default=24, help="length of each sampled continuation")
    dpo.add_argument("--bt-scale", type=float, default=5.0,
                     help="Bradley-Terry scale: P(a preferred) = sigmoid(scale * (VADER(a) - VADER(b)))")
    add_dataclass_flags(dpo, DPOTrainingConfig)
    dpo.set_defaults(func=cmd_train_dpo)

    from .training.aligner import AlignerTrainingConfig

    al = train.add_parser("aligner", help="supervised fine-tuning of an aligner, loss on the correction only")
    al.add_argument("--base", required=True, help="any causal LM directory")
    al.add_argument("--records", required=True, help="JSONL from `w2s data corrections` (or --whole-out)")
    al.add_argument("--out", required=True, help="output directory (a rerun resumes)")
    add_dataclass_flags(al, AlignerTrainingConfig)
    al.set_defaults(func=cmd_train_aligner)

    for name, help_ in (("stream", "Stream Aligner: correct the upstream's answer sentence by sentence, streaming"),
                        ("align", "Aligner baseline: correct the upstream's whole answer in one pass")):
        c = sub.add_parser(name, help=help_)
        add_aligner_flags(c, role="aligner" if name == "stream" else "whole_aligner")
        add_remote_flags(c, "upstream")
        c.add_argument("--question", help="one question: corrected text is printed as it arrives")
        c.add_argument("--questions", help="JSONL with a 'question' field (or one per line); needs --output")
        c.add_argument("--output", help="JSONL, one record per question (a rerun resumes)")
        c.add_argument("--seed", type=int, default=0)
        c.add_argument("--batch-size", type=int, default=8, help="questions answered together")
        c.set_defaults(func=cmd_stream if name == "stream" else cmd_align)

    data = sub.add_parser("data", help="data builders").add_subparsers(dest="builder", required=True)
    dc = data.add_parser("corrections", help="run the Stream Aligner loop with a teacher: training records")
    add_aligner_flags(dc, role="teacher")
    add_remote_flags(dc, "upstream")
    dc.add_argument("--questions", required=True, help="JSONL with a 'question' field, or one per line")
    dc.add_argument("--out", required=True, help="sentence records {question, prefix, sentence, correction}")
    dc.add_argument("--whole-out", help="also whole-answer records {question, answer, correction} (Aligner)")
    dc.add_argument("--seed", type=int, default=0)
    dc.add_argument("--batch-size", type=int, default=8)
    dc.set_defaults(func=cmd_data_corrections)

    from .evaluation import sentiment as eval_sentiment
    from .evaluation import stream as eval_stream

    ev = sub.add_parser("eval", help="evaluations with tables and plots").add_subparsers(dest="task", required=True)
    eval_sentiment.add_parser(ev)
    eval_stream.add_parser(ev)

    from .serve import add_parser as add_serve_parser

    add_serve_parser(sub)
    return parser


def read_prompts(source: str, field: str = "prompt") -> list[dict]:
    """Records with a ``field`` field from JSONL, or ``{field: line}`` for each non-empty plain line."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            records.append({field: line})
        elif isinstance(record.get(field), str):
            records.append(record)
        else:
            raise ValueError(f"--{field}s {source}: line {number} is a JSON object without a string '{field}' field.")
    return records


def search_config(args):
    """The method's config dataclass from the flags; flags the method does not use are warned about."""
    from .search import BestOfN, ChunkBeamSearch, EmulatedFineTuning, Sampling

    fields = {"beam_width": "beam_width", "successors": "successors_per_beam", "chunk_length": "chunk_length",
              "n": "n", "beta": "beta"}
    given = {flag for flag in fields if hasattr(args, flag)}
    for flag in sorted(given - METHOD_FLAGS[args.method]):
        warnings.warn(f"--{flag.replace('_', '-')} is ignored by --method {args.method}.", stacklevel=2)
    kw = {fields[flag]: getattr(args, flag) for flag in given & METHOD_FLAGS[args.method]}
    kw.update(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
              top_k=args.top_k, stop=tuple(args.stop))
    config_class = {"cbs": ChunkBeamSearch, "bon": BestOfN, "eft": EmulatedFineTuning, "base": Sampling}
    return config_class[args.method](**kw)


def cmd_search(args) -> None:
    import w2s

    config = search_config(args)  # validate before loading models
    records = read_prompts(args.prompts)
    done = _resume_point(args.output, args.batch_size, len(records)) if args.resume else 0
    if done > len(records):
        raise ValueError(f"--output {args.output} has {done} lines but --prompts has only {len(records)} prompts.")
    m = load_models(args)
    scorer = w2s.LogRatioScorer(m["tuned"], m["untuned"], m["tuned_template"], m["untuned_template"])
    prompts = [r["prompt"] for r in records[done:]]
    kw = dict(seed=args.seed, batch_size=args.batch_size, progress=True, start_index=done)
    if args.method == "eft":
        if is_remote(args.strong):
            raise ValueError("--method eft mixes the strong model's next-token logits with the guides' and needs a "
                             "local --strong model; use cbs, bon or base with a remote one.")
        results = config.generate(m["strong"], m["tuned"], m["untuned"], prompts, scorer=scorer,
                                  strong_template=m["strong_template"], tuned_template=m["tuned_template"],
                                  untuned_template=m["untuned_template"], **kw)
    else:
        results = config.generate(m["strong"], scorer, prompts, template=m["strong_template"], **kw)
    _write_jsonl(args.output, records[done:], results, append=done > 0, first_index=done)


ALIGNER_ROLES = {"aligner": "the sentence-level aligner (default: the shipped positive-rewrite one)",
                 "whole_aligner": "the whole-answer aligner (default: the shipped positive-rewrite one)"}


def add_aligner_flags(p: argparse.ArgumentParser, role: str = "aligner", *, whole: bool = False) -> None:
    """Flags of the Stream Aligner commands; with no model flags they use the demo task's models.

    ``role``: ``"aligner"`` (w2s stream), ``"whole_aligner"`` (w2s align: its ``--aligner`` is the
    whole-answer one) or ``"teacher"``; ``whole`` also adds ``--whole-aligner`` (w2s eval stream)."""
    p.add_argument("--upstream", help="the large model whose answers are corrected (w2s stream and "
                   "align also take the URL of an OpenAI-compatible engine, http(s)://host:port/v1; "
                   "default: SmolLM2-135M-Instruct)")
    if role == "teacher":
        p.add_argument("--teacher", required=True, help="the teacher model (a causal LM directory), or a Python "
                       "function 'package.module:function' (question, prefix, sentence) -> correction")
    else:
        p.add_argument("--aligner", dest=role, help=ALIGNER_ROLES[role])
        if whole:
            p.add_argument("--whole-aligner", help=ALIGNER_ROLES["whole_aligner"])
    p.add_argument("--upstream-template", help="'chat' or a format string with {prompt} (default: 'chat')")
    p.add_argument("--teacher-template" if role == "teacher" else "--aligner-template", dest="corrector_template",
                   help="'chat' or a format string with {prompt} (default: the shipped aligner's, else 'chat')")
    p.add_argument("--max-sentences", type=int, default=defaults.STREAM_MAX_SENTENCES)
    p.add_argument("--max-sentence-tokens", type=int, default=defaults.STREAM_SENTENCE_TOKENS,
                   help="upstream tokens per sentence at most")
    p.add_argument("--temperature", type=float, default=0.7)
    add_device_flags(p)


def load_stream_models(args) -> dict:
    """``upstream``, the teacher or aligner(s) the command has flags for, and their templates: the given
    ones, or the demo task's."""
    from .backends.transformers import load_model

    mark("imported")
    load = dict(dtype=args.dtype, device=args.device)
    upstream = load_lm(args, "upstream", path=args.upstream or defaults.strong_model_dir())
    m = {"upstream": upstream, "upstream_template": args.upstream_template or "chat"}
    given = args.corrector_template
    if hasattr(args, "teacher"):
        m["teacher"] = load_callable(args.teacher) if _is_callable_spec(args.teacher) \
            else load_model(args.teacher, **load)
        m["teacher_template"] = given or "chat"
        return m
    paths = {who: getattr(args, who, None) for who in ALIGNER_ROLES if hasattr(args, who)}
    for who, path in paths.items():
        m[who] = load_model(path or defaults.aligner_dir("stream" if who == "aligner" else "whole"), **load)
    m["aligner_template"] = given or (defaults.ALIGNER_TEMPLATE if not any(paths.values()) else "chat")
    return m


def read_questions(source: str) -> list[str]:
    return [r["question"] for r in read_prompts(source, field="question")]


def _corrector(args):
    """The command's corrector: a Stream Aligner (w2s stream) or an Aligner (w2s align)."""
    from .aligner import Aligner, StreamAligner

    m = load_stream_models(args)
    common = dict(upstream_template=m["upstream_template"], aligner_template=m["aligner_template"],
                  temperature=args.temperature)
    if args.func is cmd_stream:
        return StreamAligner(m["upstream"], m["aligner"], max_sentences=args.max_sentences,
                             max_sentence_tokens=args.max_sentence_tokens, **common)
    return Aligner(m["upstream"], m["whole_aligner"], max_sentences=args.max_sentences,
                   max_new_tokens=args.max_sentences * args.max_sentence_tokens, **common)


def _run_questions(args, method) -> None:
    if args.question is not None:
        if args.func is cmd_stream:
            for step in method.stream(args.question, seed=args.seed):
                print(step.corrected, end="", flush=True)
                mark("first")
            print()
        else:
            print(method.run([args.question], seed=args.seed)[0].corrected)
        return
    if not (args.questions and args.output):
        raise ValueError("give --question TEXT, or --questions FILE with --output FILE.")
    from tqdm.auto import tqdm

    questions = read_questions(args.questions)
    done = _resume_point(args.output, args.batch_size, len(questions))
    with open(args.output, "a", encoding="utf-8") as out:
        for start in tqdm(range(done, len(questions), args.batch_size), desc=args.command, unit="batch"):
            batch = questions[start : start + args.batch_size]
            for index, answer in enumerate(_answer_batch(method, batch, args.seed, start), start):
                if isinstance(answer, Exception):
                    out.write(dumps({"index": index, "question": questions[index], "error": str(answer)}))
                    continue
                out.write(dumps({
                    "question": answer.question, "original": answer.original, "corrected": answer.corrected,
                    "first_seconds": answer.first_seconds, "total_seconds": answer.total_seconds,
                    "sentences": [{"original": s.original, "corrected": s.corrected, "elapsed": s.elapsed}
                                  for s in answer.steps]}))
            out.flush()


def _answer_batch(method, batch: list[str], seed: int, start: int) -> list:
    """Answers of a batch; when a remote upstream fails, the questions are redone one by one (same
    randomness) so that only the failing ones become errors (returned as the exception)."""
    from .backends.remote import RemoteError

    try:
        return method.run(batch, seed=seed, start_index=start)
    except RemoteError:
        pass
    answers = []
    for j, question in enumerate(batch):
        try:
            answers.append(method.run([question], seed=seed, start_index=start + j)[0])
        except RemoteError as err:
            answers.append(err)
    return answers


def cmd_stream(args) -> None:
    corrector = _corrector(args)
    mark("loaded")
    _run_questions(args, corrector)
    mark("end")
    if os.environ.get("W2S_TIMINGS"):
        Path(os.environ["W2S_TIMINGS"]).write_text(json.dumps(PHASES) + "\n", encoding="utf-8")


def cmd_align(args) -> None:
    _run_questions(args, _corrector(args))


def _is_callable_spec(spec: str) -> bool:
    return ":" in spec and not Path(spec).exists()


def load_callable(spec: str):
    """``package.module:function`` -> the function (a teacher or a rule given on the command line)."""
    import importlib

    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{spec!r} is neither a model path nor an importable 'module:function' ({e}).") from e
    if not callable(fn):
        raise ValueError(f"{spec!r} is not callable.")
    return fn


def cmd_data_corrections(args) -> None:
    from .aligner.data import build_corrections

    m = load_stream_models(args)
    n = build_corrections(m["upstream"], m["teacher"], read_questions(args.questions), args.out,
                          whole_out_path=args.whole_out, max_sentences=args.max_sentences,
                          max_sentence_tokens=args.max_sentence_tokens, upstream_template=m["upstream_template"],
                          teacher_template=m["teacher_template"], temperature=args.temperature, seed=args.seed,
                          batch_size=args.batch_size)
    print(f"{n} sentence records in {args.out}")


def cmd_train_aligner(args) -> None:
    from .training.aligner import AlignerTrainingConfig, train_aligner

    config = dataclass_from_args(AlignerTrainingConfig, args)
    print(f"aligner in {train_aligner(args.base, read_complete(args.records), args.out, config)}")


def cmd_demo(args) -> None:
    from .demo import run_demo

    if is_remote(args.strong):
        raise ValueError("w2s demo needs a local --strong model (it reports its size); use w2s search with a URL.")
    run_demo(load_models(args), num_prompts=args.prompts, max_new_tokens=args.max_new_tokens, seed=args.seed)


def cmd_setup(args) -> None:
    from . import defaults
    from .backends.transformers import load_model

    print(f"default strong model ready at {defaults.strong_model_dir()}")
    for kind in ("stream", "whole"):  # the first load merges an adapter and caches it (w2s.backends.adapters)
        load_model(defaults.aligner_dir(kind))
    print(f"shipped aligners merged into it, cached in {defaults.cache_dir() / 'merged'}")


def read_corpus(paths: list[str]) -> list[str]:
    texts = []
    for path in paths:
        content = Path(path).read_text(encoding="utf-8")
        if path.endswith(".jsonl"):
            texts += [json.loads(line)["text"] for line in content.splitlines() if line.strip()]
        else:
            texts += [" ".join(p.split()) for p in content.split("\n\n") if p.strip()]
    return texts


def cmd_train_lm(args) -> None:
    from .tasks import sentiment
    from .training.lm import LMTrainingConfig, train_lm

    config = dataclass_from_args(LMTrainingConfig, args)
    texts = read_corpus(args.corpus) if args.corpus else sentiment.training_texts()
    print(f"trained model in {train_lm(texts, args.out, config)}")


def cmd_train_dpo(args) -> None:
    from .backends.transformers import load_model
    from .tasks import sentiment
    from .training.dpo import DPOTrainingConfig, build_preference_pairs, train_dpo

    config = dataclass_from_args(DPOTrainingConfig, args)
    if args.pairs:
        pairs = [r for r in read_complete(args.pairs) if not r.get("skipped")]
    else:
        prompts = sentiment.training_prompts(args.num_prompts, seed=config.seed)
        pairs = build_preference_pairs(load_model(args.base), prompts, sentiment.gold_reward,
                                       Path(args.out) / "pairs.jsonl", samples=args.pair_samples,
                                       max_new_tokens=args.pair_tokens,
                                       bt_scale=args.bt_scale, seed=config.seed)
    print(f"tuned model in {train_dpo(args.base, pairs, args.out, config)}")


def _is_error_record(record: dict) -> bool:
    return "error" in record and "index" in record and not ({"response", "corrected"} & record.keys())


def _resume_point(path: str, batch_size: int, total: int) -> int:
    """Lines of ``path`` that ``--resume`` keeps (:func:`w2s.jsonl.resume_point`): the complete ones before
    the first error record, down to a batch boundary.  The rest is run again (its old lines are cut), so
    a resumed run retries what failed and, with the same ``--batch-size``, gives exactly what an
    uninterrupted one would: each prompt's randomness depends on (seed, index), and its batch is the same."""
    if path == "-":
        return 0
    return resume_point(path, batch_size, total, keep=lambda r: not _is_error_record(r))


def _write_jsonl(path: str, records: list[dict], results: Iterator, append: bool, first_index: int = 0) -> None:
    out = sys.stdout if path == "-" else open(path, "a" if append else "w", encoding="utf-8")
    try:
        for index, (record, result) in enumerate(zip(records, results), first_index):
            if getattr(result, "error", None) is not None:  # a remote model failed for this prompt only
                out.write(dumps({"index": index, "prompt": result.prompt, "error": result.error}))
                out.flush()
                continue
            row = {**record, "prompt": result.prompt, "response": result.response, "score": _finite(result.score),
                   "finished": result.finished, "num_tokens": result.num_tokens, "method": result.method}
            out.write(dumps(row))
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()


def _finite(x):
    return x if x is None or math.isfinite(x) else None


def main(argv: list[str] | None = None) -> int:
    PHASES.clear()
    mark("main")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as err:
        print(f"w2s {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
