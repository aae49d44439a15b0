"""GLIMPSE_* settings: comma lists, JSON per-model overrides, validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("GLIMPSE_")]:
        monkeypatch.delenv(name)


def test_environment_is_read_with_the_glimpse_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_MODEL_REPOSITORY", "/srv/models")
    monkeypatch.setenv("GLIMPSE_API_KEYS", " key-a, key-b ,")
    monkeypatch.setenv("GLIMPSE_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("GLIMPSE_PROVIDERS", "CPUExecutionProvider")
    monkeypatch.setenv("GLIMPSE_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("GLIMPSE_MAX_QUEUE_DELAY_MS", "0.5")
    settings = Settings()
    assert settings.model_repository == Path("/srv/models")
    assert settings.api_keys == ["key-a", "key-b"]
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.providers == ["CPUExecutionProvider"]
    assert (settings.max_batch_size, settings.max_queue_delay_ms) == (16, 0.5)


def test_an_empty_key_list_runs_without_authentication(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    monkeypatch.setenv("GLIMPSE_API_KEYS", "")
    assert Settings().api_keys == []


def test_defaults() -> None:
    s = Settings()
    assert (s.host, s.port, s.device, s.max_queue_delay_ms, s.api_keys, s.cors_origins) == \
        ("127.0.0.1", 8000, "auto", 2.0, [], [])


def test_model_overrides_apply_to_their_model_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_MODEL_OVERRIDES",
                       '{"caption-sat": {"max_batch_size": 32, "device": "cuda:1", '
                       '"intra_op_threads": 2}}')
    settings = Settings(max_queue_size=10)
    sat = settings.for_model("caption-sat")
    assert (sat.max_batch_size, sat.device, sat.intra_op_threads, sat.max_queue_size) == \
        (32, "cuda:1", 2, 10)
    other = settings.for_model("caption-nic")
    assert (other.max_batch_size, other.device, other.intra_op_threads) == (8, "auto", None)


@pytest.mark.parametrize("env, value", [
    ("GLIMPSE_MODEL_OVERRIDES", '{"m": {"max_batch": 3}}'),
    ("GLIMPSE_MODEL_OVERRIDES", "not json"),
    ("GLIMPSE_DEVICE", "gpu"),
    ("GLIMPSE_MAX_BATCH_SIZE", "0"),
    ("GLIMPSE_LOG_FORMAT", "xml"),
    ("GLIMPSE_API_KEYS", " , "),  # would have turned authentication off
    ("GLIMPSE_API_KEYS", ","),
])
def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch, env: str,
                                      value: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises((ValidationError, ValueError)):
        Settings()
