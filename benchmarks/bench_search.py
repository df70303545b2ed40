"""Speed of weak-to-strong search against plain decoding of the same rows, as ratios measured in one run.

Models: the default strong model (SmolLM2-135M-Instruct, ``w2s setup``'s cached copy) and the shipped
sentiment guides; 8 prompts, temperature 0.7, top-k 50, one thread unless ``--threads``.  Figures:

- ``cbs_over_plain_sampling``: CBS(4,4,L) / w2s plain sampling of the same 16 rows per prompt (one chunk,
  no scoring), same length.  Target <= 1.15: the search adds guide scoring and beam reordering only.
- ``cbs_over_generate_static``: CBS(4,4,8) / ``transformers.generate(do_sample=True)`` of the same 128
  rows (8 prompts x 16) with ``cache_implementation="static"``, same length.  Target <= 0.8.
- ``cbs_growth_2T_over_T``: CBS time at 2T / at T.  Target <= 2.2 (no quadratic re-encoding).
- ``scoring_incremental_over_scratch``: the guides' share of CBS, incremental / from scratch.

Usage:  python benchmarks/bench_search.py --out benchmarks/results/search.json [--tokens 48] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import w2s
from w2s import defaults
from w2s.backends.gguf import strong_model_dir
from w2s.backends import SamplingParams

PROMPTS = [f"Once upon a time {i}" for i in range(1, 9)]
SAMPLING = dict(temperature=0.7, top_k=50)


class TimedScorer:
    def __init__(self, scorer):
        self.scorer, self.seconds = scorer, 0.0

    def score(self, *args):
        start = time.perf_counter()
        out = self.scorer.score(*args)
        self.seconds += time.perf_counter() - start
        return out


def seconds(fn, repeats: int):
    """Best of ``repeats`` runs (after none: callers warm up), and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=48, help="T: max_new_tokens (the growth figure also runs 2T)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--quick", action="store_true", help="skip CBS with L=5 and the from-scratch scoring run")
    ap.add_argument("--out", default="benchmarks/results/search.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    load = lambda path: w2s.load_model(path, device=args.device, dtype=args.dtype)  # noqa: E731
    strong = load(strong_model_dir())
    guides = Path(defaults.__file__).parent / "weights" / "sentiment"
    tuned, untuned = load(guides / "tuned"), load(guides / "untuned")
    T = args.tokens

    def plain(tokens):  # 16 rows per prompt, one chunk, no scoring: the strong model's bare cost
        session = strong.open(PROMPTS, SamplingParams(**SAMPLING), list(range(len(PROMPTS))))
        return session.expand(list(range(len(PROMPTS))), 16, tokens)

    def generate_static(tokens):
        tok = strong.tokenizer
        tok.padding_side = "left"
        batch = tok(PROMPTS, return_tensors="pt", padding=True).to(strong.device)
        with torch.inference_mode():
            return strong.model.generate(**batch, do_sample=True, max_new_tokens=tokens, min_new_tokens=tokens,
                                         num_return_sequences=16, pad_token_id=strong.pad_id,
                                         cache_implementation="static", **SAMPLING)

    def search(tokens, chunk, incremental=True):
        scorer = TimedScorer(w2s.LogRatioScorer(tuned, untuned, incremental=incremental))
        cbs = w2s.ChunkBeamSearch(4, 4, chunk, max_new_tokens=tokens, sampling=SamplingParams(**SAMPLING))
        results = list(cbs.generate(strong, scorer, PROMPTS, seed=0, batch_size=len(PROMPTS)))
        return scorer.seconds, results

    plain(4), search(8, 4), generate_static(4)  # warm-up
    t_plain, rows = seconds(lambda: plain(T), args.repeats)
    t_static, _ = seconds(lambda: generate_static(T), args.repeats)
    t_cbs8, (score8, results) = seconds(lambda: search(T, 8), args.repeats)
    t_cbs5, _ = (None, None) if args.quick else seconds(lambda: search(T, 5), args.repeats)
    t_scratch, (score_scratch, _) = ((None, (None, None)) if args.quick else
                                     seconds(lambda: search(T, 8, incremental=False), args.repeats))
    t_cbs8_2t, _ = seconds(lambda: search(2 * T, 8), args.repeats)

    figures = {
        "cbs_over_plain_sampling": {"L=8": t_cbs8 / t_plain, "L=5": t_cbs5 and t_cbs5 / t_plain},
        "cbs_over_generate_static": t_cbs8 / t_static,
        "cbs_growth_2T_over_T": t_cbs8_2t / t_cbs8,
        "scoring_incremental_over_scratch": score_scratch and score8 / score_scratch,
    }
    report = {
        "figures": figures,
        "targets": {"cbs_over_plain_sampling": 1.15, "cbs_over_generate_static": 0.8, "cbs_growth_2T_over_T": 2.2},
        "seconds": {"plain_sampling_16_rows": t_plain, "generate_static_128_rows": t_static, "cbs_L8": t_cbs8,
                    "cbs_L5": t_cbs5, "cbs_L8_2T": t_cbs8_2t, "cbs_L8_scoring": score8,
                    "cbs_L8_from_scratch": t_scratch, "cbs_L8_scoring_from_scratch": score_scratch},
        "tokens_per_second": {"plain_sampling": len(rows) * T / t_plain,
                              "generate_static": len(PROMPTS) * 16 * T / t_static,
                              "cbs_L8": len(PROMPTS) * 16 * T / t_cbs8},
        "setup": {"strong": strong.name, "guides": str(guides), "prompts": len(PROMPTS), "T": T, "W": 4, "K": 4,
                  "device": str(strong.device), "dtype": args.dtype, "torch_threads": torch.get_num_threads(),
                  "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
                  "mean_response_tokens": sum(r.num_tokens for r in results) / len(results),
                  "repeats": args.repeats},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
