"""Mixed batches on the committed bundles: each request gets the answer it gets alone.

Two apps serve the committed repository in process. In the batched one every model's
queue waits up to a minute for companions and dispatches when REQUESTS_PER_MODEL
requests wait, so the requests sent to it together surely share one batch per model
(asserted from /metrics; a step-level decoder, DALL-E, shares its decode steps). The
requests of one model differ in image, settings, question, sentence, prompt or seed, so
their answers differ, and an answer handed to the wrong request, or computed with a
companion's settings, fails the comparison with the answer the solo app (batches of
one, no wait) gives the same request. The batched app runs once as on CPU and once with
batch buckets, as on a GPU: every graph's rows padded to 4 or 16 (or a multiple of 16),
which must not change any real row's answer.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from committed import COMMITTED, served_bundles
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.client import AsyncGlimpseClient
from service.pipelines import pipeline_for
from service.pipelines.base import Pipeline
from service.settings import Settings
from training.data.clips import generate_clips
from training.data.readers import load_captions
from training.data.shapes import generate_shapes_world

REQUESTS_PER_MODEL = 6
Call = Callable[[AsyncGlimpseClient], Awaitable[Any]]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("batch_world")
    generate_shapes_world(out, {"test": REQUESTS_PER_MODEL}, seed=43, workers=1,
                          progress=False)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """REQUESTS_PER_MODEL fresh clips (animated PNGs) for the video models."""
    out = tmp_path_factory.mktemp("batch_clips")
    generate_clips(out, {"test": REQUESTS_PER_MODEL}, frames=16, size=64, seed=43, workers=1,
                   progress=False)
    return [p.read_bytes() for p in sorted((out / "clips").glob("*/test_*.png"))]


def started(**settings: Any) -> Iterator[TestClient]:
    app = create_app(Settings(model_repository=COMMITTED, intra_op_threads=1, **settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module", params=["off", [4, 16]], ids=["unpadded", "buckets"])
def batched(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    for client in started(max_batch_size=REQUESTS_PER_MODEL, max_queue_delay_ms=60_000,
                          request_timeout_s=120, batch_buckets=request.param):
        padded = {graph.buckets is not None for served in client.app.state.service.models.values()
                  for graph in served.pipeline.graphs.values()}
        assert padded == {request.param != "off"}
        yield client


@pytest.fixture(scope="module")
def solo() -> Iterator[TestClient]:
    yield from started(max_batch_size=1, max_queue_delay_ms=0, batch_buckets="off")


def mixed_calls(world: Path, clips: list[bytes]) -> dict[str, list[Call]]:
    """Model name -> REQUESTS_PER_MODEL calls to it, no two alike."""
    images = load_captions(world, "test")
    pngs = [(world / im.path).read_bytes() for im in images]
    sentences = [im.captions[k % len(im.captions)] for k, im in enumerate(images)]
    questions = distinct_questions(world, [im.imgid for im in images])
    calls: dict[str, list[Call]] = {}
    for name, bundle in served_bundles().items():
        task = bundle.manifest.task
        if task == "caption":
            calls[name] = caption_calls(name, pngs, bundle.manifest.decoding.attention is not None)
        elif task == "vqa":
            calls[name] = [call("vqa", png, question, top_k=1 + k % 3, model=name)
                           for k, (png, question) in enumerate(zip(pngs, questions, strict=True))]
        elif task == "alignment":
            betas = [{}, {"beta": 0.0}, {"beta": 4.0}, {}, {"beta": 1.0}, {"beta": 0.5}]
            calls[name] = [call("align", png, sentence, model=name, **beta)
                           for png, sentence, beta in zip(pngs, sentences, betas, strict=True)]
        elif task == "retrieval":
            calls[name] = [call("embed", text=sentences[0], model=name),
                           call("embed", image=pngs[1], model=name),
                           call("search_images", sentences[2], top_k=3, model=name),
                           call("search_captions", pngs[3], top_k=2, model=name),
                           call("search_images", sentences[4], top_k=5, model=name),
                           call("search_captions", pngs[5], top_k=4, model=name)]
        elif task == "generation":
            prompts = ["a small red circle", "a large blue square", "a small green star",
                       "a large white hexagon", "a small yellow cross", "a large purple diamond"]
            calls[name] = [call("generate_images", prompt, n=1 + k % 3, seed=k, model=name)
                           for k, prompt in enumerate(prompts)]
        elif task == "activity":
            calls[name] = [call("video_activities", clip, model=name, top_k=1 + k % 3,
                                per_frame=k % 2 == 0) for k, clip in enumerate(clips[:-1])]
            calls[name].append(call("video_activities", frames=pngs[:3], model=name))
        elif task == "video-caption":
            settings = [dict(beam_size=1), dict(beam_size=5, num_captions=3),
                        dict(beam_size=3, max_length=5), dict(beam_size=2, length_penalty=1.0),
                        dict(beam_size=4, num_captions=2)]
            calls[name] = [call("video_captions", clip, model=name, **s)
                           for clip, s in zip(clips[:-1], settings, strict=True)]
            calls[name].append(call("video_captions", frames=pngs[:3], model=name))
    assert set(calls) == set(served_bundles()), "a committed model has no mixed batch here"
    return calls


def caption_calls(name: str, pngs: list[bytes], attention: bool) -> list[Call]:
    settings = [dict(beam_size=1), dict(beam_size=5, num_captions=3),
                dict(beam_size=3, max_length=5, return_attention=attention),
                dict(decoding="sample", seed=3, temperature=0.7, num_captions=2),
                dict(beam_size=2, length_penalty=1.0),
                dict(decoding="sample", seed=4, top_k=3)]
    return [call("caption", png, model=name, **s) for png, s in zip(pngs, settings, strict=True)]


def call(method: str, *args: Any, **kwargs: Any) -> Call:
    """A call of AsyncGlimpseClient.`method`(*args, **kwargs), made when given a client."""
    return lambda client: getattr(client, method)(*args, **kwargs)


def distinct_questions(world: Path, imgids: list[int]) -> list[str]:
    """One question per image, no two the same."""
    data = json.loads((world / "vqa" / "test_questions.json").read_text())["questions"]
    chosen: list[str] = []
    for imgid in imgids:
        chosen.append(next(q["question"] for q in data
                           if q["image_id"] == imgid and q["question"] not in chosen))
    return chosen


def run(client: TestClient, calls: list[Call], *, together: bool) -> list[Any]:
    """The answers to `calls` on the app of `client`: all at once, or one after another."""

    async def main() -> list[Any]:
        transport = httpx.ASGITransport(app=client.app)
        async with AsyncGlimpseClient("http://testserver", transport=transport,
                                      timeout=120) as glimpse:
            if together:
                return await asyncio.gather(*(call(glimpse) for call in calls))
            return [await call(glimpse) for call in calls]

    return client.portal.call(main)


def step_level(name: str) -> bool:
    """Whether model `name` batches decode steps (rows join and leave between steps)
    rather than whole requests."""
    return pipeline_for(served_bundles()[name].manifest).batcher is not Pipeline.batcher


def batch_sizes(client: TestClient) -> dict[str, tuple[float, float]]:
    """Served model key -> (batches run, requests in them) from /metrics."""
    text = client.get("/metrics").text
    found: dict[str, list[float]] = {}
    for kind, key, value in re.findall(
            r'glimpse_batch_size_(count|sum)\{model="([^"]+)"\} ([0-9.e+]+)', text):
        found.setdefault(key, [0.0, 0.0])[kind == "sum"] = float(value)
    return {key: (count, total) for key, (count, total) in found.items()}


def assert_same(got: Any, want: Any, where: str) -> None:
    """Equal answers; floats to 1e-4 (a batch may sum in another order), PNGs to 1 level."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, bytes):
        a = np.asarray(Image.open(io.BytesIO(got)), dtype=int)
        b = np.asarray(Image.open(io.BytesIO(want)), dtype=int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, where
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4), where
    else:
        assert got == want, where


def test_every_model_batches_mixed_requests_and_answers_each_as_alone(
        batched: TestClient, solo: TestClient, world: Path, clips: list[bytes]) -> None:
    calls = mixed_calls(world, clips)
    names = list(calls)
    flat = [call for name in names for call in calls[name]]
    before = batch_sizes(batched)
    together = run(batched, flat, together=True)
    after = batch_sizes(batched)
    alone = run(solo, flat, together=False)
    for name in names:
        key = served_bundles()[name].key
        count0, total0 = before.get(key, (0.0, 0.0))
        count1, total1 = after[key]
        if step_level(name):  # each step is a batch of the rows decoding then
            assert (total1 - total0) / (count1 - count0) > 1, f"{key}: no step was shared"
        else:
            assert (count1 - count0, total1 - total0) == (1, REQUESTS_PER_MODEL), \
                f"{key}: the requests did not form one batch"
    for k, (got, want) in enumerate(zip(together, alone, strict=True)):
        name = names[k // REQUESTS_PER_MODEL]
        assert_same(got, want, f"{name} request {k % REQUESTS_PER_MODEL}")
    for name in names:  # answers that differ, so that a mixed-up batch could not pass
        start = names.index(name) * REQUESTS_PER_MODEL
        answers = [repr(a) for a in alone[start:start + REQUESTS_PER_MODEL]]
        assert len(set(answers)) == REQUESTS_PER_MODEL, f"{name}: some answers are alike"
