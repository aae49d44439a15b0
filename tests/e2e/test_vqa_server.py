"""/v1/vqa on a real server: `python -m service` on a free port, talked to over HTTP."""

from __future__ import annotations

import asyncio
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_server import running_server

from service.pipelines.vqa import VqaModel

HERE = Path(__file__).parents[1] / "service"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny_bundle = _load("tiny_bundle")
tiny_vqa_bundle = _load("tiny_vqa_bundle")

QUESTIONS = ["what color is the circle", "how many squares are there", "is a red circle left "
             "of the square", "what is the square"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e_vqa_repository")
    tiny_vqa_bundle.build_vqa_bundle(root, "vqa-tiny", 1, seed=4)
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("e2e_vqa_logs") / "server.log"
    # The queue waits long for companions and runs a batch once len(QUESTIONS) wait, so
    # the concurrent questions share one batch however slowly they arrive.
    env = {"GLIMPSE_MAX_QUEUE_DELAY_MS": "30000", "GLIMPSE_MAX_BATCH_SIZE": str(len(QUESTIONS)),
           "GLIMPSE_INTRA_OP_THREADS": "1"}
    with running_server(repository, log_path, env) as (_, url):
        yield url


def test_concurrent_questions_are_batched_and_answered_as_offline(
        server: str, repository: Path) -> None:
    offline = VqaModel.from_bundle(repository / "vqa-tiny" / "1")
    images = [tiny_bundle.sample_png(seed) for seed in range(len(QUESTIONS))]

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=30) as client:
            return await asyncio.gather(*(
                client.post("/v1/vqa", files={"file": ("x.png", image, "image/png")},
                            data={"question": question, "top_k": "2"})
                for image, question in zip(images, QUESTIONS, strict=True)))

    responses = asyncio.run(main())
    for image, question, response in zip(images, QUESTIONS, responses, strict=True):
        assert response.status_code == 200, response.text
        want = offline.answer(image, question, top_k=2)
        body = response.json()
        assert body["model"] == "vqa-tiny/1"  # the only vqa model is the default
        assert [a["answer"] for a in body["answers"]] == [a.answer for a in want.answers]
        assert [a["score"] for a in body["answers"]] == pytest.approx(
            [a.score for a in want.answers], abs=1e-6)
    metrics = httpx.get(f"{server}/metrics").text
    assert 'glimpse_requests_total{model="vqa-tiny/1",outcome="ok"} 4.0' in metrics
    assert 'glimpse_batch_size_sum{model="vqa-tiny/1"} 4.0' in metrics
    batches = re.search(r'glimpse_batch_size_count\{model="vqa-tiny/1"\} ([0-9.]+)', metrics)
    assert float(batches.group(1)) == 1  # the questions shared one graph run


def test_unknown_words_are_422_over_http(server: str) -> None:
    response = httpx.post(f"{server}/v1/vqa", files={"file": ("x.png", tiny_bundle.sample_png(0),
                                                              "image/png")},
                          data={"question": "what colour is the zebra"})
    assert response.status_code == 422
    assert "'colour', 'zebra' are not in the vocabulary" in response.json()["error"]["message"]
