"""Shutdown of a real server: the drain timeout and a second signal answer JSON 503s.

Each test starts its own `python -m service` on the tiny caption bundle, whose queue
holds requests for 5 s waiting for companions, so that requests are still waiting
when the drain timeout (1 s) passes or the second signal comes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_server import running_server

_spec = importlib.util.spec_from_file_location(
    "tiny_bundle", Path(__file__).parents[1] / "service" / "tiny_bundle.py")
tiny_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_bundle)

HOLD = {"caption-hold": {"max_batch_size": 8, "max_queue_delay_ms": 5000}}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shutdown_repository")
    tiny_bundle.build_caption_bundle(root, "caption-hold", 1, seed=0)
    return root


@pytest.fixture
def server(repository: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    log_path = tmp_path / "server.log"
    env = {"GLIMPSE_MODEL_OVERRIDES": json.dumps(HOLD), "GLIMPSE_DRAIN_TIMEOUT_S": "1",
           "GLIMPSE_INTRA_OP_THREADS": "1"}
    with running_server(repository, log_path, env) as (proc, url):
        yield proc, url, log_path


async def _held_requests(url: str, count: int) -> tuple[httpx.AsyncClient, list[asyncio.Task]]:
    """`count` caption requests waiting in the queue (the metrics say so)."""
    client = httpx.AsyncClient(base_url=url, timeout=30)
    tasks = [asyncio.ensure_future(client.post(
        "/v1/captions", files={"file": tiny_bundle.sample_png(i)},
        data={"model": "caption-hold"})) for i in range(count)]
    while f'glimpse_queue_depth{{model="caption-hold/1"}} {float(count)}' not in \
            (await client.get("/metrics")).text:
        await asyncio.sleep(0.02)
    return client, tasks


def _assert_json_503(answers: list[httpx.Response]) -> None:
    for answer in answers:
        assert answer.status_code == 503
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["error"]["type"] == "unavailable"
        assert "shutting down" in answer.json()["error"]["message"]


def test_drain_timeout_answers_waiting_requests_with_json_503(server) -> None:
    proc, url, log_path = server

    async def main() -> list[httpx.Response]:
        client, tasks = await _held_requests(url, 3)
        try:
            proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)
        finally:
            await client.aclose()

    started = time.monotonic()
    _assert_json_503(asyncio.run(main()))
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 4  # the drain timeout, not the 5 s queue delay
    log = log_path.read_text()
    assert "drained (timed out); exiting" in log and "Traceback" not in log


def test_second_signal_exits_at_once_with_status_0(server) -> None:
    proc, url, log_path = server

    async def main() -> tuple[list[httpx.Response], float]:
        client, tasks = await _held_requests(url, 2)
        try:
            proc.send_signal(signal.SIGTERM)
            while (await client.get("/v2/health/ready")).status_code == 200:
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            return await asyncio.gather(*tasks), sent
        finally:
            await client.aclose()

    answers, sent = asyncio.run(main())
    _assert_json_503(answers)
    assert proc.wait(timeout=5) == 0
    # The second signal answered them, not the drain timeout (1 s) that follows it.
    assert all("drain timeout" not in answer.json()["error"]["message"] for answer in answers)
    log = log_path.read_text()
    assert "second signal; exiting now" in log and "drained" not in log
