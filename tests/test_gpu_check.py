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
