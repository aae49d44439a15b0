"""How a real server stops: past its drain timeout, on a second signal, with several workers.

Each test starts its own `python -m service` on the tiny caption bundle. The model
"caption-hold" waits a minute for companions before it runs a batch, so a request sent
to it is still queued when the server is told to stop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from e2e_server import not_ready, queue_depth_is, running_server
from polling import until, wait_until

from service.client import AsyncGlimpseClient, GlimpseAPIError, GlimpseClient
from service.pipelines.caption import CaptionModel

_spec = importlib.util.spec_from_file_location(
    "tiny_bundle", Path(__file__).parents[1] / "service" / "tiny_bundle.py")
tiny_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_bundle)

HOLD = {"caption-hold": {"max_queue_delay_ms": 60_000, "request_timeout_s": 120}}
HELD_KEY = "caption-hold/1"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shutdown_repository")
    tiny_bundle.build_caption_bundle(root, "caption-tiny", 1, seed=0)
    tiny_bundle.build_caption_bundle(root, "caption-hold", 1, seed=0)
    return root


def environment(drain_timeout_s: float) -> dict[str, str]:
    return {"GLIMPSE_MODEL_OVERRIDES": json.dumps(HOLD), "GLIMPSE_INTRA_OP_THREADS": "1",
            "GLIMPSE_DRAIN_TIMEOUT_S": str(drain_timeout_s)}


async def signalled_while_queued(url: str, proc: subprocess.Popen, signals: int) -> object:
    """Queue a request on caption-hold, send SIGTERM `signals` times (the second once
    readiness has turned 503), and return its answer or the exception it raised."""
    async with AsyncGlimpseClient(url, timeout=60) as client:
        queued = asyncio.ensure_future(client.caption(tiny_bundle.sample_png(1),
                                                      model="caption-hold"))
        await until(queue_depth_is(client, HELD_KEY, 1))
        proc.send_signal(signal.SIGTERM)
        if signals == 2:
            await until(not_ready(client))
            proc.send_signal(signal.SIGTERM)
        try:
            return await queued
        except (GlimpseAPIError, httpx.TransportError) as exc:
            return exc


def test_past_the_drain_timeout_what_is_queued_is_refused_with_503(
        repository: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with running_server(repository, log_path, environment(1)) as (proc, url):
        outcome = asyncio.run(signalled_while_queued(url, proc, signals=1))
        assert proc.wait(timeout=20) == 0
    assert isinstance(outcome, GlimpseAPIError), outcome
    assert (outcome.status, outcome.type) == (503, "unavailable")
    log = log_path.read_text()
    assert "drained (timed out); exiting" in log
    assert "Traceback" not in log and " 500 " not in log


def test_a_second_signal_exits_without_waiting_for_the_drain(repository: Path,
                                                             tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with running_server(repository, log_path, environment(600)) as (proc, url):
        outcome = asyncio.run(signalled_while_queued(url, proc, signals=2))
        # Far sooner than the drain's ten minutes (or the queue's minute) would allow.
        assert proc.wait(timeout=20) == -signal.SIGTERM
    assert isinstance(outcome, httpx.TransportError), outcome  # dropped, not answered
    log = log_path.read_text()
    assert "second signal while draining: exiting now" in log
    assert "drained" not in log


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


def test_several_workers_answer_as_one_and_stop_together(repository: Path,
                                                         tmp_path: Path) -> None:
    offline = CaptionModel.from_bundle(repository / "caption-tiny" / "1")
    images = [tiny_bundle.sample_png(seed) for seed in range(6)]
    with running_server(repository, tmp_path / "server.log", environment(5),
                        args=("--workers", "2"), ready_timeout=60) as (proc, url):
        workers = wait_until(lambda: len(worker_pids(proc.pid)) == 2 and worker_pids(proc.pid))
        children = set(child_pids(proc.pid))  # the workers and multiprocessing's helper
        with GlimpseClient(url) as client:
            for image in images:
                answer = client.caption(image, model="caption-tiny", beam_size=2)
                assert [c["text"] for c in answer["captions"]] == \
                    [c.text for c in offline.caption(image, beam_size=2).captions]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert workers <= children
    wait_until(lambda: not {pid for pid in children if running(pid)})  # none left over


def running(pid: int) -> bool:
    """The process exists and has not exited (a zombie waits only to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
