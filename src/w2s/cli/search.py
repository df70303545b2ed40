"""``w2s search``: weak-to-strong search and its baselines over a file of prompts."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from ..backends.base import SAMPLING_PRESETS
from ..configs import param_names
from ..jsonl import finite
from ..models import is_url, load_all
from ..search import METHOD_ALIASES, SEARCH_METHODS, canonical_method
from ..search.cbs import MAX_ROWS
from ..validation import check_range
from .common import error_record, read_records, run_settings, start_output, write_output
from .flags import add_config_flags, add_model_flags, config_from_args, model_specs

ROLES = {"strong": "strong", "tuned": "tuned", "untuned": "untuned"}
MODEL_HELP = {
    "strong": "the large model: a transformers model directory, a .gguf file, or the URL of an OpenAI-compatible "
              "engine, http(s)://host:port/v1 (default: SmolLM2-135M-Instruct)",
    "tuned": "the small tuned guide model, e.g. DPO or chat (default: the shipped sentiment guide)",
    "untuned": "the small untuned reference of the tuned model (default: the shipped one)",
}


@dataclass
class SearchOptions:
    """What ``w2s search`` runs on.

    Attributes:
        method: cbs (chunk-level beam search), bon (Best-of-N), sampling (plain sampling; ``base`` is its
            old name), eft (emulated fine-tuning), adaptive, pruned_bon or nudging (the tuned model writes
            where the strong model is unsure).
        prompts: JSONL with a 'prompt' field (a .jsonl file, or a first line starting with {), or one
            prompt per line; - for stdin.
        output: JSONL, one line per prompt in input order (its settings in OUTPUT.run.json); - for stdout.
        resume: keep the lines already in the output (a run with the same settings) and do the rest.
        overwrite: start the output afresh, deleting the lines it holds.
        seed: seeds each prompt's randomness, with its position.
        batch_size: prompts searched together.
        max_rows: the most large-model rows one prompt may sample at once (W*K for cbs, n for bon, W times
            the schedule's largest count for adaptive); a method over it is refused before any model loads.
        sampling_preset: named sampling settings (w2s.SAMPLING_PRESETS) as the defaults of the sampling
            flags (--temperature, --top-p, --top-k, --frequency-penalty, ...); the flags given override them.
    """

    method: str = field(metadata={"choices": (*SEARCH_METHODS, *METHOD_ALIASES)})
    prompts: str
    output: str
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    batch_size: int = 8
    max_rows: int = MAX_ROWS
    sampling_preset: str | None = field(default=None, metadata={"choices": tuple(SAMPLING_PRESETS)})


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="weak-to-strong search (and its baselines) over a file of prompts",
                       description="Steer the strong model with a tuned/untuned pair of small models.")
    add_model_flags(p, ROLES, remote=("strong",), helps=MODEL_HELP)
    add_config_flags(p, SearchOptions)
    # the methods' parameters: absent from the args unless given, so that those a method ignores are warned about
    add_config_flags(p, *SEARCH_METHODS.values(), required=("max_new_tokens",), suppress=True,
                     title="method parameters (each method uses its own)")
    p.set_defaults(func=run)


def method_config(args):
    """The method's config from the flags; a flag the method does not use is warned about."""
    cls = SEARCH_METHODS[args.method]
    others = {name for other in SEARCH_METHODS.values() for name in param_names(other)} - set(param_names(cls))
    for name in sorted(n for n in others if hasattr(args, n)):
        warnings.warn(f"--{name.replace('_', '-')} is ignored by --method {args.method}.", stacklevel=2)
    return config_from_args(cls, args)


def run(args) -> int:
    from ..scoring import LogRatioScorer

    args.method = canonical_method(args.method)
    config = method_config(args)  # validate before loading models
    check_range("max_rows", args.max_rows, low=1, integer=True)
    if hasattr(config, "check_rows"):
        config.check_rows(args.max_rows, "--max-rows")
    if args.method == "eft" and is_url(args.strong):
        raise ValueError("--method eft mixes the strong model's next-token logits with the guides' and needs a "
                         "local --strong model; use cbs, bon or sampling with a remote one.")
    if args.resume and args.overwrite:
        raise ValueError("give --resume (go on with the output's run) or --overwrite (start over), not both.")
    records = read_records(args.prompts)
    start_output(args.output, run_settings(args, config, ROLES, records, "--prompts"), resume=args.resume,
                 overwrite=args.overwrite)
    m = load_all(model_specs(args, ROLES))
    scorer = LogRatioScorer(m.tuned.model, m.untuned.model, m.tuned.template, m.untuned.template)

    def rows(batch: list[dict], start: int):
        prompts = [r["prompt"] for r in batch]
        kw = dict(seed=args.seed, batch_size=len(batch), start_index=start)
        if args.method == "nudging":
            results = config.generate(m.strong.model, m.tuned.model, prompts, base_template=m.strong.template,
                                      nudger_template=m.tuned.template, scorer=scorer, **kw)
        elif args.method == "eft":
            results = config.generate(m.strong.model, m.tuned.model, m.untuned.model, prompts, scorer=scorer,
                                      strong_template=m.strong.template, tuned_template=m.tuned.template,
                                      untuned_template=m.untuned.template, **kw)
        else:
            results = config.generate(m.strong.model, scorer, prompts, template=m.strong.template,
                                      max_rows=args.max_rows, **kw)
        for index, (record, result) in enumerate(zip(batch, results), start):
            yield result_row(index, record, result)

    return write_output(args, records, rows, unit="prompt", desc=type(config).__name__)


def result_row(index: int, record: dict, result) -> dict:
    """One output line: the input record with the result's fields (or an error record)."""
    if result.error is not None:  # a remote model failed for this prompt only, or it overflows a context
        return error_record(index, "prompt", result.prompt, result.error, result.error_kind, result.error_status)
    row = {**record, "prompt": result.prompt, "response": result.response, "score": finite(result.score),
           "finished": result.finished, "num_tokens": result.num_tokens,
           "sampled_tokens": result.sampled_tokens, "guide_tokens": result.guide_tokens, "method": result.method}
    row.update(getattr(result, "extra", {}))  # (Nudging: what each model wrote)
    if result.beams is not None:
        row["beams"] = [{"response": b.text, "score": finite(b.score), "finished": b.finished,
                         "num_tokens": b.num_tokens} for b in result.beams]
    return row

