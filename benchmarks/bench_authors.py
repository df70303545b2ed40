"""w2s chunk-level beam search against the authors' own code, side by side on the same models and prompts.

The authors' CBS (github.com/ZHZisZZ/weak-to-strong-search, run unchanged from a snapshot of their
repository; it has no licence, so none of it is in this project) is timed by the harness in the tool
folder (``authors_cbs.py``, default ``../shared/tools``), in its own venv with transformers 4.41.2;
w2s in this venv.  Each side runs in a fresh process, one thread, model loading excluded, one warm-up,
8 prompts ("Once upon a time 1".."8"), temperature 0.7, top-k 50.  Sets:

- ``tiny``: a GPT-2 strong model (384-dim, 6 layers) and a 32-dim guide pair with another tokenizer
  (``tiny_models.py``), W,K,L = 4,4,8, T = 96 and 192;
- ``smol``: SmolLM2-135M-Instruct (``w2s setup``'s cached copy) and the shipped sentiment guides,
  W,K,L = 4,4,5, T = 48 and 96, in float32 and in bfloat16 (both sides).

Figures: authors / w2s seconds at each T (targets: >= 3 on tiny, >= 4 on smol in float32) and w2s's
time(2T)/time(T) (target <= 2.2).  Repeats are interleaved (authors, w2s, authors, ...); medians.

Usage:  AUTHORS_GIT=/path/to/their/git/dir python benchmarks/bench_authors.py --out benchmarks/results/authors.json
Without AUTHORS_GIT (or the tool folder) the figures are written as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [f"Once upon a time {i}" for i in range(1, 9)]
SETS = {"tiny": dict(L=8, T=(96, 192), dtypes=("float32",)),
        "smol": dict(L=5, T=(48, 96), dtypes=("float32", "bfloat16"))}
TARGETS = {"tiny": 3.0, "smol": 4.0}
AUTHORS_VENV_PACKAGES = ["transformers==4.41.2", "accelerate==0.31.0"]


def w2s_side(models: str, prompts: str, tokens: int, chunk: int, dtype: str, threads: int) -> None:
    """Child process: print the seconds of w2s CBS(4,4,chunk) over the prompts (after one warm-up)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(threads)
    import w2s

    lines = [line.rstrip("\n") for line in open(prompts, encoding="utf-8") if line.strip()]
    load = lambda name: w2s.load_model(f"{models}/{name}", dtype=dtype)  # noqa: E731
    strong = load("strong")
    scorer = w2s.LogRatioScorer(tuned=load("tuned"), untuned=load("untuned"))
    search = w2s.ChunkBeamSearch(4, 4, chunk, max_new_tokens=tokens,
                                 sampling=w2s.SamplingParams(temperature=0.7, top_k=50))
    list(search.generate(strong, scorer, lines[:1], seed=1))
    start = time.perf_counter()
    results = list(search.generate(strong, scorer, lines, seed=0))
    print(json.dumps({"seconds": time.perf_counter() - start,
                      "tokens": sum(r.num_tokens for r in results) / len(results)}))


def run(cmd: list[str], env: dict) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])}... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def authors_venv(path: Path) -> Path:
    python = path / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *AUTHORS_VENV_PACKAGES], check=True)
    listed = subprocess.run([str(python), "-m", "pip", "list"], capture_output=True, text=True).stdout
    if "nvidia" in listed.lower():
        raise SystemExit(f"CUDA wheels were installed in {path}; remove it and pin torch==2.13.0")
    return python


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/authors.json")
    ap.add_argument("--tools", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "tools"),
                    help="folder holding authors_cbs.py, authors_compat.py and tiny_models.py")
    ap.add_argument("--authors-venv", default=os.environ.get("AV", "/tmp/av-bar"))
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], help="only these (default: each set's)")
    ap.add_argument("--tokens", nargs=2, type=int, metavar=("T", "2T"), help="lengths for every set (default: its own)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--w2s-side", nargs=5, metavar=("MODELS", "PROMPTS", "T", "L", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.w2s_side:
        models, prompts, tokens, chunk, dtype = args.w2s_side
        return w2s_side(models, prompts, int(tokens), int(chunk), dtype, args.threads)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tools, authors_git = Path(args.tools), os.environ.get("AUTHORS_GIT")
    missing = ("AUTHORS_GIT is not set (the git dir of a snapshot of github.com/ZHZisZZ/weak-to-strong-search)"
               if not authors_git else None if (tools / "authors_cbs.py").exists() else f"no authors_cbs.py in {tools}")
    if missing:
        out.write_text(json.dumps({"skipped": missing}, indent=2) + "\n")
        print(f"skipped: {missing}")
        return
    python = authors_venv(Path(args.authors_venv))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    report = {"setup": {"prompts": len(PROMPTS), "threads": args.threads, "repeats": args.repeats,
                        "temperature": 0.7, "top_k": 50, "W": 4, "K": 4}, "sets": {}}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        src = work / "src"
        src.mkdir()
        archive = subprocess.run(["git", "--git-dir", authors_git, "archive", "HEAD"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
        prompts = work / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS) + "\n")
        for name in args.sets:
            spec = dict(SETS[name])
            if args.dtypes:
                spec["dtypes"] = [d for d in spec["dtypes"] if d in args.dtypes]
            if args.tokens:
                spec["T"] = tuple(args.tokens)
            models = work / name
            if name == "tiny":
                run([sys.executable, str(tools / "tiny_models.py"), str(models), "384", "6"], env)
            else:
                from w2s import defaults
                from w2s.backends.gguf import strong_model_dir

                models.mkdir()
                (models / "strong").symlink_to(strong_model_dir())
                for guide in ("tuned", "untuned"):
                    (models / guide).symlink_to(defaults.guide_dir(guide))
            readable = work / f"{name}-authors"
            run([sys.executable, str(tools / "authors_compat.py"), str(models), str(readable)], env)
            entry = report["sets"][name] = {"L": spec["L"], "target_authors_over_w2s": TARGETS[name],
                                            "target_growth": 2.2}
            for dtype in spec["dtypes"]:
                seconds = {"authors": {}, "w2s": {}}
                for tokens in spec["T"]:
                    a_times, w_times = [], []
                    for _ in range(args.repeats):
                        text = run([str(python), str(tools / "authors_cbs.py"), "--src", str(src), "--strong",
                                    str(readable / "strong"), "--tuned", str(readable / "tuned"), "--untuned",
                                    str(readable / "untuned"), "--prompts", str(prompts), "--output",
                                    str(work / "a.jsonl"), "--w", "4", "--k", "4", "--l", str(spec["L"]),
                                    "--max-new-tokens", str(tokens), "--seed", "0", "--threads", str(args.threads),
                                    "--warmup", "1", "--dtype", dtype], env)
                        a_times.append(float(re.findall(r"total seconds:?\s*([0-9.]+)", text)[-1]))
                        text = run([sys.executable, __file__, "--threads", str(args.threads), "--w2s-side",
                                    str(models), str(prompts), str(tokens), str(spec["L"]), dtype], env)
                        w_times.append(json.loads(text.strip().splitlines()[-1])["seconds"])
                        print(f"{name} {dtype} T={tokens}: authors {a_times[-1]:.1f} s, w2s {w_times[-1]:.1f} s",
                              flush=True)
                    seconds["authors"][tokens] = statistics.median(a_times)
                    seconds["w2s"][tokens] = statistics.median(w_times)
                t1, t2 = spec["T"]
                entry[dtype] = {"T": list(spec["T"]),
                    "seconds": seconds,
                    "authors_over_w2s": {t: seconds["authors"][t] / seconds["w2s"][t] for t in spec["T"]},
                    "w2s_growth_2T_over_T": seconds["w2s"][t2] / seconds["w2s"][t1],
                    "authors_growth_2T_over_T": seconds["authors"][t2] / seconds["authors"][t1],
                }
                out.write_text(json.dumps(report, indent=2) + "\n")  # partial results are kept
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
