"""Command-line interface: ``w2s search`` (and, as the project grows, demo / train / eval / serve)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Iterator


METHODS = ("cbs", "bon", "base", "eft")
# which optional flags each method uses; any other one given is ignored with a warning
METHOD_FLAGS = {
    "cbs": {"beam_width", "successors", "chunk_length"},
    "bon": {"n"},
    "base": set(),
    "eft": {"beta"},
}


def _chunk_length(text: str) -> int | None:
    if text.lower() in ("inf", "none", "infinity"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--chunk-length must be a positive integer or 'inf', got {text!r}")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strong", required=True, help="large model: a transformers model directory or a .gguf file")
    p.add_argument("--tuned", required=True, help="small tuned guide model (e.g. DPO or chat)")
    p.add_argument("--untuned", required=True, help="small untuned reference of the tuned model (e.g. SFT or base)")
    for who in ("strong", "tuned", "untuned"):
        p.add_argument(f"--{who}-template", default="{prompt}", metavar="T",
                       help=f"prompt template of the {who} model: a format string with {{prompt}}, or 'chat'")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")


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
    return parser


def read_prompts(source: str) -> list[dict]:
    """Records with a 'prompt' field from JSONL, or ``{"prompt": line}`` for each non-empty plain line."""
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
            records.append({"prompt": line})
        elif isinstance(record.get("prompt"), str):
            records.append(record)
        else:
            raise ValueError(f"--prompts {source}: line {number} is a JSON object without a string 'prompt' field.")
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
    done = _completed_lines(args.output) if args.resume else 0
    if done > len(records):
        raise ValueError(f"--output {args.output} has {done} lines but --prompts has only {len(records)} prompts.")
    load = dict(dtype=args.dtype, device=args.device)
    strong = w2s.load_model(args.strong, **load)
    tuned, untuned = w2s.load_model(args.tuned, **load), w2s.load_model(args.untuned, **load)
    scorer = w2s.LogRatioScorer(tuned, untuned, args.tuned_template, args.untuned_template)
    prompts = [r["prompt"] for r in records[done:]]
    kw = dict(seed=args.seed, batch_size=args.batch_size, progress=True, start_index=done)
    if args.method == "eft":
        results = config.generate(strong, tuned, untuned, prompts, scorer=scorer, strong_template=args.strong_template,
                                  tuned_template=args.tuned_template, untuned_template=args.untuned_template, **kw)
    else:
        results = config.generate(strong, scorer, prompts, template=args.strong_template, **kw)
    _write_jsonl(args.output, records[done:], results, append=done > 0)


def _completed_lines(path: str) -> int:
    """Number of complete JSON lines already in ``path`` (a torn last line is dropped)."""
    if path == "-" or not Path(path).exists():
        return 0
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    good = 0
    for line in lines:
        if not line.endswith("\n"):
            break
        try:
            json.loads(line)
        except json.JSONDecodeError:
            break
        good += 1
    Path(path).write_text("".join(lines[:good]), encoding="utf-8")
    return good


def _write_jsonl(path: str, records: list[dict], results: Iterator, append: bool) -> None:
    out = sys.stdout if path == "-" else open(path, "a" if append else "w", encoding="utf-8")
    try:
        for record, result in zip(records, results):
            row = {**record, "prompt": result.prompt, "response": result.response, "score": _finite(result.score),
                   "finished": result.finished, "num_tokens": result.num_tokens, "method": result.method}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()


def _finite(x):
    return x if x is None or math.isfinite(x) else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as err:
        print(f"w2s {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
