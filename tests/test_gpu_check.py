"""The GPU check script runs (here on CPU, where its comparisons are trivially equal): every part but the
benchmark, so that a lent GPU's minutes are not spent on a script that breaks."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_runs_and_reports_every_part(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path),
                           "--device", "cpu", "--dtypes", "float32", "--quick"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["passed"] and report["kv_rows"][0]["passed"] and " passed" in report["kv_rows"][0]["summary"]
    methods = report["methods"]["float32"]["methods"]
    assert set(methods) == {"best-of-n", "cbs", "sampling", "eft"}
    assert all(m["same_responses"] == m["of"] == 3 for m in methods.values())
    assert (tmp_path / "pytest-cpu-float32.log").exists()


def test_bench_long_writes_each_configuration_and_resumes(tmp_path):
    """bench_long.py (issue 27 item 4) on random models of the default shape, two tiny lengths: every method
    at every T with its ratios; run again, it keeps what --out holds (a stopped hour-long run resumes)."""
    out = tmp_path / "long.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_long.py"), "--out", str(out), "--lengths", "2", "4",
           "--prompts", "1", "--random-models", str(tmp_path / "models")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = {(r["method"], r["tokens"]): r for r in result["runs"]}
    assert set(runs) == {(m, t) for m in ("bon", "cbs", "generate") for t in (2, 4)}
    assert all(r["sampled_tokens"] == 16 * r["tokens"] for r in runs.values())  # 16 rows, every row runs T
    assert runs[("bon", 2)]["growth"] == 1.0 and runs[("generate", 4)]["over_generate"] == 1.0
    assert runs[("cbs", 4)]["over_generate"] == round(runs[("cbs", 4)]["seconds"] / runs[("generate", 4)]["seconds"], 3)
    result["runs"] = [r for r in result["runs"] if r["tokens"] == 2]  # as if stopped after T=2
    result["runs"][0]["seconds"] = 999.0
    out.write_text(json.dumps(result))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(again.stdout.strip().splitlines()) == 3  # only T=4's three configurations ran
    resumed = json.loads(out.read_text())
    assert resumed["runs"][0]["seconds"] == 999.0 and len(resumed["runs"]) == 6
