"""The benchmark runs at tiny size on a CPU, through the same code as on a GPU, so it cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "benchmark.py"


def test_tiny_benchmark_runs_plain_and_project_side_by_side(tmp_path):
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    proc = subprocess.run([sys.executable, str(BENCH), "--size", "tiny", "--device", "cpu", "--repeats", "1",
                           "--run", "wan-480p-4:plain,project", "--run", "qwen-1ref-40:project",
                           "--measure-steps", "2", "--out", str(out), "--markdown", str(md)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {(r["workload"], r["config"]): r for r in json.loads(out.read_text())["runs"]}
    wan = runs[("wan-480p-4", "project")]
    assert wan["experts"]["transformer"]["steps"] == 1 and wan["experts"]["transformer_2"]["steps"] == 1
    assert wan["plan"].startswith("plan cpu") and wan["seconds"]["total"] > 0
    qwen = runs[("qwen-1ref-40", "project")]
    assert qwen["steps"] == 40 and qwen["measured_steps"] == 2, "long schedules are measured short and scaled"
    table = md.read_text()
    assert "### wan-480p-4" in table and "vs plain" in table and "scaled to 40" in table
