"""DALL-E: the DalleModel pipeline offline, its step-level decode batch, and
POST /v1/images/generations with model "dalle-tiny".

The bundles are exported from tiny random models by training/export/dalle.py
(tests/service/tiny_dalle.py).
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from polling import wait_until
from pydantic import ValidationError
from tiny_dalle import CODES, IMAGE_SIZE, TEXT_LENGTH, tiny_dalle_bundle, without_reranker
from tiny_generation import tiny_generation_bundle

from service.app import create_app
from service.bundle import Manifest, load_bundle
from service.errors import InvalidParameter
from service.pipelines import ARCHITECTURE_PIPELINES, pipeline_for
from service.pipelines.dalle import DalleDecoder, DalleModel, DalleRequest, row_uniforms
from service.pipelines.generation import GenerationModel, SamplingOptions, TextToImage, to_uint8
from service.settings import Settings
from service.step_batching import StepScheduler

PROMPT = "a red circle left of a square"
OTHERS = ["a blue square", "a green circle above a red square", "a small circle"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dalle-tiny (with a reranker), dalle-bare (without) and gan-tiny."""
    root = tmp_path_factory.mktemp("dalle_repository")
    without_reranker(tiny_dalle_bundle(root, "dalle-tiny", seed=0), root, "dalle-bare")
    tiny_generation_bundle(root, "gan-tiny", 1)
    return root


@pytest.fixture(scope="module")
def model(repository: Path) -> DalleModel:
    return DalleModel.from_bundle(repository / "dalle-tiny" / "1", device="cpu")


@pytest.fixture(scope="module")
def bare(repository: Path) -> DalleModel:
    return DalleModel.from_bundle(repository / "dalle-bare" / "1", device="cpu")


@pytest.fixture(scope="module")
def api(repository: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_repository=repository)),
                    raise_server_exceptions=False) as client:
        yield client


def images_of(model: DalleModel, requests: list[DalleRequest], **decode) -> list[np.ndarray]:
    return [r.images for r in model.decode(requests, **decode)]


# ---------------------------------------------------------------------------- registry


def test_a_dalle_bundle_is_served_by_the_dalle_pipeline(model: DalleModel,
                                                        repository: Path) -> None:
    assert ARCHITECTURE_PIPELINES[("generation", "dalle")] is DalleModel
    assert pipeline_for(model.bundle.manifest) is DalleModel
    gan = load_bundle(repository / "gan-tiny" / "1").manifest
    assert pipeline_for(gan) is GenerationModel  # other architectures: the task's pipeline


def test_a_second_pipeline_for_an_architecture_is_refused() -> None:
    with pytest.raises(TypeError, match="architecture 'dalle' of task 'generation' already "
                                        "has a pipeline: DalleModel"):
        class OtherDalle(TextToImage, task="generation", architecture="dalle"):
            pass
    assert ARCHITECTURE_PIPELINES[("generation", "dalle")] is DalleModel


def test_a_dalle_manifest_is_validated_as_a_dalle_section(model: DalleModel,
                                                          tmp_path: Path) -> None:
    manifest = model.bundle.manifest.model_dump(mode="json")
    del manifest["inference"]["grid"]
    with pytest.raises(ValidationError, match="generation bundle: grid: Field required"):
        Manifest.model_validate(manifest)
    # A GAN's section would not do: it has no noise size to read.
    manifest["architecture"] = "gan-int-cls"
    with pytest.raises(ValidationError, match="noise_dim"):
        Manifest.model_validate(manifest)


# ---------------------------------------------------------------------------- sampling


def test_same_prompt_and_seed_give_the_same_images_whatever_decodes_beside(
        model: DalleModel) -> None:
    target = model.request(PROMPT, 2, 5, SamplingOptions(candidates=3))
    others = [model.request(p, n, s, SamplingOptions(candidates=c, temperature=t))
              for p, n, s, c, t in [(OTHERS[0], 4, 1, 2, 0.7), (PROMPT, 1, 9, 1, 1.3),
                                    (OTHERS[1], 3, 2, 4, 1.0)]]
    (alone,) = images_of(model, [target])
    # One static batch with the others, and a decode batch of 5 rows that the target's
    # rows join a few at a time as the others' rows leave.
    static = images_of(model, [others[0], target, *others[1:]])[1]
    stepped = images_of(model, [*others, target], max_rows=5)[3]
    np.testing.assert_array_equal(static, alone)
    np.testing.assert_array_equal(stepped, alone)
    assert not np.array_equal(alone[0], alone[1])


def test_a_request_joining_a_running_batch_gets_its_own_images(model: DalleModel) -> None:
    """The scheduler and the decoder driven by hand: the target joins after the others
    have decoded a few codes, with rows at other positions beside it."""
    target = model.request(PROMPT, 2, 5)
    others = [model.request(OTHERS[0], 3, 1), model.request(OTHERS[2], 1, 2)]
    scheduler: StepScheduler[DalleRequest] = StepScheduler(max_rows=16, max_queue_size=4)
    decoder = DalleDecoder(model)
    codes: dict[int, list] = {}

    def step() -> None:
        plan = scheduler.plan()
        for done in scheduler.complete(decoder.advance(plan.leaving, plan.joining)):
            codes[id(done.payload)] = done.ordered_outputs()

    for request in others:
        scheduler.submit(request, request.rows, now=0.0, timeout_s=60)
    for _ in range(5):
        step()
    assert len(decoder) == 4 and set(decoder.length) == {6}
    scheduler.submit(target, target.rows, now=0.0, timeout_s=60)
    step()
    assert sorted(decoder.length) == [2, 2, 7, 7, 7, 7]  # rows at two positions, one step
    while not scheduler.empty:
        step()
    (alone,) = images_of(model, [target])
    np.testing.assert_array_equal(model.finish(target, codes[id(target)]).images, alone)


def test_the_first_images_of_n_are_those_of_a_smaller_n(model: DalleModel) -> None:
    (four,) = images_of(model, [model.request(PROMPT, 4, 8)])
    (one,) = images_of(model, [model.request(PROMPT, 1, 8)])
    np.testing.assert_array_equal(four[:1], one)


def test_draws_are_the_seeded_uniforms_of_each_image_and_candidate() -> None:
    draws = row_uniforms(7, 2, 3, 5)
    assert draws.shape == (6, 5)
    np.testing.assert_array_equal(draws[1 * 3 + 2], np.random.default_rng([7, 1, 2]).random(5))


def test_top_k_1_is_greedy_whatever_the_seed(model: DalleModel) -> None:
    greedy = SamplingOptions(top_k=1)
    a, b = images_of(model, [model.request(PROMPT, 1, 1, greedy),
                             model.request(PROMPT, 1, 2, greedy)])
    np.testing.assert_array_equal(a, b)
    c, d = images_of(model, [model.request(PROMPT, 1, 1), model.request(PROMPT, 1, 2)])
    assert not np.array_equal(c, d)


class Spy:
    """Wraps a method, recording what it returned."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.returned = fn, []

    def __call__(self, *args):
        out = self.fn(*args)
        self.returned.append(out)
        return out


def test_reranking_keeps_the_best_scored_candidate_of_each_image(
        model: DalleModel, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded, scored = Spy(model.decode_images), Spy(model.reranker.scores)
    monkeypatch.setattr(model, "decode_images", decoded)
    monkeypatch.setattr(model.reranker, "scores", scored)
    (reranked,) = images_of(model, [model.request(PROMPT, 2, 3, SamplingOptions(candidates=4))])
    (candidates,), (scores,) = decoded.returned, scored.returned
    assert candidates.shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE) and scores.shape == (8,)
    best = scores.reshape(2, 4).argmax(axis=1)
    np.testing.assert_array_equal(reranked, to_uint8(candidates[[best[0], 4 + best[1]]]))
    # Candidate 0 of each image is the image drawn without reranking.
    monkeypatch.undo()
    (plain,) = images_of(model, [model.request(PROMPT, 2, 3)])
    np.testing.assert_array_equal(plain, to_uint8(candidates[[0, 4]]))


def test_the_reranker_reads_the_prompt_in_its_own_vocabulary(model: DalleModel) -> None:
    request = model.request("a red circle", 1, 0, SamplingOptions(candidates=2))
    words = model.reranker.words
    assert request.rerank_tokens == tuple(words.encode("a red circle").ids)
    assert request.rerank_tokens != request.tokens[1:]  # the two vocabularies differ
    assert model.request("a red circle", 1, 0).rerank_tokens is None  # nothing to rerank


class Counting:
    def __init__(self, graph) -> None:
        self.graph, self.rows = graph, []

    def run(self, feeds, outputs=None):
        self.rows.append(len(next(iter(feeds.values()))))
        return self.graph.run(feeds, outputs)


def test_prefill_runs_once_per_distinct_prompt(model: DalleModel,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    counting = Counting(model.prefill_graph)
    monkeypatch.setattr(model, "prefill_graph", counting)
    model.decode([model.request(p, 2, s) for p, s in
                  [(PROMPT, 0), (OTHERS[0], 1), (PROMPT, 2), (" A blue square. ", 3)]])
    assert counting.rows == [2]


def test_defaults_are_the_manifests_sampling_settings(model: DalleModel) -> None:
    assert model.defaults() == {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "candidates": 1}


@pytest.mark.parametrize(("prompt", "n", "options", "words"), [
    ("", 1, {}, ["empty"]),
    ("...", 1, {}, ["no words"]),
    ("a purple hexagon", 1, {}, ["not trained on", "'purple'", "'hexagon'"]),
    ("a red circle left of a blue square", 1, {}, ["8 words", f"at most {TEXT_LENGTH - 1}"]),
    (PROMPT, 0, {}, ["n:", "between 1 and 16"]),
    (PROMPT, 17, {}, ["n:", "between 1 and 16"]),
    (PROMPT, 1, {"temperature": 0.0}, ["temperature:", "(0, 10]"]),
    (PROMPT, 1, {"temperature": float("nan")}, ["temperature:"]),
    (PROMPT, 1, {"temperature": 11.0}, ["temperature:"]),
    (PROMPT, 1, {"top_k": -1}, ["top_k:", ">= 0"]),
    (PROMPT, 1, {"top_p": 0.0}, ["top_p:", "(0, 1]"]),
    (PROMPT, 1, {"top_p": 1.5}, ["top_p:"]),
    (PROMPT, 1, {"candidates": 0}, ["candidates:", "between 1 and 16"]),
    (PROMPT, 1, {"candidates": 17}, ["candidates:"]),
    (PROMPT, 16, {"candidates": 8}, ["n * candidates", "at most 64", "16 * 8"]),
])
def test_invalid_requests_name_the_problem(model: DalleModel, prompt: str, n: int,
                                           options: dict, words: list[str]) -> None:
    with pytest.raises(InvalidParameter) as info:
        model.request(prompt, n, 0, SamplingOptions(**options))
    for word in words:
        assert word in info.value.message


def test_a_model_without_reranker_draws_one_candidate_only(bare: DalleModel) -> None:
    assert bare.reranker is None
    with pytest.raises(InvalidParameter, match="dalle-bare/1 has no reranker"):
        bare.request(PROMPT, 1, 0, SamplingOptions(candidates=2))
    assert bare.generate([PROMPT], 2, 0).shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_generate_is_prompt_major(model: DalleModel) -> None:
    prompts = [PROMPT, OTHERS[0]]
    images = model.generate(prompts, n=2, seed=4)
    assert images.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.uint8
    for i, prompt in enumerate(prompts):
        (alone,) = images_of(model, [model.request(prompt, 2, 4)])
        np.testing.assert_array_equal(images[2 * i:2 * i + 2], alone)


# ---------------------------------------------------------------------------- HTTP API


def generate(client: TestClient, headers: dict | None = None, **body: object):
    return client.post("/v1/images/generations", json=body, headers=headers or {})


def decode_png(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))
    return np.asarray(image)


def answer_images(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.stack([decode_png(base64.b64decode(d["b64_json"]))
                     for d in response.json()["data"]])


def assert_error(response, status: int, error_type: str, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    for word in words:
        assert word in error["message"], error["message"]


def test_json_answer_holds_the_offline_images(api: TestClient, model: DalleModel) -> None:
    answer = generate(api, prompt=PROMPT, model="dalle-tiny", n=3, seed=21, candidates=2,
                      temperature=0.9, top_k=6, top_p=0.9)
    body = answer.json()
    assert body["model"] == "dalle-tiny/1" and body["seed"] == 21
    options = SamplingOptions(candidates=2, temperature=0.9, top_k=6, top_p=0.9)
    np.testing.assert_array_equal(answer_images(answer),
                                  model.generate([PROMPT], 3, 21, options))


def test_accept_png_returns_the_image_itself(api: TestClient, model: DalleModel) -> None:
    answer = generate(api, {"Accept": "image/png"}, prompt=PROMPT, model="dalle-tiny", seed=4)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.headers["x-seed"] == "4"
    np.testing.assert_array_equal(decode_png(answer.content), model.generate([PROMPT], 1, 4)[0])


def test_unseeded_requests_answer_their_seed(api: TestClient) -> None:
    body = generate(api, prompt=PROMPT, model="dalle-tiny").json()
    again = generate(api, prompt=PROMPT, model="dalle-tiny", seed=body["seed"])
    assert again.json()["data"] == body["data"]


@pytest.mark.parametrize("top_k", [CODES, 2**64, 10**30])
def test_top_k_of_at_least_the_codebook_keeps_every_code_as_0_does(api: TestClient,
                                                                    top_k: int) -> None:
    every = generate(api, prompt=PROMPT, model="dalle-tiny", seed=3, top_k=0)
    wide = generate(api, prompt=PROMPT, model="dalle-tiny", seed=3, top_k=top_k)
    assert wide.status_code == 200, wide.text
    assert wide.json()["data"] == every.json()["data"]


@pytest.mark.parametrize(("body", "words"), [
    ({"temperature": 0}, ["temperature"]),
    ({"temperature": 10.5}, ["temperature"]),
    ({"top_k": -2}, ["top_k"]),
    ({"top_p": 0}, ["top_p"]),
    ({"top_p": 1.01}, ["top_p"]),
    ({"candidates": 0}, ["candidates"]),
    ({"candidates": 17}, ["candidates"]),
    ({"n": 16, "candidates": 5}, ["n * candidates", "at most 64"]),
    ({"prompt": "a purple circle"}, ["'purple'"]),
    ({"model": "dalle-bare", "candidates": 2}, ["no reranker"]),
    ({"model": "gan-tiny", "temperature": 0.5, "top_k": 3}, ["temperature, top_k", "noise"]),
])
def test_invalid_settings_are_422_with_their_reason(api: TestClient, body: dict,
                                                    words: list[str]) -> None:
    response = generate(api, **{"prompt": PROMPT, "model": "dalle-tiny", **body})
    assert_error(response, 422, "invalid_parameter", *words)


def test_models_lists_dalle_with_its_sampling_defaults(api: TestClient) -> None:
    listed = {m["id"]: m for m in api.get("/v1/models").json()["models"]}
    assert (listed["dalle-tiny/1"]["task"], listed["dalle-tiny/1"]["architecture"]) == \
        ("generation", "dalle")
    assert listed["dalle-tiny/1"]["defaults"] == {"temperature": 1.0, "top_k": 0,
                                                  "top_p": 1.0, "candidates": 1}
    assert api.get("/v2/health/ready").json()["errors"] == []


def batch_sizes(client: TestClient, key: str) -> tuple[float, float]:
    """(steps run, rows in them) of a model, from /metrics."""
    lines = client.get("/metrics").text.splitlines()
    prefixes = [f'glimpse_batch_size_{name}{{model="{key}"}} ' for name in ("count", "sum")]
    return tuple(float(line[len(p):]) for p in prefixes for line in lines
                 if line.startswith(p))


def test_concurrent_requests_share_steps_and_keep_their_images(repository: Path,
                                                               model: DalleModel) -> None:
    bodies = [{"prompt": PROMPT, "n": 2, "seed": 8}, {"prompt": OTHERS[0], "n": 5, "seed": 1},
              {"prompt": OTHERS[1], "n": 1, "seed": 8, "candidates": 3}]
    settings = Settings(model_repository=repository, max_batch_size=4)
    answers: list = [None] * 3
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        gate = StepGate(client)
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(
            i, generate(client, model="dalle-tiny", **bodies[i]))) for i in range(3)]
        # The first request's rows are held in their first step; the others wait. (Sent
        # at once, the five-row request could come first and fill the batch alone.)
        threads[0].start()
        wait_until(lambda: gate.steps == 1)
        for thread in threads[1:]:
            thread.start()
        wait_until(lambda: len(gate.batcher.queue) == 2)
        gate.open.set()
        for thread in threads:
            thread.join(30)
        steps, rows = batch_sizes(client, "dalle-tiny/1")
    total_rows = 2 + 5 + 3
    assert rows == total_rows * 15  # 16 codes a row: a prefill (with the first) and 15 steps
    assert steps < rows / 2  # rows of several requests stepped together
    for answer, body in zip(answers, bodies, strict=True):
        options = SamplingOptions(candidates=body.get("candidates"))
        np.testing.assert_array_equal(
            answer_images(answer),
            model.generate([body["prompt"]], body["n"], body["seed"], options))


# ---------------------------------------------------------------------------- overload


class StepGate:
    """Holds every step of dalle-tiny until opened."""

    def __init__(self, client: TestClient) -> None:
        self.batcher = client.app.state.service.models["dalle-tiny/1"].batcher
        decoder = self.batcher.decoder
        self.advance, self.open, self.steps = decoder.advance, threading.Event(), 0
        decoder.advance = self

    def __call__(self, leaving, joining):
        self.steps += 1
        self.open.wait(10)
        return self.advance(leaving, joining)


def test_full_queue_is_503_with_retry_after(repository: Path) -> None:
    settings = Settings(model_repository=repository, max_batch_size=2, max_queue_size=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        gate = StepGate(client)
        out: list = []
        first = threading.Thread(target=lambda: out.append(
            generate(client, prompt=PROMPT, model="dalle-tiny", n=2, seed=1)))
        first.start()
        wait_until(lambda: gate.steps == 1)  # its two rows fill the decode batch
        second = threading.Thread(target=lambda: out.append(
            generate(client, prompt=PROMPT, model="dalle-tiny", seed=2)))
        second.start()
        wait_until(lambda: len(gate.batcher.queue) == 1)
        refused = generate(client, prompt=PROMPT, model="dalle-tiny")
        assert_error(refused, 503, "overloaded", "retry later")
        assert refused.headers["retry-after"] == "1"
        gate.open.set()
        first.join(30)
        second.join(30)
        assert [a.status_code for a in out] == [200, 200]


def test_a_request_past_its_deadline_is_504_and_leaves_the_batch(repository: Path) -> None:
    settings = Settings(model_repository=repository,
                        model_overrides={"dalle-tiny": {"request_timeout_s": 0.2}})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        gate = StepGate(client)
        assert_error(generate(client, prompt=PROMPT, model="dalle-tiny"), 504, "timeout",
                     "0.2 s")
        gate.open.set()
        wait_until(lambda: gate.batcher.idle)
        # Its row was dropped at the next step, not decoded to the end.
        assert len(gate.batcher.decoder) == 0 and gate.steps == 2
        assert generate(client, prompt=PROMPT, model="gan-tiny").status_code == 200
