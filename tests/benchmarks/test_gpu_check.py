"""benchmarks/gpu_check.sh on a machine without CUDA: the script and its Python part run
end to end on the tiny caption bundle and write results of the shape the GPU run will."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "tests" / "service"))
import tiny_bundle  # noqa: E402


def test_gpu_check_runs_on_the_cpu_provider(tmp_path: Path) -> None:
    bundle = tiny_bundle.build_caption_bundle(tmp_path / "bundles", "caption-tiny")
    out = tmp_path / "results" / "gpu_check"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_TIMEOUT_S": "240"}
    env.pop("OUT", None)
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "none", "--bundle", str(bundle),
         "--out", str(out), "--max-batch-size", "4", "--repeats", "1", "--duration", "0.5",
         "--concurrency", "1", "2"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["cuda"] is False
    assert set(result["offline"]) == set(result["http"]) == {"cpu", "cpu, buckets"}
    for name, measured in result["offline"].items():
        assert [row["batch_size"] for row in measured["sizes"]] == [1, 3, 2], name
        assert all(row["first_ms"] > 0 and row["steady_ms"] > 0 for row in measured["sizes"])
    for name, levels in result["http"].items():
        assert [level["concurrency"] for level in levels] == [1, 2], name
        assert all(level["ok"] > 0 and level["ok"] == level["requests"] for level in levels)
    table = out.with_suffix(".md").read_text()
    assert "| 3 |" in table and "| cpu, buckets | 2 |" in table
