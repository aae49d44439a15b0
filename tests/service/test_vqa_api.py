"""POST /v1/vqa in process, on tiny random-weight vqa bundles (tiny_vqa_bundle.py)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from polling import wait_until
from tiny_bundle import build_caption_bundle, sample_png
from tiny_vqa_bundle import ANSWERS, BOXES, TOKENS, build_vqa_bundle

from service.app import create_app
from service.pipelines.vqa import VqaModel
from service.settings import Settings

PNG = sample_png(3)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vqa_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vqa-tiny (versions 1 and 2), vqa-other, and a caption model."""
    root = tmp_path_factory.mktemp("vqa_repository")
    build_vqa_bundle(root, "vqa-tiny", 1, seed=0)
    build_vqa_bundle(root, "vqa-tiny", 2, seed=1)
    build_vqa_bundle(root, "vqa-other", 1, seed=2)
    build_caption_bundle(root, "caption-tiny", 1, seed=0)
    return root


@pytest.fixture(scope="module")
def vqa_api(vqa_repository: Path) -> Iterator[TestClient]:
    settings = Settings(model_repository=vqa_repository,
                        default_models={"vqa": "vqa-tiny"}, max_queue_delay_ms=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def ask(client: TestClient, question: str = "what color is the circle?", data: bytes = PNG,
        **fields: object):
    form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    return client.post("/v1/vqa", files={"file": ("x.png", data, "image/png")},
                       data={"question": question, **form})


def ask_json(client: TestClient, data: bytes = PNG, **fields: object):
    return client.post("/v1/vqa", json={"image": base64.b64encode(data).decode(), **fields})


def assert_error(response, status: int, error_type: str, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    for word in words:
        assert word in error["message"], error["message"]


# ---------------------------------------------------------------------------- pipeline


def test_batched_answers_equal_solo_answers(vqa_repository: Path) -> None:
    model = VqaModel.from_bundle(vqa_repository / "vqa-tiny" / "2")
    questions = ["what color is the circle", "how many squares are there",
                 "is a red circle left of the square", "what"]
    requests = [model.request(sample_png(i), q, top_k=len(ANSWERS), return_attention=True)
                for i, q in enumerate(questions)]
    batched = model.run_batch(requests)
    for request, together in zip(requests, batched, strict=True):
        alone = model.run_batch([request])[0]
        assert [a.answer for a in together.answers] == [a.answer for a in alone.answers]
        np.testing.assert_allclose([a.score for a in together.answers],
                                   [a.score for a in alone.answers], atol=1e-6)
        np.testing.assert_allclose([r.weight for r in together.attention],
                                   [r.weight for r in alone.attention], atol=1e-6)
    scores = [a.score for a in batched[0].answers]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(ANSWERS)
    assert sum(r.weight for r in batched[0].attention) == pytest.approx(1.0, abs=1e-5)
    assert [r.box for r in batched[0].attention] == [tuple(b) for b in BOXES]


def test_question_encoding_refuses_what_it_cannot_read(vqa_repository: Path) -> None:
    from service.errors import InvalidParameter

    model = VqaModel.from_bundle(vqa_repository / "vqa-tiny" / "1")
    assert model.encode_question("What color is the circle?") == tuple(
        TOKENS.index(w) for w in ["what", "color", "is", "the", "circle"])
    with pytest.raises(InvalidParameter, match="'zebra', 'purple', 'or' are not in the vocabulary"):
        model.encode_question("is the zebra purple or a zebra")
    with pytest.raises(InvalidParameter, match="has no words"):
        model.encode_question(" ?! ")
    with pytest.raises(InvalidParameter, match="9 words; model vqa-tiny/1 reads at most 8"):
        model.encode_question("what " * 9)


# ---------------------------------------------------------------------------- HTTP


def test_answers_equal_the_offline_pipeline(vqa_api: TestClient, vqa_repository: Path) -> None:
    response = ask(vqa_api, "how many circles are there?", top_k=4)
    assert response.status_code == 200, response.text
    body = response.json()
    offline = VqaModel.from_bundle(vqa_repository / "vqa-tiny" / "2").answer(
        PNG, "how many circles are there?", top_k=4)
    assert body["model"] == "vqa-tiny/2"
    assert body["question"] == "how many circles are there?"
    assert [a["answer"] for a in body["answers"]] == [a.answer for a in offline.answers]
    assert [a["score"] for a in body["answers"]] == pytest.approx(
        [a.score for a in offline.answers], abs=1e-6)
    assert "attention" not in body


def test_json_and_multipart_give_the_same_answer(vqa_api: TestClient) -> None:
    multipart = ask(vqa_api, "what color is the square", model="vqa-other")
    as_json = ask_json(vqa_api, question="what color is the square", model="vqa-other")
    assert multipart.status_code == as_json.status_code == 200
    assert multipart.json() == as_json.json()
    assert multipart.json()["model"] == "vqa-other/1"
    assert len(multipart.json()["answers"]) == 3  # the default top_k


def test_attention_boxes_are_in_pixels_of_the_upload(vqa_api: TestClient) -> None:
    wide = sample_png(5, size=32)  # 32 x 32 upload, the model reads 16 x 16
    body = ask(vqa_api, "what color is the circle", data=wide, return_attention=True,
               model="vqa-tiny/1").json()
    assert [r["box"] for r in body["attention"]] == [[0.0, 0.0, 16.0, 32.0],
                                                     [16.0, 0.0, 32.0, 32.0],
                                                     [0.0, 0.0, 32.0, 32.0]]
    weights = [r["weight"] for r in body["attention"]]
    assert sum(weights) == pytest.approx(1.0, abs=1e-5) and min(weights) > 0


def test_model_selection_and_unknown_models(vqa_api: TestClient) -> None:
    assert ask(vqa_api, model="vqa-tiny/1").json()["model"] == "vqa-tiny/1"
    assert_error(ask(vqa_api, model="vqa-missing"), 404, "model_not_found", "vqa-tiny/2")
    assert_error(ask(vqa_api, model="caption-tiny"), 422, "invalid_parameter",
                 "is a caption model")
    models = {m["id"]: m["task"] for m in vqa_api.get("/v1/models").json()["models"]}
    assert models["vqa-tiny/2"] == "vqa" and models["caption-tiny/1"] == "caption"


@pytest.mark.parametrize(("fields", "words"), [
    ({"question": "what colour is the circle"}, ["'colour' is not in the vocabulary"]),
    ({"question": "?"}, ["has no words"]),
    ({"question": "what is " * 5}, ["10 words", "at most 8"]),
    ({"question": ""}, ["question"]),
    ({"question": "what", "top_k": 0}, ["top_k"]),
    ({"question": "what", "top_k": 21}, ["top_k"]),
    ({"question": "what", "top_k": 9}, ["top_k must be between 1 and 8"]),
    ({"question": "what", "beam_size": 3}, ["beam_size"]),
])
def test_bad_parameters_are_422_naming_them(vqa_api: TestClient, fields: dict,
                                            words: list[str]) -> None:
    assert_error(ask_json(vqa_api, **fields), 422, "invalid_parameter", *words)


def test_missing_question_image_or_bad_media(vqa_api: TestClient) -> None:
    missing = vqa_api.post("/v1/vqa", files={"file": ("x.png", PNG, "image/png")})
    assert_error(missing, 422, "invalid_parameter", "question")
    assert_error(vqa_api.post("/v1/vqa", json={"question": "what"}), 422,
                 "invalid_parameter", "image")
    assert_error(ask(vqa_api, data=b"not an image"), 415, "unsupported_media_type")
    assert_error(vqa_api.post("/v1/vqa", content=b"x", headers={"content-type": "text/plain"}),
                 415, "unsupported_media_type")


def test_full_queue_is_503(vqa_repository: Path) -> None:
    settings = Settings(model_repository=vqa_repository, max_batch_size=1, max_queue_size=1,
                        max_queue_delay_ms=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        served = client.app.state.service.models["vqa-tiny/2"]
        release, started = threading.Event(), threading.Event()
        original = served.batcher.infer

        def held(requests):
            started.set()
            release.wait(10)
            return original(requests)

        served.batcher.infer = held
        out: list = []
        first = threading.Thread(target=lambda: out.append(ask(client, model="vqa-tiny")))
        first.start()
        assert started.wait(10)
        second = threading.Thread(target=lambda: out.append(ask(client, model="vqa-tiny")))
        second.start()
        wait_until(lambda: len(served.batcher.queue) >= 1)
        refused = ask(client, model="vqa-tiny")
        release.set()
        first.join(10)
        second.join(10)
    assert_error(refused, 503, "overloaded")
    assert refused.headers["retry-after"] == "1"
    assert [r.status_code for r in out] == [200, 200]
