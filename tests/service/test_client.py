"""GlimpseClient against the in-process app; AsyncGlimpseClient errors with a mock transport."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from in_process import TestClientTransport
from tiny_bundle import sample_png

from service.client import AsyncGlimpseClient, GlimpseAPIError, GlimpseClient
from service.pipelines.caption import CaptionModel


@pytest.fixture
def glimpse(make_client) -> GlimpseClient:
    app_client: TestClient = make_client(api_keys="secret")
    return GlimpseClient("http://testserver", api_key="secret",
                         transport=TestClientTransport(app_client))


def test_caption_models_and_health(glimpse: GlimpseClient, repository: Path,
                                   tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(sample_png(3))
    answer = glimpse.caption(path, model="caption-tiny/1", beam_size=2, num_captions=2,
                             return_attention=True)
    offline = CaptionModel.from_bundle(repository / "caption-tiny" / "1")
    want = offline.caption(sample_png(3), beam_size=2, num_captions=2)
    assert [c["text"] for c in answer["captions"]] == [c.text for c in want.captions]
    assert len(answer["attention"]) == 2
    assert glimpse.caption(sample_png(3), model="caption-tiny/1", beam_size=2) \
        ["captions"][0] == answer["captions"][0]
    assert [m["id"] for m in glimpse.models()] == ["caption-nic/1", "caption-tiny/1",
                                                  "caption-tiny/2"]
    assert glimpse.health()["ready"] is True
    assert glimpse.wait_ready(timeout=1)["status"] == "ready"


def test_caption_samples_with_the_sampling_parameters(glimpse: GlimpseClient,
                                                     repository: Path) -> None:
    answer = glimpse.caption(sample_png(4), model="caption-tiny/1", decoding="sample",
                             temperature=0.7, top_k=6, top_p=0.9, seed=21, num_captions=2)
    offline = CaptionModel.from_bundle(repository / "caption-tiny" / "1")
    want = offline.caption(sample_png(4), decoding="sample", temperature=0.7, top_k=6,
                           top_p=0.9, seed=21, num_captions=2)
    assert [c["text"] for c in answer["captions"]] == [c.text for c in want.captions]
    with pytest.raises(GlimpseAPIError) as err:
        glimpse.caption(sample_png(4), decoding="sample", beam_size=3)
    assert err.value.status == 422 and err.value.message.startswith("beam_size")


def test_errors_carry_status_type_and_request_id(glimpse: GlimpseClient) -> None:
    with pytest.raises(GlimpseAPIError) as err:
        glimpse.caption(sample_png(0), model="caption-tiny", beam_size=25)
    assert (err.value.status, err.value.type) == (422, "invalid_parameter")
    assert err.value.message.startswith("beam_size")
    assert len(err.value.request_id) == 32
    with pytest.raises(GlimpseAPIError) as err:
        glimpse.caption(b"not an image")
    assert err.value.status == 415


def test_async_client_reports_retry_after() -> None:
    def overloaded(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer k"
        body = {"error": {"type": "overloaded", "message": "queue full", "request_id": "r1"}}
        return httpx.Response(503, json=body, headers={"Retry-After": "2"})

    async def main() -> GlimpseAPIError:
        async with AsyncGlimpseClient("http://x", api_key="k",
                                      transport=httpx.MockTransport(overloaded)) as client:
            with pytest.raises(GlimpseAPIError) as err:
                await client.caption(b"png bytes", beam_size=3, return_attention=False)
            health = await client.health()
            assert health["error"]["type"] == "overloaded"  # 503 is an answer, not a raise
            return err.value

    error = asyncio.run(main())
    assert (error.status, error.type, error.retry_after, error.request_id) == \
        (503, "overloaded", 2.0, "r1")
