"""The OpenAI Python SDK against glimpse: `images.generate` and `models.list` work unchanged.

The SDK talks to the in-process app through the started TestClient (an httpx2 client,
which the SDK takes as its `http_client`), with an API key as the SDK always sends one.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from committed import served_bundle
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.pipelines.generation import GenerationModel
from service.settings import Settings

COMMITTED = Path(__file__).parents[2] / "model_repository"
PROMPT = "a large yellow triangle"


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    app = create_app(Settings(model_repository=COMMITTED, api_keys="sdk-key"))
    with TestClient(app) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="sdk-key",
                            http_client=http, max_retries=0)


def png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_images_generate_with_the_fields_openai_clients_send(client: openai.OpenAI) -> None:
    answer = client.images.generate(model="gan-int-cls", prompt=PROMPT, n=2, size="256x256",
                                    quality="standard", user="someone",
                                    response_format="b64_json")
    assert len(answer.data) == 2 and answer.created > 0
    images = [png(d.b64_json) for d in answer.data]
    assert [(i.format, i.size) for i in images] == [("PNG", (256, 256))] * 2
    # Without a size: the model's own 64x64 images.
    native = client.images.generate(model="gan-int-cls", prompt=PROMPT, n=1,
                                    response_format="b64_json")
    assert png(native.data[0].b64_json).size == (64, 64)


def test_size_resizes_the_images_the_seed_draws(client: openai.OpenAI) -> None:
    offline = GenerationModel.from_bundle(served_bundle("gan-int-cls").path, device="cpu")
    (want,) = offline.run_batch([offline.request(PROMPT, 1, 11)])
    answer = client.images.generate(model="gan-int-cls", prompt=PROMPT, n=1,
                                    response_format="b64_json", extra_body={"seed": 11})
    assert base64.b64decode(answer.data[0].b64_json) == want.pngs[0]
    resized = client.images.generate(model="gan-int-cls", prompt=PROMPT, n=1, size="128x128",
                                     response_format="b64_json", extra_body={"seed": 11})
    expected = Image.fromarray(want.images[0]).resize((128, 128), Image.Resampling.LANCZOS)
    assert png(resized.data[0].b64_json).tobytes() == expected.tobytes()


@pytest.mark.parametrize(("fields", "words"), [
    ({"size": "1792x1024"}, ["size", "256x256", "512x512"]),
    ({"quality": "hd"}, ["quality", "standard"]),
    ({"style": "vivid"}, ["style", "no styles"]),
])
def test_fields_glimpse_cannot_honour_are_422_naming_what_it_can(
        client: openai.OpenAI, fields: dict, words: list[str]) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.images.generate(model="gan-int-cls", prompt=PROMPT, **fields)
    assert all(w in str(err.value) for w in words)


def test_models_list_gives_every_served_model(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    ids = [m.id for m in models]
    served = f"gan-int-cls/{served_bundle('gan-int-cls').manifest.version}"
    sat = f"caption-sat/{served_bundle('caption-sat').manifest.version}"
    assert served in ids and sat in ids
    assert {m.object for m in models} == {"model"} and all(m.created > 0 for m in models)
    # An id is a model a request may name.
    answer = client.images.generate(model=served, prompt=PROMPT,
                                    response_format="b64_json")
    assert len(answer.data) == 1
