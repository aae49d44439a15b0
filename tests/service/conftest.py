"""Fixtures for service tests: a tiny caption repository and apps served from it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tiny_bundle import build_caption_bundle

from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """caption-tiny (attention, versions 1 and 2) and caption-nic (no attention)."""
    root = tmp_path_factory.mktemp("model_repository")
    build_caption_bundle(root, "caption-tiny", 1, seed=0)
    build_caption_bundle(root, "caption-tiny", 2, seed=1)
    build_caption_bundle(root, "caption-nic", 1, attention=False, seed=2)
    return root


@pytest.fixture
def make_client(repository: Path) -> Iterator[Callable[..., TestClient]]:
    """make_client(**settings) -> a started TestClient (lifespan run), closed afterwards."""
    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        settings = Settings(**{"model_repository": repository, **overrides})
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture(scope="module")
def api(repository: Path) -> Iterator[TestClient]:
    """One started app per test module, for tests that change nothing in it."""
    app = create_app(Settings(model_repository=repository))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
