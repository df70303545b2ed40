"""CBS(4,4,8) against Best-of-16 with the strong model on vLLM (same engine, same run): tokens/s and vLLM's
prefix-cache hit rate, read from the engine's own ``/metrics``.

The strong model is the default one (SmolLM2-135M-Instruct, ``w2s setup``'s checkpoint), served by vLLM's
CPU build from ``build/vllm-venv`` (``make vllm-venv``) unless ``--url`` names a running vLLM server; the
guides are the shipped sentiment guides, local.  Both methods sample W*K = N = 16 rows per prompt.

Figures (``benchmarks/results/vllm.json``): per method, seconds, strong-model tokens generated and
prompt tokens (the engine's counters), tokens/s, and the prefix-cache hit rate (hit tokens / queried
prompt tokens); ``cbs_over_bon_seconds``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.request
from pathlib import Path

import w2s
from w2s import defaults
from w2s.backends.gguf import strong_model_dir
from w2s.tasks.sentiment import heldout_prompts

ROOT = Path(__file__).resolve().parent.parent
COUNTERS = ("vllm:generation_tokens_total", "vllm:prompt_tokens_total", "vllm:prefix_cache_queries_total",
            "vllm:prefix_cache_hits_total")


def counters(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    found = {}
    for name in COUNTERS:
        values = re.findall(rf"^{re.escape(name)}{{[^}}]*}} (\S+)$", text, re.M)
        found[name] = sum(map(float, values))
    return found


def measure(url: str, name: str, method, scorer, prompts) -> dict:
    strong = w2s.RemoteModel(url, name, concurrency=64, timeout=600.0)
    before, start = counters(url), time.perf_counter()
    results = list(method.generate(strong, scorer, prompts, seed=0, batch_size=len(prompts)))
    seconds = time.perf_counter() - start
    after = counters(url)
    strong.close()
    delta = {k.split(":")[1].removesuffix("_total"): after[k] - before[k] for k in COUNTERS}
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    return {"seconds": seconds, **delta, "generated_tokens_per_s": delta["generation_tokens"] / seconds,
            "prefix_cache_hit_rate": delta["prefix_cache_hits"] / max(delta["prefix_cache_queries"], 1.0),
            "mean_response_tokens": sum(r.num_tokens for r in results) / len(results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running vLLM server's /v1 URL (default: start one from build/vllm-venv)")
    ap.add_argument("--name", default="smollm2", help="the served model name")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48, help="max_new_tokens")
    ap.add_argument("--compiled", action="store_true", help="start vLLM without --enforce-eager (a longer start)")
    ap.add_argument("--out", default="benchmarks/results/vllm.json")
    args = ap.parse_args()
    proc, url = None, args.url
    if url is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from remote_engine import start_vllm_server

        began = time.perf_counter()
        extra = () if args.compiled else ("--enforce-eager",)
        proc, url = start_vllm_server(str(ROOT / "build" / "vllm-venv" / "bin" / "python"), str(strong_model_dir()),
                                      args.name, "build/vllm_bench_server.log", extra=extra)
        print(f"vLLM ready after {time.perf_counter() - began:.0f} s", flush=True)
    try:
        prompts = heldout_prompts(args.prompts)
        scorer = w2s.LogRatioScorer(w2s.load_model(defaults.guide_dir("tuned")),
                                    w2s.load_model(defaults.guide_dir("untuned")))
        methods = {"cbs_4x4_L8": w2s.ChunkBeamSearch(4, 4, 8, max_new_tokens=args.tokens),
                   "bon_16": w2s.BestOfN(n=16, max_new_tokens=args.tokens)}
        measure(url, args.name, w2s.BestOfN(n=2, max_new_tokens=4), scorer, prompts[:1])  # warm-up
        figures = {"prompts": args.prompts, "max_new_tokens": args.tokens, "compiled": args.compiled,
                   **{name: measure(url, args.name, m, scorer, prompts) for name, m in methods.items()}}
        figures["cbs_over_bon_seconds"] = figures["cbs_4x4_L8"]["seconds"] / figures["bon_16"]["seconds"]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
