"""``w2s serve`` under load: 32 concurrent streaming clients against one live server, in one run with
its own baseline (the same requests sent one at a time).

Each request is a held-out sentiment prompt with its own seed, so its answer is fixed: every
concurrent answer must equal the one the same request got alone (complete, and not another
request's).  Figures, each a ratio against the one-at-a-time baseline:
- throughput: requests/s and tokens/s;
- latency: p50/p90/p99 of the time to the first streamed text and of the total time per request.

Models: the demo's default ones (SmolLM2-135M-Instruct steered by the sentiment guides), chunk-level
beam search with small settings.

Usage:  python benchmarks/bench_serve.py --out benchmarks/results/serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import threading
import time
from pathlib import Path

import numpy as np
import openai
import torch
import uvicorn

from w2s.serve import ServeConfig, load_served_models
from w2s.serve.app import create_app
from w2s.tasks.sentiment import heldout_prompts


async def one(client: openai.AsyncOpenAI, prompt: str, seed: int) -> dict:
    start = time.perf_counter()
    first, parts, usage, finish = None, [], None, None
    stream = await client.completions.create(model="w2s", prompt=prompt, seed=seed, stream=True,
                                             stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.text and first is None:
                first = time.perf_counter() - start
            parts.append(choice.text)
            finish = choice.finish_reason or finish
    total = time.perf_counter() - start
    return {"text": "".join(parts), "tokens": usage, "finish": finish, "first": first if first is not None else total,
            "total": total}


async def run_all(url: str, prompts: list[str], concurrent: bool) -> tuple[list[dict], float]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    start = time.perf_counter()
    if concurrent:
        answers = await asyncio.gather(*(one(client, p, seed) for seed, p in enumerate(prompts)))
    else:
        answers = [await one(client, p, seed) for seed, p in enumerate(prompts)]
    wall = time.perf_counter() - start
    await client.close()
    return list(answers), wall


def summary(answers: list[dict], wall: float) -> dict:
    out = {"requests_per_s": len(answers) / wall, "tokens_per_s": sum(a["tokens"] for a in answers) / wall,
           "wall_s": wall}
    for key in ("first", "total"):
        values = [a[key] for a in answers]
        for q in (50, 90, 99):
            out[f"{key}_p{q}_s"] = float(np.percentile(values, q))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--beam-width", type=int, default=2)
    ap.add_argument("--successors", type=int, default=2)
    ap.add_argument("--chunk-length", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", default="benchmarks/results/serve.json")
    args = ap.parse_args()

    params = {"beam_width": args.beam_width, "successors_per_beam": args.successors,
              "chunk_length": args.chunk_length, "max_new_tokens": args.max_new_tokens}
    config = ServeConfig(methods={"cbs": params}, queue_size=args.clients, max_batch_size=args.max_batch_size,
                         batch_window_ms=20)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(create_app(config, load_served_models(config)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    prompts = heldout_prompts(args.clients)

    asyncio.run(run_all(url, prompts[:2], concurrent=False))  # warm-up
    alone, alone_wall = asyncio.run(run_all(url, prompts, concurrent=False))
    together, together_wall = asyncio.run(run_all(url, prompts, concurrent=True))
    server.should_exit = True

    mismatched = [i for i, (a, b) in enumerate(zip(alone, together)) if a["text"] != b["text"]]
    incomplete = [i for i, a in enumerate(together) if a["finish"] not in ("stop", "length") or a["tokens"] is None]
    base, load = summary(alone, alone_wall), summary(together, together_wall)
    result = {
        "setup": {"clients": args.clients, "method": "cbs", **params, "max_batch_size": args.max_batch_size,
                  "strong": "SmolLM2-135M-Instruct (default)", "guides": "shipped sentiment guides",
                  "threads": torch.get_num_threads(), "machine": platform.machine()},
        "all_complete": not incomplete, "all_match_alone": not mismatched,
        "mismatched": mismatched, "incomplete": incomplete,
        "one_at_a_time": base, "concurrent": load,
        "ratios_concurrent_over_one_at_a_time": {
            key: load[key] / base[key] for key in base if key != "wall_s"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if mismatched or incomplete:
        raise SystemExit(f"{len(mismatched)} answers differ from the request sent alone, {len(incomplete)} incomplete")


if __name__ == "__main__":
    main()
