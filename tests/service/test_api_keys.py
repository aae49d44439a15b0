"""With GLIMPSE_API_KEYS set, every /v1 route demands a key; health and metrics stay open.

The routes are walked from the app's own OpenAPI description, so a new endpoint is
checked the day it is added: it needs a valid example request in VALID_REQUESTS below,
and the test names the route that has none. Each route is called with its valid
request three ways: with no key, with a wrong key and with a right key, the key sent
in either header form (`Authorization: Bearer KEY` and `X-API-Key: KEY`). Only the
last may succeed, so a router that loses its key dependency fails here.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from committed import COMMITTED
from fastapi.testclient import TestClient
from PIL import Image
from tiny_video import build_activity_bundle, build_video_caption_bundle, clip_frames, png

from service.app import create_app
from service.settings import Settings

KEYS = ("k-one", "k-two")


def _scene_png() -> bytes:
    pixels = np.full((64, 64, 3), 128, dtype=np.uint8)
    pixels[10:30, 10:30] = (220, 40, 40)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


PNG = _scene_png()
FRAMES = [("frames", (f"{i}.png", png(frame), "image/png"))
          for i, frame in enumerate(clip_frames(0))]


def _image(**fields: str) -> dict:
    return {"files": {"file": ("x.png", PNG, "image/png")}, "data": fields}


# (method, path) -> keyword arguments of a request that succeeds with a right key.
VALID_REQUESTS: dict[tuple[str, str], dict] = {
    ("GET", "/v1/models"): {},
    ("POST", "/v1/captions"): _image(beam_size="2"),
    ("POST", "/v1/vqa"): _image(question="what color is the square"),
    ("POST", "/v1/alignments"): _image(sentence="a red square"),
    ("POST", "/v1/embeddings"): {"json": {"text": "a red square"}},
    ("POST", "/v1/retrieval/images"): {"json": {"text": "a red square", "top_k": 2}},
    ("POST", "/v1/retrieval/captions"): _image(top_k="2"),
    ("POST", "/v1/images/generations"): {"json": {"prompt": "a small red square", "seed": 1}},
    ("POST", "/v1/videos/activities"): {"files": FRAMES},
    ("POST", "/v1/videos/captions"): {"files": FRAMES, "data": {"beam_size": "2"}},
}
OPEN_ROUTES = {("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/metrics")}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed bundles, and tiny video bundles for the video routes (no video
    model is committed)."""
    root = tmp_path_factory.mktemp("keys_repository")
    for entry in COMMITTED.iterdir():
        (root / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    build_activity_bundle(root, "activity-tiny", 1, seed=0)
    build_video_caption_bundle(root, "video-caption-tiny", 1)
    return root


def documented_routes() -> list[tuple[str, str]]:
    """(METHOD, path) of every operation the app has (its OpenAPI description before any
    model is loaded: once loaded, an endpoint no served model answers is left out)."""
    spec = create_app(Settings(model_repository=COMMITTED)).openapi()
    return sorted((method.upper(), path) for path, operations in spec["paths"].items()
                  for method in operations)


V1_ROUTES = [route for route in documented_routes() if route[1].startswith("/v1/")]


@pytest.fixture(scope="module")
def api(repository: Path) -> Iterator[TestClient]:
    app = create_app(Settings(model_repository=repository, api_keys=",".join(KEYS),
                              max_queue_delay_ms=0, intra_op_threads=1))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


HEADER_FORMS: dict[str, Callable[[str], dict[str, str]]] = {
    "bearer": lambda key: {"Authorization": f"Bearer {key}"},
    "x-api-key": lambda key: {"X-API-Key": key},
}


def call(api: TestClient, route: tuple[str, str], headers: dict[str, str]):
    method, path = route
    return api.request(method, path, headers=headers, **VALID_REQUESTS[route])


def test_every_v1_route_has_a_valid_example_and_the_open_routes_are_the_known_ones() -> None:
    missing = [f"{m} {p}" for m, p in V1_ROUTES if (m, p) not in VALID_REQUESTS]
    assert not missing, f"add a valid request for {missing} to VALID_REQUESTS"
    stale = sorted(set(VALID_REQUESTS) - set(V1_ROUTES))
    assert not stale, f"{stale} are no routes of the app"
    others = {route for route in documented_routes() if not route[1].startswith("/v1/")}
    assert others == OPEN_ROUTES, ("a route outside /v1 answers without a key; add it to "
                                   "OPEN_ROUTES if it is meant to")


@pytest.mark.parametrize("route", V1_ROUTES, ids=[f"{m} {p}" for m, p in V1_ROUTES])
def test_a_v1_route_answers_only_a_right_key(api: TestClient, route: tuple[str, str]) -> None:
    assert route in VALID_REQUESTS, f"add a valid request for {route} to VALID_REQUESTS"
    refused = {"no key": call(api, route, {})}
    for form, header in HEADER_FORMS.items():
        refused[f"wrong key ({form})"] = call(api, route, header("k-three"))
    for what, response in refused.items():
        assert response.status_code == 401, f"{what}: {response.status_code} {response.text}"
        assert response.json()["error"]["type"] == "unauthorized", what
    for (form, header), key in zip(HEADER_FORMS.items(), KEYS, strict=True):
        response = call(api, route, header(key))
        assert response.status_code == 200, f"{form}: {response.status_code} {response.text}"


@pytest.mark.parametrize("route", sorted(OPEN_ROUTES))
def test_health_and_metrics_need_no_key(api: TestClient, route: tuple[str, str]) -> None:
    method, path = route
    assert api.request(method, path).status_code == 200
