"""The HTTP API in process (`with TestClient(app)`, so the lifespan loads the bundles)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from polling import until, wait_until
from tiny_bundle import GRID, build_caption_bundle, sample_png

from service.app import create_app
from service.pipelines.caption import CaptionModel
from service.settings import Settings

PNG = sample_png(7)
MakeClient = Callable[..., TestClient]


def post_file(client: TestClient, data: bytes = PNG, headers: dict | None = None,
              **fields: object):
    form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    return client.post("/v1/captions", files={"file": ("x.png", data, "image/png")},
                       data=form, headers=headers or {})


def post_json(client: TestClient, data: bytes = PNG, **fields: object):
    return client.post("/v1/captions",
                       json={"image": base64.b64encode(data).decode(), **fields})


def assert_error(response, status: int, error_type: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["request_id"] == response.headers["x-request-id"]
    for word in words:
        assert word in error["message"]
    return error


def batcher(client: TestClient, key: str):
    return client.app.state.service.models[key].batcher


# ---------------------------------------------------------------------------- health, models


def test_health_and_readiness(api: TestClient) -> None:
    assert api.get("/v2/health/live").json() == {"status": "live"}
    ready = api.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "status": "ready", "errors": [],
                            "models": ["caption-nic/1", "caption-tiny/1", "caption-tiny/2"]}


def test_not_ready_before_the_lifespan_has_loaded_the_models(repository: Path) -> None:
    client = TestClient(create_app(Settings(model_repository=repository)))  # no lifespan
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "loading"
    assert ready.headers["retry-after"] == "5"
    assert client.get("/v2/health/live").status_code == 200


def test_models_lists_every_version(api: TestClient) -> None:
    models = {m["id"]: m for m in api.get("/v1/models").json()["models"]}
    assert list(models) == ["caption-nic/1", "caption-tiny/1", "caption-tiny/2"]
    assert (models["caption-tiny/1"]["latest"], models["caption-tiny/2"]["latest"]) == \
        (False, True)
    tiny = models["caption-tiny/2"]
    assert (tiny["task"], tiny["architecture"], tiny["metrics"]) == \
        ("caption", "sat-soft", {"test": {"bleu4": 0.0}})
    assert tiny["defaults"] == {"beam_size": 3, "max_length": 12, "length_penalty": 0.0,
                                "attention": True}
    assert models["caption-nic/1"]["defaults"]["attention"] is False


def test_openapi_documents_both_request_forms(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    body = spec["paths"]["/v1/captions"]["post"]["requestBody"]["content"]
    # One form per decoding method (their parameters exclude each other): beam, sample.
    beam, sample = body["multipart/form-data"]["schema"]["oneOf"]
    assert (beam["required"], sample["required"]) == (["file"], ["file", "decoding"])
    assert "beam_size" in beam["properties"] and "beam_size" not in sample["properties"]
    assert "temperature" in sample["properties"] and "temperature" not in beam["properties"]
    assert [s["required"] for s in body["application/json"]["schema"]["oneOf"]] == \
        [["image"], ["decoding", "image"]]
    assert api.get("/docs").status_code == 200


# ---------------------------------------------------------------------------- captions


def test_caption_equals_the_offline_pipeline(api: TestClient, repository: Path) -> None:
    offline = CaptionModel.from_bundle(repository / "caption-tiny" / "2")
    want = offline.caption(PNG, beam_size=4, num_captions=2)
    response = post_file(api, model="caption-tiny", beam_size=4, num_captions=2)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "caption-tiny/2"
    assert "attention" not in body
    assert [c["text"] for c in body["captions"]] == [c.text for c in want.captions]
    np.testing.assert_allclose([c["log_prob"] for c in body["captions"]],
                               [c.log_prob for c in want.captions], rtol=1e-5)


def test_json_and_multipart_give_the_same_answer(api: TestClient) -> None:
    params = dict(model="caption-tiny/1", beam_size=3, num_captions=3, length_penalty=0.7)
    multipart = post_file(api, **params).json()
    assert post_json(api, **params).json() == multipart
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert api.post("/v1/captions", json={"image": data_url, **params}).json() == multipart


def test_model_selection(make_client: MakeClient) -> None:
    client = make_client()
    # The built-in default, caption-sat, is not in this repository: first name A-Z.
    assert post_file(client).json()["model"] == "caption-nic/1"
    assert post_file(client, model="caption-tiny/1").json()["model"] == "caption-tiny/1"
    assert_error(post_file(client, model="caption-zzz"), 404, "model_not_found",
                 "caption-zzz", "caption-tiny/2")
    assert_error(post_file(client, model="caption-tiny/7"), 404, "model_not_found")
    assert_error(post_file(client, model="Caption Tiny"), 422, "invalid_parameter",
                 "name/version")
    configured = make_client(default_models={"caption": "caption-tiny"})
    assert post_file(configured).json()["model"] == "caption-tiny/2"


def test_attention_maps_per_word(api: TestClient) -> None:
    body = post_file(api, model="caption-tiny", num_captions=2,
                     return_attention=True).json()
    assert len(body["attention"]) == 2
    for caption, maps in zip(body["captions"], body["attention"], strict=True):
        assert [m["word"] for m in maps] == caption["text"].split()
        for m in maps:
            weights = np.array(m["weights"])
            assert weights.shape == (GRID, GRID)
            assert weights.sum() == pytest.approx(1.0, abs=1e-4)
    assert_error(post_file(api, model="caption-nic", return_attention=True), 422,
                 "invalid_parameter", "return_attention", "no attention")


@pytest.mark.parametrize("fields, named", [
    (dict(beam_size=0), "beam_size"),
    (dict(beam_size=21), "beam_size"),
    (dict(beam_size="three"), "beam_size"),
    (dict(max_length=0), "max_length"),
    (dict(max_length=101), "max_length"),
    (dict(length_penalty=-1), "length_penalty"),
    (dict(num_captions=0), "num_captions"),
    (dict(beam_size=2, num_captions=3), "num_captions"),
    (dict(return_attention="maybe"), "return_attention"),
    (dict(beam=3), "beam"),
])
def test_bad_parameters_are_422_naming_them(api: TestClient, fields: dict,
                                            named: str) -> None:
    for response in (post_file(api, model="caption-tiny", **fields),
                     post_json(api, model="caption-tiny", **fields)):
        error = assert_error(response, 422, "invalid_parameter")
        assert error["message"].startswith(named)


def test_sampled_captions_equal_the_offline_pipeline_and_name_their_seed(
        api: TestClient, repository: Path) -> None:
    offline = CaptionModel.from_bundle(repository / "caption-tiny" / "2")
    params = dict(decoding="sample", seed=9, num_captions=3, temperature=0.8, top_p=0.95)
    want = offline.caption(PNG, **params)
    response = post_file(api, model="caption-tiny", **params)
    assert response.status_code == 200, response.text
    assert response.headers["x-seed"] == "9"
    body = response.json()
    assert [c["text"] for c in body["captions"]] == [c.text for c in want.captions]
    np.testing.assert_allclose([c["log_prob"] for c in body["captions"]],
                               [c.log_prob for c in want.captions], rtol=1e-5)
    assert post_json(api, model="caption-tiny", **params).json() == body
    assert "x-seed" not in post_file(api, model="caption-tiny").headers  # beam search


def test_a_sample_without_seed_names_the_one_it_drew(api: TestClient) -> None:
    first = post_file(api, model="caption-tiny", decoding="sample", num_captions=4)
    assert first.status_code == 200
    seed = int(first.headers["x-seed"])
    again = post_file(api, model="caption-tiny", decoding="sample", num_captions=4, seed=seed)
    assert again.json() == first.json()


@pytest.mark.parametrize("fields, named", [
    (dict(decoding="greedy"), "decoding"),
    (dict(decoding="sample", temperature=0), "temperature"),
    (dict(decoding="sample", temperature=11), "temperature"),
    (dict(decoding="sample", temperature="hot"), "temperature"),
    (dict(decoding="sample", top_k=-1), "top_k"),
    (dict(decoding="sample", top_k=25), "top_k"),  # more than the step graph's 24
    (dict(decoding="sample", top_k=10**30), "top_k"),  # past int64 too
    (dict(decoding="sample", top_p=0), "top_p"),
    (dict(decoding="sample", top_p=1.01), "top_p"),
    (dict(decoding="sample", seed=-3), "seed"),
    (dict(decoding="sample", seed=2**63), "seed"),
    (dict(decoding="sample", num_captions=21), "num_captions"),
    (dict(decoding="sample", beam_size=3), "beam_size"),
    (dict(decoding="sample", length_penalty=0.5), "length_penalty"),
    (dict(temperature=0.7), "temperature"),
    (dict(top_k=3), "top_k"),
    (dict(decoding="beam", top_p=0.9), "top_p"),
    (dict(seed=1), "seed"),
])
def test_bad_sampling_parameters_are_422_naming_them(api: TestClient, fields: dict,
                                                     named: str) -> None:
    for response in (post_file(api, model="caption-tiny", **fields),
                     post_json(api, model="caption-tiny", **fields)):
        error = assert_error(response, 422, "invalid_parameter")
        assert error["message"].startswith(named), error["message"]


@pytest.mark.parametrize("fields, named", [
    (dict(top_k=None), "top_k"), (dict(decoding="beam", seed=None), "seed"),
    (dict(decoding="sample", beam_size=None), "beam_size"),
])
def test_the_other_methods_parameters_are_refused_even_as_null(api: TestClient, fields: dict,
                                                               named: str) -> None:
    """Neither of the OpenAPI document's two forms has them, so a JSON null is no excuse."""
    error = assert_error(post_json(api, model="caption-tiny", **fields), 422,
                         "invalid_parameter")
    assert error["message"].startswith(named), error["message"]


def test_malformed_requests(api: TestClient) -> None:
    assert_error(api.post("/v1/captions", data={"beam_size": "2"},
                             files={"other": ("x", b"1")}), 422, "invalid_parameter", "file")
    # a field sent twice has no single value to read: refused, not one of them taken
    assert_error(api.post("/v1/captions", data={"beam_size": ["2", "3"]},
                          files={"file": ("x.png", PNG, "image/png")}),
                 422, "invalid_parameter", "beam_size", "more than once")
    assert_error(api.post("/v1/captions", json={"beam_size": 2}), 422,
                 "invalid_parameter", "image")
    assert_error(api.post("/v1/captions", json={"image": "***"}), 400, "bad_request",
                 "base64")
    assert_error(api.post("/v1/captions", content=b"{not json",
                             headers={"content-type": "application/json"}),
                 400, "bad_request", "JSON")
    assert_error(api.post("/v1/captions", json=[1, 2]), 400, "bad_request", "object")
    assert_error(api.post("/v1/captions", content=PNG,
                             headers={"content-type": "image/png"}),
                 415, "unsupported_media_type", "multipart/form-data")


def test_non_images_are_415(api: TestClient) -> None:
    assert_error(post_file(api, b"GIF89a but not really"), 415, "unsupported_media_type")
    assert_error(post_json(api, b"plain text"), 415, "unsupported_media_type")


def test_size_limits(make_client: MakeClient) -> None:
    client = make_client(max_body_bytes=4000, max_image_pixels=40 * 40)
    big_body = post_file(client, PNG + b"\0" * 5000)
    assert_error(big_body, 413, "payload_too_large", "4000")
    assert_error(post_file(client, sample_png(1, size=48)), 413, "payload_too_large",
                 "48x48")
    assert post_file(client, sample_png(1, size=40)).status_code == 200

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield b'{"image": "'
        for _ in range(10):
            yield b"A" * 1000
    streamed = client.post("/v1/captions", content=chunks(),
                           headers={"content-type": "application/json"})
    assert_error(streamed, 413, "payload_too_large")


def test_request_id_is_echoed_or_made(api: TestClient) -> None:
    given = api.get("/v2/health/live", headers={"X-Request-ID": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    made = api.get("/v2/health/live", headers={"X-Request-ID": "bad id\twith spaces"})
    assert len(made.headers["x-request-id"]) == 32
    assert_error(api.get("/v1/nothing"), 404, "not_found")


# ---------------------------------------------------------------------------- access


def test_api_keys(make_client: MakeClient) -> None:
    client = make_client(api_keys="k-one,k-two")
    error = assert_error(post_file(client, model="caption-tiny"), 401, "unauthorized")
    assert "API key" in error["message"]
    assert client.post("/v1/captions").headers["www-authenticate"] == "Bearer"
    assert_error(post_file(client, headers={"Authorization": "Bearer nope"}), 401,
                 "unauthorized", "invalid")
    assert post_file(client, headers={"Authorization": "Bearer k-two"}).status_code == 200
    assert post_file(client, headers={"X-API-Key": "k-one"}).status_code == 200
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"X-API-Key": "k-one"}).status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_refused_keys_are_counted_in_the_request_metrics(make_client: MakeClient) -> None:
    client = make_client(api_keys="k-one")
    post_file(client, model="caption-tiny")
    post_file(client, headers={"X-API-Key": "nope"})
    client.get("/v1/models")
    metrics = client.get("/metrics").text
    assert 'glimpse_requests_total{model="unknown",outcome="unauthorized"} 3.0' in metrics


def test_cors_is_off_unless_configured(make_client: MakeClient) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    closed = make_client().options("/v1/captions", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    opened = make_client(cors_origins="https://app.example")
    answer = opened.options("/v1/captions", headers=preflight)
    assert answer.headers["access-control-allow-origin"] == "https://app.example"


# ---------------------------------------------------------------------------- queueing


@contextlib.contextmanager
def companion_on_its_way(client: TestClient, task: str) -> Iterator[None]:
    """Count one more request of `task` as taken in and not answered: a lone queued request
    then waits `max_queue_delay_ms` for companions instead of being computed at once."""
    arriving = client.app.state.service.arriving
    arriving[task] += 1
    try:
        yield
    finally:
        arriving[task] -= 1


class Gate:
    """Holds every batch of one model until opened; counts the requests it computed."""

    def __init__(self, client: TestClient, key: str) -> None:
        self.batcher = batcher(client, key)
        self.original = self.batcher.infer
        self.event = threading.Event()
        self.computed = 0
        self.batcher.infer = self

    def __call__(self, requests):
        self.computed += len(requests)
        self.event.wait(10)
        return self.original(requests)


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread, out


def test_full_queue_is_503_with_retry_after(make_client: MakeClient) -> None:
    client = make_client(max_batch_size=1, max_queue_size=1, max_queue_delay_ms=0)
    gate = Gate(client, "caption-tiny/2")
    b = gate.batcher
    first, out1 = in_thread(lambda: post_file(client, model="caption-tiny"))
    wait_until(lambda: b.running == 1)
    second, out2 = in_thread(lambda: post_file(client, model="caption-tiny"))
    wait_until(lambda: len(b.queue) == 1)
    refused = post_file(client, model="caption-tiny")
    assert_error(refused, 503, "overloaded", "retry later")
    assert refused.headers["retry-after"] == "1"
    gate.event.set()
    first.join(10)
    second.join(10)
    assert [out1[0].status_code, out2[0].status_code] == [200, 200]
    assert gate.computed == 2


def test_a_full_queue_refuses_before_the_image_is_decoded(make_client: MakeClient) -> None:
    client = make_client(max_batch_size=1, max_queue_size=1, max_queue_delay_ms=0)
    gate = Gate(client, "caption-tiny/2")
    b = gate.batcher
    first, out1 = in_thread(lambda: post_file(client, model="caption-tiny"))
    wait_until(lambda: b.running == 1)
    second, out2 = in_thread(lambda: post_file(client, model="caption-tiny"))
    wait_until(lambda: len(b.queue) == 1)
    # Not an image, but the queue has no place for it: 503 before any decoding (not 415).
    assert_error(post_file(client, b"not an image", model="caption-tiny"), 503, "overloaded")
    gate.event.set()
    first.join(10)
    second.join(10)
    assert [out1[0].status_code, out2[0].status_code] == [200, 200]
    assert_error(post_file(client, b"not an image", model="caption-tiny"), 415,
                 "unsupported_media_type")


def test_timeout_in_queue_is_504_and_never_computed(make_client: MakeClient) -> None:
    client = make_client(model_overrides={"caption-tiny": {"max_queue_delay_ms": 2000,
                                                           "request_timeout_s": 0.05}})
    gate = Gate(client, "caption-tiny/2")
    gate.event.set()
    with companion_on_its_way(client, "caption"):  # so the lone request waits in the queue
        assert_error(post_file(client, model="caption-tiny"), 504, "timeout", "0.05 s")
    assert gate.computed == 0
    assert post_file(client, model="caption-nic").status_code == 200  # others unaffected
    metrics = client.get("/metrics").text
    assert 'glimpse_requests_total{model="caption-tiny/2",outcome="timeout"} 1.0' in metrics


def test_failing_batch_is_500_logged_with_its_request_id(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    b = batcher(client, "caption-tiny/2")
    original = b.infer

    def broken(requests):
        b.infer = original
        raise RuntimeError("graph exploded")

    b.infer = broken
    with caplog.at_level(logging.ERROR):
        failed = post_file(client, model="caption-tiny")
    error = assert_error(failed, 500, "internal_error")
    assert "graph exploded" not in error["message"]
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == error["request_id"]]
    assert logged and "graph exploded" in logged[0].exc_text
    assert post_file(client, model="caption-tiny").status_code == 200  # the queue serves on


def test_disconnected_caller_leaves_the_queue_before_compute(
        make_client: MakeClient) -> None:
    client = make_client(max_batch_size=1, max_queue_delay_ms=0)
    gate = Gate(client, "caption-tiny/2")
    b = gate.batcher
    busy, out = in_thread(lambda: post_file(client, model="caption-tiny"))
    wait_until(lambda: b.running == 1)
    body = json.dumps({"image": base64.b64encode(PNG).decode(),
                       "model": "caption-tiny"}).encode()

    async def call_and_hang_up() -> list[dict]:
        gone = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "path": "/v1/captions", "raw_path": b"/v1/captions",
                 "query_string": b"", "root_path": "", "scheme": "http",
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
        call = asyncio.ensure_future(client.app(scope, receive, send))
        await until(lambda: len(b.queue) > 0)
        gone.set()
        await call
        return sent

    sent = client.portal.call(call_and_hang_up)
    assert len(b.queue) == 0
    gate.event.set()
    busy.join(10)
    assert out[0].status_code == 200
    assert gate.computed == 1  # the hung-up request was never computed
    assert sent[0]["status"] == 499
    metrics = client.get("/metrics").text
    assert 'outcome="client_disconnected"} 1.0' in metrics


def test_concurrent_requests_are_batched(make_client: MakeClient,
                                         repository: Path) -> None:
    # The batch fires when the fourth request arrives; the long delay only absorbs a slow
    # machine, it is not waited out.
    client = make_client(max_batch_size=4, max_queue_delay_ms=3000)
    offline = CaptionModel.from_bundle(repository / "caption-tiny" / "2")
    images = [sample_png(i) for i in range(4)]
    with companion_on_its_way(client, "caption"):  # so that the first does not run alone
        threads = [in_thread(lambda data=data, i=i: post_file(
            client, data, model="caption-tiny", beam_size=1 + i)) for i, data in enumerate(images)]
        for thread, _ in threads:
            thread.join(10)
    for i, (_, out) in enumerate(threads):
        want = offline.caption(images[i], beam_size=1 + i).captions[0].text
        assert out[0].json()["captions"][0]["text"] == want
    metrics = client.get("/metrics").text
    assert 'glimpse_batch_size_count{model="caption-tiny/2"} 1.0' in metrics
    assert 'glimpse_batch_size_sum{model="caption-tiny/2"} 4.0' in metrics
    assert 'glimpse_requests_total{model="caption-tiny/2",outcome="ok"} 4.0' in metrics


def test_sampled_and_beam_requests_share_a_batch_and_keep_their_answers(
        make_client: MakeClient, repository: Path) -> None:
    client = make_client(max_batch_size=4, max_queue_delay_ms=3000)
    offline = CaptionModel.from_bundle(repository / "caption-tiny" / "2")
    asks = [(sample_png(0), dict(beam_size=2)),
            (sample_png(1), dict(decoding="sample", seed=1)),
            (sample_png(0), dict(decoding="sample", seed=2, num_captions=2, top_k=5)),
            (sample_png(3), dict(beam_size=4, num_captions=2))]
    with companion_on_its_way(client, "caption"):  # so that the first does not run alone
        threads = [in_thread(lambda data=data, fields=fields: post_file(
            client, data, model="caption-tiny", **fields)) for data, fields in asks]
        for thread, _ in threads:
            thread.join(10)
    for (data, fields), (_, out) in zip(asks, threads, strict=True):
        want = offline.caption(data, **fields)
        assert [c["text"] for c in out[0].json()["captions"]] == [c.text for c in want.captions]
    metrics = client.get("/metrics").text
    assert 'glimpse_batch_size_count{model="caption-tiny/2"} 1.0' in metrics
    assert 'glimpse_batch_size_sum{model="caption-tiny/2"} 4.0' in metrics


# ---------------------------------------------------------------------------- lifecycle


def test_draining_refuses_new_work_and_turns_not_ready(client: TestClient) -> None:
    client.app.state.service.begin_drain()
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    refused = post_file(client, model="caption-tiny")
    assert_error(refused, 503, "unavailable", "draining")
    assert refused.headers["retry-after"] == "5"


def test_a_bad_bundle_is_skipped_and_the_service_is_not_ready(
        tmp_path: Path, repository: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository / "caption-nic", repo / "caption-nic")
    bad = build_caption_bundle(repo, "caption-bad", 1)
    (bad / "decoder_step.onnx").write_bytes(b"tampered")
    with caplog.at_level(logging.ERROR), \
            TestClient(create_app(Settings(model_repository=repo))) as client:
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "degraded" and body["models"] == ["caption-nic/1"]
        assert "caption-bad/1/decoder_step.onnx: sha256 mismatch" in body["errors"][0]
        # Anyone may ask: no absolute path, no hash (the log has them).
        assert str(repo) not in ready.text and "/" + "caption-bad" not in ready.text
        assert not re.search(r"[0-9a-f]{64}", ready.text)
        assert post_file(client, model="caption-nic").status_code == 200
        assert_error(post_file(client, model="caption-bad"), 404, "model_not_found")
    assert any("caption-bad/1/decoder_step.onnx" in r.getMessage() for r in caplog.records)


def test_a_bundle_that_fails_its_warm_up_is_not_served(tmp_path: Path) -> None:
    bundle = build_caption_bundle(tmp_path / "repo", "caption-wrong-k", 1)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["decoding"]["top_k"] = 5  # the step graph returns more columns than that
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with TestClient(create_app(Settings(model_repository=tmp_path / "repo"))) as client:
        body = client.get("/v2/health/ready").json()
    assert (body["status"], body["models"]) == ("degraded", [])
    assert "caption-wrong-k/1: warm-up failed" in body["errors"][0]
    assert "expected (1, 5)" in body["errors"][0]


def test_openapi_is_as_strict_as_the_server(api: TestClient, make_client: MakeClient) -> None:
    """The "valid by the schema, refused by the server" cases fuzzing once found."""
    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    # The served document leaves out the endpoints of tasks this repository does not serve
    # (VQA, embeddings, generation, video); their request schemas are the application's.
    from fastapi.openapi.utils import get_openapi

    every = get_openapi(title="glimpse", version="0", routes=api.app.routes)["paths"]
    assert "/v1/vqa" not in paths and "/v1/videos/activities" not in paths
    vqa = every["/v1/vqa"]["post"]["requestBody"]["content"]
    image = vqa["application/json"]["schema"]["properties"]["image"]
    assert image["minLength"] >= 4 and re.fullmatch(image["pattern"], image["examples"][0])
    Image.open(io.BytesIO(base64.b64decode(image["examples"][0]))).load()  # a real image
    assert not re.fullmatch(image["pattern"], "iVBORw0KGgoAAAANSUhEUgAA...")
    assert vqa["multipart/form-data"]["schema"]["additionalProperties"] is False
    embeddings = every["/v1/embeddings"]["post"]["requestBody"]["content"]
    assert [f["required"] for f in embeddings["multipart/form-data"]["schema"]["oneOf"]] == \
        [["file"], ["text"]]
    generation = every["/v1/images/generations"]["post"]["requestBody"]["content"]
    prompt = generation["application/json"]["schema"]["properties"]["prompt"]
    assert prompt["minLength"] == 1 and prompt["pattern"] == "[A-Za-z0-9]"
    for path, file_field in (("/v1/videos/activities", "video"), ("/v1/videos/captions", "video")):
        clip = every[path]["post"]["requestBody"]["content"]  # one clip: a file or its frames
        assert [f["required"] for f in clip["application/json"]["schema"]["oneOf"]] == \
            [[file_field], ["frames"]]
        form = clip["multipart/form-data"]["schema"]
        assert [f["required"] for f in form["oneOf"]] == [["file"], ["frames"]]
        assert form["properties"]["frames"]["minItems"] == 1
    # served models only, and no security scheme while no key is configured
    captions = spec["paths"]["/v1/captions"]["post"]["requestBody"]["content"]
    model = captions["multipart/form-data"]["schema"]["oneOf"][0]["properties"]["model"]
    assert model["enum"] == ["caption-nic", "caption-tiny", "caption-nic/1", "caption-tiny/1",
                             "caption-tiny/2"]
    assert "securitySchemes" not in spec.get("components", {})
    keyed = make_client(api_keys="k").get("/openapi.json").json()
    assert set(keyed["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert keyed["paths"]["/v1/captions"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "security" not in keyed["paths"]["/v2/health/ready"]["get"]


@pytest.mark.parametrize(("body", "words"), [
    ({"beam_size": False}, ["beam_size"]),  # false is not a number
    ({"return_attention": 0}, ["return_attention"]),  # 0 is not a boolean
])
def test_json_values_must_have_their_json_type(api: TestClient, body: dict,
                                               words: list[str]) -> None:
    image = base64.b64encode(PNG).decode()
    response = api.post("/v1/captions", json={"image": image, **body})
    assert_error(response, 422, "invalid_parameter", *words)
    assert api.post("/v1/captions", json={"image": image, "beam_size": 3.0}).status_code == 200


def test_form_booleans_are_true_or_false(api: TestClient) -> None:
    assert_error(post_file(api, model="caption-tiny", return_attention="1"), 422,
                 "invalid_parameter", "return_attention", "true or false")
    assert post_file(api, model="caption-tiny", return_attention="true").status_code == 200


def test_a_file_part_without_a_filename_is_the_file(api: TestClient) -> None:
    boundary = "b0undary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"\r\n\r\n'.encode()
            + PNG + f"\r\n--{boundary}--\r\n".encode())
    response = api.post("/v1/captions", content=body,
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 200 and response.json()["captions"]
