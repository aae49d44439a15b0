"""Schema-based fuzzing of the committed repository on a real server (Schemathesis).

Every check, positive and negative data, every phase, bounded to FUZZ_SECONDS: what the
OpenAPI document allows must be answered 2xx (or 404/409, which depend on what is
served), what it forbids must be refused with a 4xx, responses must match their
documented schemas, status codes and headers, and no request may cause a 5xx. The
server requires an API key, so the document's security schemes are checked too
(a request without the key must be refused). The rules JSON Schema cannot state
(an image must decode, words must be in the vocabulary) are brought to the positive
cases by tests/e2e/schemathesis_hooks.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_server import running_server

REPOSITORY = Path(__file__).parents[2] / "model_repository"
FUZZ_SECONDS = 150
KEY = "fuzz-key"


@pytest.mark.slow
def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    env = {"GLIMPSE_API_KEYS": KEY, "GLIMPSE_INTRA_OP_THREADS": "1",
           "GLIMPSE_LOG_LEVEL": "warning"}
    with running_server(REPOSITORY, tmp_path / "server.log", env, ready_timeout=60) as (_, url):
        run = subprocess.run(
            [str(Path(sys.executable).parent / "st"), "run", f"{url}/openapi.json",
             "--checks", "all", "--mode", "all", "--max-time", str(FUZZ_SECONDS),
             "--workers", "2", "--seed", "16", "--request-timeout", "30",
             "--suppress-health-check", "filter_too_much",
             "-H", f"Authorization: Bearer {KEY}", "--report", "json",
             "--report-json-path", str(tmp_path / "report.json")],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
                 "PYTHONPATH": str(Path(__file__).parent)})
    summary = run.stdout[-6000:]
    assert run.returncode == 0, summary
    report = json.loads((tmp_path / "report.json").read_text())
    print(json.dumps({"seconds": report["running_time"], "cases": report["test_cases"]}))
    assert report["test_cases"]["generated"] > 1000 and report["failures"] == []
    assert "No issues found" in run.stdout or " passed" in run.stdout, summary
    assert "Traceback" not in (tmp_path / "server.log").read_text()
