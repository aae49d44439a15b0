"""`glimpse serve` / `python -m service`: flags over settings, logging, the server it runs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

import service.__main__ as serve
from service.errors import request_id_var
from training.cli import build_parser


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    for env in ("GLIMPSE_HOST", "GLIMPSE_PORT", "GLIMPSE_MODEL_REPOSITORY", "GLIMPSE_LOG_LEVEL"):
        monkeypatch.setenv(env, "")  # recorded, so the values run() writes are undone
        monkeypatch.delenv(env)
    yield
    root.handlers[:], root.level = handlers, level


def test_glimpse_serve_flags_reach_the_server(monkeypatch: pytest.MonkeyPatch,
                                              repository: Path, capsys) -> None:
    started = []
    monkeypatch.setattr(serve.DrainingServer, "run", lambda self: started.append(self))
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "9123",
                                      "--repository", str(repository)])
    assert serve.run(args) == 0
    server = started[0]
    assert (server.config.host, server.config.port) == ("0.0.0.0", 9123)
    assert server.state.settings.model_repository == repository
    assert server.state.phase == "loading"  # nothing loads before the lifespan
    assert server.config.access_log is False
    assert "API manual at http://0.0.0.0:9123/docs" in capsys.readouterr().err


def test_python_m_service_parser_matches_glimpse_serve() -> None:
    args = serve.build_parser().parse_args(["--port", "1", "--workers", "2"])
    assert (args.port, args.workers, args.host, args.repository) == (1, 2, None, None)


def test_json_logs_carry_the_request_id(capsys) -> None:
    serve.configure_logging("info", "json")
    token = request_id_var.set("req-7")
    try:
        logging.getLogger("service.test").info("hello %s", "there")
    finally:
        request_id_var.reset(token)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (line["message"], line["request_id"], line["level"]) == ("hello there", "req-7",
                                                                    "INFO")
