"""A real server: `python -m service` on a free port, talked to over HTTP.

One process serves four copies of the tiny caption bundle, each with its own queue
settings (GLIMPSE_MODEL_OVERRIDES): a normal one, one whose queue holds a single
request (overload), one that times requests out in its queue, and one that holds
requests long enough to send SIGTERM while they wait (drain). The tests run in file
order; the last one stops the server.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_server import not_ready, queue_depth_is, running_server
from polling import until

from service.client import AsyncGlimpseClient, GlimpseAPIError, GlimpseClient
from service.pipelines.caption import CaptionModel

_spec = importlib.util.spec_from_file_location(
    "tiny_bundle", Path(__file__).parents[1] / "service" / "tiny_bundle.py")
tiny_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_bundle)

OVERRIDES = {
    "caption-queue": {"max_batch_size": 1, "max_queue_size": 1, "max_queue_delay_ms": 0},
    "caption-timeout": {"max_queue_delay_ms": 3000, "request_timeout_s": 0.1},
    "caption-drain": {"max_batch_size": 8, "max_queue_delay_ms": 1500},
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e_repository")
    for name in ("caption-tiny", *OVERRIDES):
        tiny_bundle.build_caption_bundle(root, name, 1, seed=0)
    return root


@pytest.fixture(scope="module")
def offline(repository: Path) -> CaptionModel:
    return CaptionModel.from_bundle(repository / "caption-tiny" / "1")


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    log_path = tmp_path_factory.mktemp("e2e_logs") / "server.log"
    env = {"GLIMPSE_MODEL_OVERRIDES": json.dumps(OVERRIDES), "GLIMPSE_MAX_QUEUE_DELAY_MS": "5",
           "GLIMPSE_DRAIN_TIMEOUT_S": "10", "GLIMPSE_INTRA_OP_THREADS": "1"}
    with running_server(repository, log_path, env) as (proc, url):
        yield proc, url, log_path


def caption_texts(answer: dict) -> list[str]:
    return [c["text"] for c in answer["captions"]]


REQUESTS = [(seed, params) for seed in range(8) for params in (
    {"beam_size": 1}, {"beam_size": 4, "num_captions": 2}, {"beam_size": 3, "max_length": 5})]


def test_concurrent_answers_equal_the_offline_pipeline(server, offline: CaptionModel) -> None:
    _, url, _ = server
    images = {seed: tiny_bundle.sample_png(seed) for seed in range(8)}

    async def main() -> list[dict]:
        async with AsyncGlimpseClient(url) as client:
            return await asyncio.gather(*(client.caption(images[seed], model="caption-tiny",
                                                         **params)
                                          for seed, params in REQUESTS))

    answers = asyncio.run(main())
    for (seed, params), answer in zip(REQUESTS, answers, strict=True):
        want = offline.caption(images[seed], **params)
        assert answer["model"] == "caption-tiny/1"
        assert caption_texts(answer) == [c.text for c in want.captions]
        assert [c["log_prob"] for c in answer["captions"]] == \
            pytest.approx([c.log_prob for c in want.captions], rel=1e-5)
    metrics = httpx.get(f"{url}/metrics").text
    assert f'glimpse_batch_size_sum{{model="caption-tiny/1"}} {float(len(REQUESTS))}' in metrics


def test_overload_is_503_and_no_request_is_lost_or_answered_twice(
        server, offline: CaptionModel) -> None:
    _, url, _ = server
    image = tiny_bundle.sample_png(1)
    params = {"model": "caption-queue", "beam_size": 20, "max_length": 40}
    want = caption_texts({"captions": [{"text": c.text} for c in offline.caption(
        image, beam_size=20, max_length=40).captions]})

    async def one(client: AsyncGlimpseClient) -> tuple[int, str | None]:
        try:
            return 200, caption_texts(await client.caption(image, **params))
        except GlimpseAPIError as exc:
            return exc.status, exc.retry_after

    async def main() -> list:
        async with AsyncGlimpseClient(url) as client:
            return await asyncio.gather(*(one(client) for _ in range(30)))

    outcomes = asyncio.run(main())
    statuses = Counter(status for status, _ in outcomes)
    assert set(statuses) == {200, 503} and statuses[503] >= 1
    assert all(detail == want for status, detail in outcomes if status == 200)
    assert all(detail == 1.0 for status, detail in outcomes if status == 503)
    metrics = httpx.get(f"{url}/metrics").text
    counted = {outcome: f'glimpse_requests_total{{model="caption-queue/1",outcome="{outcome}"}}'
               for outcome in ("ok", "overloaded")}
    assert f'{counted["ok"]} {float(statuses[200])}' in metrics
    assert f'{counted["overloaded"]} {float(statuses[503])}' in metrics
    assert f'glimpse_batch_size_sum{{model="caption-queue/1"}} {float(statuses[200])}' \
        in metrics  # computed exactly once each


def test_timeout_is_504(server) -> None:
    _, url, _ = server
    with GlimpseClient(url) as client, pytest.raises(GlimpseAPIError) as err:
        client.caption(tiny_bundle.sample_png(0), model="caption-timeout")
    assert (err.value.status, err.value.type) == (504, "timeout")


def test_sigterm_drains_queued_requests_then_exits(server, offline: CaptionModel) -> None:
    proc, url, log_path = server
    images = [tiny_bundle.sample_png(seed) for seed in (3, 4, 5)]

    async def main() -> tuple[list, int, dict, int]:
        async with AsyncGlimpseClient(url) as client:
            queued = [asyncio.ensure_future(client.caption(image, model="caption-drain"))
                      for image in images]
            await until(queue_depth_is(client, "caption-drain/1", 3), interval=0.02)
            proc.send_signal(signal.SIGTERM)
            ready = await until(not_ready(client), interval=0.02)
            refused = await client.http.post(
                "/v1/captions", files={"file": images[0]}, data={"model": "caption-tiny"})
            answers = await asyncio.gather(*queued)
            return answers, ready.status_code, refused.json(), refused.status_code

    answers, ready_status, refused, refused_status = asyncio.run(main())
    assert ready_status == 503
    assert (refused_status, refused["error"]["type"]) == (503, "unavailable")
    for image, answer in zip(images, answers, strict=True):
        assert caption_texts(answer) == [offline.caption(image).captions[0].text]
    assert proc.wait(timeout=10) == 0
    log = log_path.read_text()
    assert "draining" in log and "drained; exiting" in log
    assert "Traceback" not in log
