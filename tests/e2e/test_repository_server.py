"""Every endpoint of the committed repository on a real server, under mixed concurrent load.

`python -m service` serves `model_repository/` as shipped on a free port; one burst of
concurrent requests mixes captions, VQA, alignment, embeddings, both retrievals,
image generation and bad requests. Each good request must get the same answer it gets
alone, and each bad one its 4xx, whatever it was batched with.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from e2e_server import running_server
from PIL import Image

from service.client import AsyncGlimpseClient, GlimpseAPIError, GlimpseClient

REPOSITORY = Path(__file__).parents[2] / "model_repository"
# One question per image, each of another kind, so a batch that mixed answers up fails.
QUESTIONS = ["what color is the square?", "how many squares are there?",
             "is there a red square?"]


def _scene_png(seed: int) -> bytes:
    """A shapes-world-like test image: coloured squares on grey."""
    rng = np.random.default_rng(seed)
    pixels = np.full((64, 64, 3), 128, dtype=np.uint8)
    for _ in range(2):
        x, y = rng.integers(4, 44, size=2)
        pixels[y:y + 14, x:x + 14] = rng.integers(0, 256, size=3)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("e2e_repository") / "server.log"
    env = {"GLIMPSE_MAX_QUEUE_DELAY_MS": "20", "GLIMPSE_INTRA_OP_THREADS": "1"}
    with running_server(REPOSITORY, log_path, env, ready_timeout=60) as (_, url):
        yield url


def _calls(client: AsyncGlimpseClient, image: bytes, k: int) -> list:
    """One request of each kind for image k (coroutines)."""
    return [
        client.caption(image),
        client.vqa(image, QUESTIONS[k], top_k=1 + k),
        client.align(image, "a red square left of a blue square"),
        client.embed(text=f"a red square and {k + 1} blue circles"),
        client.search_images("a small green circle", top_k=3),
        client.search_captions(image, top_k=3),
        client.generate_images("a small red circle", n=2, seed=k),
    ]


def _assert_same(got: object, want: object) -> None:
    """Equal answers; floats to 1e-4 (a batch may sum in another order), PNGs to 1 level."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys()
        for key in want:
            _assert_same(got[key], want[key])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _assert_same(g, w)
    elif isinstance(want, bytes):
        a = np.asarray(Image.open(io.BytesIO(got)), dtype=int)
        b = np.asarray(Image.open(io.BytesIO(want)), dtype=int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4)
    else:
        assert got == want


def test_mixed_concurrent_load_gets_the_solo_answers_and_bad_requests_their_4xx(
        server: str) -> None:
    images = [_scene_png(seed) for seed in range(3)]

    async def burst() -> list:
        async with AsyncGlimpseClient(server, timeout=60) as client:
            good = [c for k, image in enumerate(images) for c in _calls(client, image, k)]
            bad = [client.vqa(images[0], "what colour is the zebra?"),
                   client.generate_images("a small red circle", n=17),
                   client.caption(b"not an image"),
                   client.search_images("", top_k=3)]
            return await asyncio.gather(*good, *bad, return_exceptions=True)

    async def alone() -> list:
        async with AsyncGlimpseClient(server, timeout=60) as client:
            return [await c for k, image in enumerate(images) for c in _calls(client, image, k)]

    together = asyncio.run(burst())
    solo = asyncio.run(alone())
    good, bad = together[:len(solo)], together[len(solo):]
    for got, want in zip(good, solo, strict=True):
        assert not isinstance(got, Exception), got
        _assert_same(got, want)
    assert [e.status for e in bad if isinstance(e, GlimpseAPIError)] == [422, 422, 415, 422]
    with GlimpseClient(server) as client:
        assert client.health()["ready"] is True
