"""Text-to-image: the GenerationModel pipeline offline and POST /v1/images/generations.

The bundle is exported from tiny random models by training/export_generation.py.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from committed import served_bundle
from fastapi.testclient import TestClient
from PIL import Image
from tiny_bundle import build_caption_bundle
from tiny_generation import IMAGE_SIZE, MAX_LENGTH, tiny_generation_bundle

from service.app import create_app
from service.errors import InvalidParameter
from service.pipelines.generation import GenerationModel, draw_noise
from service.settings import Settings

PROMPT = "a red circle left of a square"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gan-tiny/1 exported from tiny models, the same bundle as gan-int-cls/1, and a
    caption model."""
    root = tmp_path_factory.mktemp("t2i_repository")
    bundle = tiny_generation_bundle(root, "gan-tiny", 1)
    copy = root / "gan-int-cls" / "1"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "name": "gan-int-cls"}))
    build_caption_bundle(root, "caption-tiny", 1)
    return root


@pytest.fixture(scope="module")
def model(repository: Path) -> GenerationModel:
    return GenerationModel.from_bundle(repository / "gan-tiny" / "1", device="cpu")


@pytest.fixture(scope="module")
def api(repository: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_repository=repository)),
                    raise_server_exceptions=False) as client:
        yield client


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))
    return np.asarray(image)


def generate(client: TestClient, headers: dict | None = None, **body: object):
    return client.post("/v1/images/generations", json=body, headers=headers or {})


def assert_error(response, status: int, error_type: str, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    for word in words:
        assert word in error["message"], error["message"]


# ---------------------------------------------------------------------------- pipeline


def test_generate_is_prompt_major_and_equals_single_requests(model: GenerationModel) -> None:
    prompts = [PROMPT, "a blue square", "a green circle"]
    images = model.generate(prompts, n=2, seed=11)
    assert images.shape == (6, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.uint8
    for i, prompt in enumerate(prompts):
        (alone,) = model.run_batch([model.request(prompt, 2, 11)])
        np.testing.assert_array_equal(images[2 * i:2 * i + 2], alone.images)
        assert [decode(p).tolist() for p in alone.pngs] == alone.images.tolist()
    assert not np.array_equal(images[0], images[1])  # two noise draws
    assert not np.array_equal(images[0], images[2])  # two prompts, same noise


def test_images_depend_on_prompt_n_and_seed_only(model: GenerationModel) -> None:
    target = model.request(PROMPT, 3, 5)
    (alone,) = model.run_batch([target])
    others = [model.request("a blue square", 16, 1), model.request(PROMPT, 2, 9),
              model.request("a green circle", 16, 2), model.request("a red square", 16, 3),
              model.request("a blue circle", 16, 4)]  # 83 images: two generator runs
    mixed = model.run_batch([*others[:2], target, *others[2:]])
    np.testing.assert_array_equal(mixed[2].images, alone.images)
    assert [r.images.shape[0] for r in mixed] == [16, 2, 3, 16, 16, 16]
    # The first k images of n are those of a request for k.
    (first,) = model.run_batch([model.request(PROMPT, 1, 5)])
    np.testing.assert_array_equal(first.images[0], alone.images[0])


def test_noise_is_the_seeded_standard_normal(model: GenerationModel) -> None:
    noise = draw_noise(3, 4, model.noise_dim)
    want = np.random.default_rng(3).standard_normal((4, model.noise_dim), dtype=np.float32)
    np.testing.assert_array_equal(noise, want)


class Counting:
    def __init__(self, graph) -> None:
        self.graph, self.rows = graph, []

    def run(self, feeds, outputs=None):
        self.rows.append(len(next(iter(feeds.values()))))
        return self.graph.run(feeds, outputs)


def test_text_encoder_runs_once_per_distinct_prompt(repository: Path) -> None:
    """Each distinct prompt alone (batch size 1: see the generation module's docstring),
    once: a prompt seen before comes from the cache."""
    model = GenerationModel.from_bundle(repository / "gan-tiny" / "1", device="cpu")
    counting = Counting(model.text_encoder)
    model.text_encoder = counting
    requests = [model.request(p, 2, s) for p, s in
                [(PROMPT, 0), ("a blue square", 1), (PROMPT, 2), (" a blue square ", 3)]]
    model.run_batch(requests)
    assert counting.rows == [1, 1]
    model.run_batch(requests[:1])
    assert counting.rows == [1, 1]


def test_unseeded_requests_draw_their_own_seed(model: GenerationModel) -> None:
    a, b = model.run_batch([model.request(PROMPT), model.request(PROMPT)])
    assert a.seed != b.seed and not np.array_equal(a.images, b.images)
    (again,) = model.run_batch([model.request(PROMPT, 1, a.seed)])
    np.testing.assert_array_equal(again.images, a.images)


@pytest.mark.parametrize(("prompt", "n", "seed", "words"), [
    ("", 1, 0, ["empty"]),
    ("   ", 1, 0, ["empty"]),
    ("a " * MAX_LENGTH, 1, 0, [f"at most {MAX_LENGTH}"]),
    ("a red circlé ✓", 1, 0, ["alphabet", "'é'", "'✓'"]),
    ("a purple circle, a red hexagon", 1, 0, ["not trained on", "'purple'", "'hexagon'"]),
    (PROMPT, 0, 0, ["n:", "between 1 and 16"]),
    (PROMPT, 17, 0, ["n:", "between 1 and 16"]),
    (PROMPT, 1, -1, ["seed:"]),
])
def test_invalid_requests_name_the_problem(model: GenerationModel, prompt: str, n: int,
                                           seed: int, words: list[str]) -> None:
    with pytest.raises(InvalidParameter) as info:
        model.request(prompt, n, seed)
    for word in words:
        assert word in info.value.message


def test_prompts_are_case_and_punctuation_insensitive_in_words(model: GenerationModel) -> None:
    request = model.request("A Red circle, left of a square.", 1, 0)
    assert request.prompt == "A Red circle, left of a square."


# ---------------------------------------------------------------------------- HTTP API


def test_json_answer_holds_the_offline_images(api: TestClient, model: GenerationModel) -> None:
    answer = generate(api, prompt=PROMPT, model="gan-tiny", n=3, seed=21)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "gan-tiny/1" and body["seed"] == 21
    assert isinstance(body["created"], int) and body["created"] > 1_700_000_000
    images = [decode(base64.b64decode(d["b64_json"])) for d in body["data"]]
    np.testing.assert_array_equal(np.stack(images), model.generate([PROMPT], n=3, seed=21))


def test_default_model_is_gan_int_cls_and_unseeded_answers_their_seed(api: TestClient) -> None:
    answer = generate(api, prompt=PROMPT)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "gan-int-cls/1" and len(body["data"]) == 1
    again = generate(api, prompt=PROMPT, seed=body["seed"])
    assert again.json()["data"] == body["data"]


def test_accept_png_returns_the_image_itself(api: TestClient, model: GenerationModel) -> None:
    answer = generate(api, {"Accept": "image/png"}, prompt=PROMPT, model="gan-tiny", seed=4)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["x-seed"] == "4"
    np.testing.assert_array_equal(decode(answer.content), model.generate([PROMPT], 1, 4)[0])


def batch_sizes(client: TestClient, key: str) -> tuple[float, float]:
    """(batches run, requests in them) of a model, from /metrics."""
    lines = client.get("/metrics").text.splitlines()
    prefixes = [f'glimpse_batch_size_{name}{{model="{key}"}} ' for name in ("count", "sum")]
    count, total = (float(line[len(p):]) for p in prefixes for line in lines
                    if line.startswith(p))
    return count, total


def test_same_seed_same_images_whatever_the_batch(api: TestClient, repository: Path) -> None:
    alone = generate(api, prompt=PROMPT, model="gan-tiny", n=2, seed=8).json()["data"]
    # The batch fires when the third request arrives; the long delay only absorbs a slow
    # machine, it is not waited out. The threads' requests reach the server one by one, so
    # the first would otherwise find the model idle and be computed alone.
    settings = Settings(model_repository=repository, max_batch_size=3, max_queue_delay_ms=5000,
                        idle_dispatch=False)
    bodies = [{"prompt": PROMPT, "n": 2, "seed": 8}, {"prompt": "a blue square", "n": 16},
              {"prompt": "a green circle", "n": 5, "seed": 8}]
    answers: list = [None] * 3

    with TestClient(create_app(settings), raise_server_exceptions=False) as batching:

        def send(i: int) -> None:
            answers[i] = generate(batching, model="gan-tiny", **bodies[i])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert batch_sizes(batching, "gan-tiny/1") == (1, 3)  # one batch of the three
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json()["data"] == alone
    assert [len(a.json()["data"]) for a in answers] == [2, 16, 5]


@pytest.mark.parametrize(("body", "headers", "status", "words"), [
    ({"prompt": PROMPT, "n": 2}, {"Accept": "image/png"}, 422, ["image/png", "n = 1"]),
    ({"prompt": PROMPT, "response_format": "url"}, {}, 422, ["response_format", "b64_json"]),
    ({"prompt": PROMPT, "n": 17}, {}, 422, ["n:"]),
    ({"prompt": PROMPT, "seed": -3}, {}, 422, ["seed:"]),
    ({"prompt": PROMPT, "size": "100x100"}, {}, 422, ["size", "256x256"]),
    ({"prompt": PROMPT, "style": "vivid"}, {}, 422, ["style", "no styles"]),
    ({"prompt": PROMPT, "quality": "hd"}, {}, 422, ["quality", "standard"]),
    ({"prompt": "   "}, {}, 422, ["prompt"]),
    ({"n": 1}, {}, 422, ["prompt"]),
    ({"prompt": "a purple circle"}, {}, 422, ["'purple'"]),
    ({"prompt": "a red circlé"}, {}, 422, ["'é'"]),
    ({"prompt": ""}, {}, 422, ["empty"]),
    ({"prompt": PROMPT, "model": "gan-missing"}, {}, 404, ["gan-missing"]),
    ({"prompt": PROMPT, "model": "caption-tiny"}, {}, 422, ["caption model"]),
])
def test_invalid_requests_are_answered_with_their_reason(api: TestClient, body: dict,
                                                         headers: dict, status: int,
                                                         words: list[str]) -> None:
    error_type = {404: "model_not_found", 422: "invalid_parameter"}[status]
    assert_error(generate(api, headers, **body), status, error_type, *words)


def test_malformed_bodies(api: TestClient) -> None:
    url = "/v1/images/generations"
    headers = {"Content-Type": "application/json"}
    assert_error(api.post(url, content=b"{", headers=headers), 400, "bad_request", "JSON")
    assert_error(api.post(url, content=b"[1]", headers=headers), 400, "bad_request", "object")
    assert_error(api.post(url, data={"prompt": PROMPT}), 415, "unsupported_media_type")


def test_models_lists_the_generation_bundles(api: TestClient) -> None:
    listed = {m["id"]: m for m in api.get("/v1/models").json()["models"]}
    assert listed["gan-tiny/1"]["task"] == "generation"
    assert listed["gan-tiny/1"]["architecture"] == "gan-int-cls"
    assert api.get("/v2/health/ready").json()["errors"] == []


MIXED_PROMPTS = [("a large yellow triangle", 4), ("a large red circle", 0),
                 ("a small blue square", 7), ("a green star", 1), ("a large red circle", 3)]


def test_committed_generator_draws_each_prompt_as_alone_in_any_batch() -> None:
    """Every prompt/seed alone vs mixed into batches of other prompts: byte-identical PNGs
    (the committed gan-int-cls once differed by a grey level in one pixel when its prompt
    was embedded in a batch)."""
    served = served_bundle("gan-int-cls").path
    model = GenerationModel.from_bundle(served, device="cpu")
    requests = [model.request(prompt, 1, seed) for prompt, seed in MIXED_PROMPTS]
    alone = [GenerationModel.from_bundle(served, device="cpu").run_batch([r])[0].pngs
             for r in requests]
    for batch in ([0, 1], [1, 0], [2, 0, 3, 1, 4], [4, 3, 2, 1, 0], [0, 0, 1]):
        fresh = GenerationModel.from_bundle(served, device="cpu")  # an empty cache
        mixed = fresh.run_batch([requests[i] for i in batch])
        assert [m.pngs for m in mixed] == [alone[i] for i in batch]


# Least mean |difference| (grey levels, 0-255) between the images the served gan-int-cls
# draws for one prompt with two seeds: a generator deaf to its noise draws one image for
# every seed and scores ~0.
SERVED_SEED_DIFFERENCE = 1.0


def test_served_generator_draws_other_images_for_other_seeds_and_the_same_for_one(
        tmp_path: Path) -> None:
    bundle = served_bundle("gan-int-cls")
    repository = tmp_path / "repository"
    shutil.copytree(bundle.path, repository / "gan-int-cls" / str(bundle.manifest.version))
    with TestClient(create_app(Settings(model_repository=repository))) as client:
        def draw(prompt: str, seed: int) -> np.ndarray:
            answer = generate(client, prompt=prompt, n=1, seed=seed)
            assert answer.status_code == 200, answer.text
            png = base64.b64decode(answer.json()["data"][0]["b64_json"])
            return np.asarray(Image.open(io.BytesIO(png))).astype(np.int16)

        for prompt in ("a large red circle", "a small blue triangle", "a large green star"):
            first, second, again = draw(prompt, 1), draw(prompt, 2), draw(prompt, 1)
            np.testing.assert_array_equal(first, again)
            assert np.abs(first - second).mean() >= SERVED_SEED_DIFFERENCE, prompt
