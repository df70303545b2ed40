"""The GPU check (issue 27): everything w2s does on CUDA, against the same run on CPU, in one script.

Run it from a copy of the tree without the shipped weights (every model here is built from a config):
``make test-gpu`` (parts 1-3) and ``make bench-gpu`` (part 4), or ``python benchmarks/gpu_check.py --out DIR``.

1. **kv-rows**: ``tests/test_kv_rows.py`` (rows with holes, branches, regrouping, split forwards, every
   attention family: each logit against the model run from scratch on the device) in float32 and
   bfloat16, and ``tests/test_branch_layout.py`` (both layouts give the same samples and scores) in float32
   (``W2S_TEST_DEVICE``, ``W2S_TEST_DTYPE``).
2. **methods**: Best-of-N, CBS, plain sampling and EFT on the tests' tiny models, seeded, on the device
   against CPU: in float32 the responses must be the same and the scores within 1e-3; in bfloat16 the
   share of identical responses is reported (rounding may change a sample).
3. **zoo**: the family zoo (``tests/zoo.py``: Llama-2, Mistral, Llama-3, Qwen2, Gemma-3 tokenizers and
   configs), CBS on the device against CPU, float32.
4. **bench**: ``benchmarks/bench_long.py`` on the device in bfloat16 with random models of the default
   models' shape (``--bench``).

Writes ``DIR/gpu_check.json`` (every figure, and ``passed``) and the pytest logs; exits 1 when a check fails.
It also runs on CPU (``--device cpu``: the same comparisons, trivially equal), which is how the suite tests it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
KV_TESTS = ["tests/test_kv_rows.py", "tests/test_branch_layout.py"]
PROMPTS = ["The cat", "I did not like the food, it was cold and", "What a"]


def run_pytest(device: str, dtype: str, out: Path, quick: bool) -> dict:
    env = {**os.environ, "W2S_TEST_DEVICE": device, "W2S_TEST_DTYPE": dtype, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    selection = ["-k", "token_bound_splits or rows_and_branches"] if quick else []
    files = KV_TESTS if dtype == "float32" else KV_TESTS[:1]  # rounding may change a sample between layouts
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, *selection],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    (out / f"pytest-{device.replace(':', '')}-{dtype}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    return {"device": device, "dtype": dtype, "passed": done.returncode == 0, "summary": summary,
            "seconds": round(time.perf_counter() - start, 1)}


def methods(w2s, paths: dict, device: str, dtype: str) -> dict:
    """Each method's results, seeded, with models loaded on ``device`` in ``dtype``."""
    load = lambda name: w2s.load_model(paths[name], device=device, dtype=dtype)  # noqa: E731
    strong, tuned, untuned = load("strong"), load("tuned"), load("untuned")
    scorer = w2s.LogRatioScorer(tuned, untuned)
    out = {}
    for name, search in (("best-of-n", w2s.BestOfN(n=6, max_new_tokens=24)),
                         ("cbs", w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=3, chunk_length=6,
                                                     max_new_tokens=24)),
                         ("sampling", w2s.Sampling(max_new_tokens=24))):
        out[name] = [(r.response, r.score) for r in search.generate(strong, scorer, PROMPTS, seed=7)]
    t, u = load("shared_tuned"), load("shared_untuned")
    out["eft"] = [(r.response, 0.0) for r in w2s.EmulatedFineTuning(beta=1.0, max_new_tokens=24).generate(
        strong, t, u, PROMPTS, seed=7)]
    return out


def compare(reference: dict, other: dict, exact: bool) -> dict:
    rows, passed = {}, True
    for name, want in reference.items():
        got = other[name]
        same = [a[0] == b[0] for a, b in zip(want, got)]
        diffs = [abs(a[1] - b[1]) for a, b, s in zip(want, got, same) if s]
        rows[name] = {"same_responses": sum(same), "of": len(same), "max_score_diff": max(diffs, default=0.0)}
        if exact:
            passed &= all(same) and rows[name]["max_score_diff"] <= 1e-3
    return {"passed": passed, "methods": rows}


def zoo_cbs(w2s, dirs: dict, device: str) -> dict:
    rows, passed = {}, True
    for family, path in dirs.items():
        try:
            w2s.load_model(path)
        except ValueError:
            continue  # a recurrent model: refused on every device
        results = {}
        for where in ("cpu", device):
            model = w2s.load_model(path, device=where)
            cbs = w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=2, chunk_length=4, max_new_tokens=16)
            scorer = w2s.LogRatioScorer(model, model)  # a zero reward: ties broken the same way on both
            results[where] = [r.response for r in cbs.generate(model, scorer, ["Hello world"] * 2, seed=3)]
        same = results["cpu"] == results[device]
        rows[family] = {"same_responses": same}
        passed &= same
    return {"passed": passed, "families": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and the logs")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--quick", action="store_true", help="a few tests of part 1 only (the suite's run on CPU)")
    ap.add_argument("--bench", action="store_true", help="part 4 only: bench_long.py on the device")
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path[:0] = [str(ROOT / "src"), str(TESTS)]
    import torch

    import w2s

    report = {"device": args.device, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    if args.bench:
        with tempfile.TemporaryDirectory() as models:
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_long.py"), "--out",
                            str(out / "long-gpu.json"), "--device", args.device, "--dtype", "bfloat16",
                            "--random-models", models, "--lengths", *map(str, args.lengths)], check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        report["bench"] = json.loads((out / "long-gpu.json").read_text(encoding="utf-8"))
        report["passed"] = True
    else:
        report["kv_rows"] = [run_pytest(args.device, dtype, out, args.quick) for dtype in args.dtypes]
        from conftest import gpt2, guide_tokenizer, llama, save, strong_tokenizer
        from zoo import build_zoo

        with tempfile.TemporaryDirectory() as root:
            root = Path(root)
            st, gt = strong_tokenizer(), guide_tokenizer()
            paths = {"strong": save(llama(st, 0), st, root / "strong"), "tuned": save(gpt2(gt, 1), gt, root / "tuned"),
                     "untuned": save(gpt2(gt, 2), gt, root / "untuned"),
                     "shared_tuned": save(llama(st, 3), st, root / "shared_tuned"),
                     "shared_untuned": save(llama(st, 4), st, root / "shared_untuned")}
            reference = methods(w2s, paths, "cpu", "float32")
            report["methods"] = {dtype: compare(reference, methods(w2s, paths, args.device, dtype),
                                                exact=dtype == "float32") for dtype in args.dtypes}
            if not args.quick:
                report["zoo"] = zoo_cbs(w2s, build_zoo(root / "zoo"), args.device)
        report["passed"] = (all(r["passed"] for r in report["kv_rows"])
                            and all(m["passed"] for m in report["methods"].values())
                            and report.get("zoo", {"passed": True})["passed"])
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "bench"}, indent=1))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
