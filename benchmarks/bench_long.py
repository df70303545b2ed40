"""Cost of Best-of-N and CBS as answers grow, against ``transformers.generate`` of the same rows (issue 27).

Each configuration runs in its own process, so that its peak resident memory is its own: Best-of-16, CBS
(4, 4, chunks of 16) and ``generate(do_sample=True, num_return_sequences=16)`` with a static cache, for each
answer length T, on the default strong model (SmolLM2-135M-Instruct) and the shipped sentiment guides, with
the end tokens banned so that every row runs the full T tokens (the shipped guides know 1024 positions; for
longer answers they run on past them, rotary positions costing the same).  Figures, per method and T:
``ms_per_token`` (seconds per sampled token), ``peak_mb`` (peak resident memory), ``growth`` (ms per token
over its value at the smallest T), ``memory_growth`` and ``over_generate`` (seconds over ``generate``'s at the
same T).  Targets
(issue 27): at T=512, growth <= 1.25 and memory growth <= 1.4 for both; over_generate <= 0.8 for
Best-of-16 and <= 0.55 for CBS.  Run it on an idle machine (about an hour on one thread here).  The JSON is
written after each configuration, and a run started again with the same ``--out`` and settings resumes.

On a GPU (``--device cuda --dtype bfloat16``, what ``make bench-gpu`` runs) the models are built at random
from the shipped guide's config and tokenizer (``--random-models``: SmolLM2-135M's shape, so that no weight
file has to travel), and ``peak_mb`` is the device's peak allocated memory instead of the process's.

Usage:  python benchmarks/bench_long.py --out benchmarks/results/long.json [--lengths 128 256 512 1024 2048]
        [--prompts 2] [--threads 1] [--device cuda --dtype bfloat16 --random-models]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("bon", "cbs", "generate")


def random_models(root: Path) -> dict[str, str]:
    """Strong model and guides of SmolLM2-135M's shape with random weights (seeds 0, 1, 2), from the shipped
    guide's config and tokenizer, saved under ``root`` once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from w2s import defaults

    source = defaults.guide_dir("untuned")
    paths = {}
    for seed, name in enumerate(("strong", "tuned", "untuned")):
        path = root / name
        if not (path / "config.json").exists():
            torch.manual_seed(seed)
            AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source)).save_pretrained(path)
            AutoTokenizer.from_pretrained(source).save_pretrained(path)
        paths[name] = str(path)
    return paths


def one(method: str, tokens: int, n_prompts: int, device: str = "cpu", dtype: str = "float32",
        random_root: str | None = None) -> dict:
    """Run one configuration in this process and return its figures."""
    import torch

    import w2s
    from w2s import defaults

    prompts = [f"Write a long story about a journey, number {i}." for i in range(n_prompts)]
    if random_root:
        paths = random_models(Path(random_root))
    else:
        from w2s.backends.gguf import strong_model_dir

        paths = {"strong": str(strong_model_dir()), "tuned": str(defaults.guide_dir("tuned")),
                 "untuned": str(defaults.guide_dir("untuned"))}
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if method == "generate":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(paths["strong"])
        tokenizer.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(paths["strong"], dtype=getattr(torch, dtype)).to(device)
        batch = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=0.7, top_k=50, max_new_tokens=tokens,
                                 min_new_tokens=tokens, num_return_sequences=16, cache_implementation="static")
        sync()
        seconds = time.perf_counter() - start
        sampled = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    else:
        load = lambda name: w2s.load_model(paths[name], device=device, dtype=dtype)  # noqa: E731
        strong = load("strong")
        strong.banned_ids = sorted(set(strong.banned_ids) | set(strong.eos_ids))  # every row runs T tokens
        guides = [load("tuned"), load("untuned")]
        for guide in guides:  # the shipped guides know 1024 positions: beyond, RoPE runs on at the same cost
            if guide.context_length is not None and guide.context_length < tokens + 64:
                guide.context_length = strong.context_length
        scorer = w2s.LogRatioScorer(*guides)
        sampling = w2s.SamplingParams(temperature=0.7, top_k=50)
        search = (w2s.BestOfN(n=16, max_new_tokens=tokens, sampling=sampling) if method == "bon" else
                  w2s.ChunkBeamSearch(beam_width=4, successors_per_beam=4, chunk_length=16, max_new_tokens=tokens,
                                      sampling=sampling))
        start = time.perf_counter()
        results = list(search.generate(strong, scorer, prompts, seed=0))
        sync()
        seconds = time.perf_counter() - start
        failed = [r.error for r in results if r.error is not None]
        if failed:  # (a figure of nothing sampled is no figure)
            raise SystemExit(f"{method} at T={tokens}: {failed[0]}")
        sampled = sum(r.sampled_tokens for r in results)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"method": method, "tokens": tokens, "prompts": n_prompts, "device": device, "dtype": dtype,
            "seconds": round(seconds, 3), "sampled_tokens": sampled,
            "ms_per_token": round(1000 * seconds / max(sampled, 1), 4), "peak_mb": round(peak)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="the JSON file to write (the whole run)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                    help="the configurations to run at each length (those --out holds are kept)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--random-models", metavar="DIR",
                    help="build random models of the default models' shape in DIR (no weight file needed)")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "T"), help="(internal) run one configuration, print JSON")
    args = ap.parse_args()
    options = ["--prompts", str(args.prompts), "--threads", str(args.threads), "--device", args.device,
               "--dtype", args.dtype] + (["--random-models", args.random_models] if args.random_models else [])
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(one(args.one[0], int(args.one[1]), args.prompts, args.device, args.dtype,
                             args.random_models)))
        return
    if not args.out:
        ap.error("--out is required")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    setting = {"machine": platform.processor() or platform.machine(), "device": args.device, "dtype": args.dtype,
               "random_models": bool(args.random_models), "threads": args.threads, "prompts": args.prompts}
    out = Path(args.out)
    # a stopped run resumes: the configurations already in --out (same setting) are kept, not run again
    kept = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    done = {(r["method"], r["tokens"]): r for r in kept.get("runs", [])
            if all(kept.get(k) == v for k, v in setting.items())}
    lengths = sorted(set(args.lengths) | {t for _, t in done})

    def save() -> None:
        runs = [done[(m, t)] for t in lengths for m in METHODS if (m, t) in done]
        write(out, {**setting, "lengths": lengths, "runs": ratios(runs)})

    for tokens in args.lengths:
        for method in args.methods:
            if (method, tokens) not in done:
                line = subprocess.run([sys.executable, __file__, "--one", method, str(tokens), *options], env=env,
                                      check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                done[(method, tokens)] = json.loads(line)
                print(line, flush=True)
                save()
    save()


def ratios(runs: list[dict]) -> list[dict]:
    """Each run with its growth over its method's smallest T and its time over ``generate``'s at the same T
    (None where that run is missing)."""
    at = {(r["method"], r["tokens"]): r for r in runs}
    for r in runs:
        base = at[(r["method"], min(t for m, t in at if m == r["method"]))]
        generate = at.get(("generate", r["tokens"]))
        r.update(growth=round(r["ms_per_token"] / base["ms_per_token"], 3),
                 memory_growth=round(r["peak_mb"] / base["peak_mb"], 3),
                 over_generate=round(r["seconds"] / generate["seconds"], 3) if generate else None)
    return runs


def write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
