"""`glimpse serve` and `python -m service`: run the HTTP service with uvicorn.

Command-line flags override the GLIMPSE_* settings. With one worker, SIGTERM (or
Ctrl+C) drains: /v2/health/ready turns 503 and new inference requests are refused,
queued and running requests finish (at most GLIMPSE_DRAIN_TIMEOUT_S; those still
waiting then are answered 503 as JSON), then the process exits with status 0. A
second signal answers every waiting request 503 and exits at once, also with status
0. With several workers uvicorn's supervisor forwards the signal and each worker
finishes its in-flight requests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from types import FrameType

import uvicorn

from service.app import create_app
from service.cli_args import add_serve_arguments
from service.errors import RequestIdLogFilter
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("service")


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "request_id": getattr(record, "request_id", "-"),
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "info", log_format: str = "text") -> None:
    """Log to stderr, every line carrying the request id ("-" outside requests)."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdLogFilter())
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains the service before exiting."""

    def __init__(self, config: uvicorn.Config, state: ServiceState, drain_timeout_s: float):
        super().__init__(config)
        self.state = state
        self.drain_timeout_s = drain_timeout_s
        self.drain_deadline: float | None = None
        self.drain_announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_deadline is None and self.state.phase == "ready":
            self.drain_deadline = time.monotonic() + self.drain_timeout_s
            self.state.begin_drain()
            return
        if self.drain_deadline is not None:
            # The second signal: answer what waits with 503 and leave now. uvicorn's own
            # handler would record the signal and re-raise it once served, so that the
            # process ended killed by it, after its graceful shutdown.
            log.info("second signal; exiting now")
            self.state.abort("the service is shutting down")
            self.should_exit = self.force_exit = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if not self.drain_announced:
                self.drain_announced = True
                log.info("draining: not ready, finishing queued requests (at most %g s)",
                         self.drain_timeout_s)
            timed_out = time.monotonic() >= self.drain_deadline
            if timed_out:
                self.state.abort(f"the service is shutting down: requests still waiting "
                                 f"after the drain timeout of {self.drain_timeout_s:g} s")
            if self.state.idle or timed_out:
                log.info("drained%s; exiting", " (timed out)" if timed_out else "")
                self.should_exit = True
        return await super().on_tick(counter)


_FLAG_ENV = {"host": "GLIMPSE_HOST", "port": "GLIMPSE_PORT",
             "repository": "GLIMPSE_MODEL_REPOSITORY", "log_level": "GLIMPSE_LOG_LEVEL"}


def run(args: argparse.Namespace) -> int:
    """Serve until stopped; flags given on the command line override the environment."""
    for flag, env in _FLAG_ENV.items():
        value = getattr(args, flag, None)
        if value is not None:
            os.environ[env] = str(value)  # workers re-read the settings from the environment
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    workers = getattr(args, "workers", 1) or 1
    base = f"http://{settings.host}:{settings.port}"
    log.info("serving %s at %s; API manual at %s/docs", settings.model_repository, base, base)
    common: dict = {"host": settings.host, "port": settings.port, "log_config": None,
                    "access_log": False, "log_level": settings.log_level.lower(),
                    "timeout_graceful_shutdown": int(settings.drain_timeout_s) + 1}
    if workers > 1:
        uvicorn.run("service.app:create_app", factory=True, workers=workers, **common)
        return 0
    app = create_app(settings)
    server = DrainingServer(uvicorn.Config(app, **common), app.state.service,
                            settings.drain_timeout_s)
    server.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m service", description=(
        "Serve a glimpse model repository over HTTP (settings: GLIMPSE_* variables)."))
    add_serve_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
