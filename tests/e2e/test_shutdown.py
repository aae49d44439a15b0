"""Shutdown of a real server: the drain timeout and a second signal answer JSON 503s;
several workers answer as one and stop together.

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
from polling import wait_until

from service.client import GlimpseClient
from service.pipelines.caption import CaptionModel

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


def child_pids(pid: int) -> dict[int, str]:
    """Processes whose parent is `pid` and their command lines (Linux /proc)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if parent == pid:
            children[int(stat.parent.name)] = command
    return children


def worker_pids(pid: int) -> set[int]:
    """The worker processes uvicorn's supervisor `pid` has spawned."""
    return {child for child, command in child_pids(pid).items() if "spawn_main" in command}


def running(pid: int) -> bool:
    """The process exists and has not exited (a zombie waits only to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_several_workers_answer_as_one_and_stop_together(repository: Path,
                                                         tmp_path: Path) -> None:
    offline = CaptionModel.from_bundle(repository / "caption-hold" / "1")
    images = [tiny_bundle.sample_png(seed) for seed in range(6)]
    env = {"GLIMPSE_DRAIN_TIMEOUT_S": "5", "GLIMPSE_INTRA_OP_THREADS": "1"}
    with running_server(repository, tmp_path / "server.log", env,
                        args=("--workers", "2"), ready_timeout=60) as (proc, url):
        workers = wait_until(lambda: len(worker_pids(proc.pid)) == 2 and worker_pids(proc.pid))
        children = set(child_pids(proc.pid))  # the workers and multiprocessing's helper
        with GlimpseClient(url) as client:
            for image in images:
                answer = client.caption(image, model="caption-hold", beam_size=2)
                assert [c["text"] for c in answer["captions"]] == \
                    [c.text for c in offline.caption(image, beam_size=2).captions]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert workers <= children
    wait_until(lambda: not {pid for pid in children if running(pid)})  # none left over
