"""Start `python -m service` on a free port for the end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from service.client import AsyncGlimpseClient, GlimpseClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(repository: Path, log_path: Path, env: dict[str, str], *,
                   ready_timeout: float = 30, args: Sequence[str] = ()
                   ) -> Iterator[tuple[subprocess.Popen, str]]:
    """(process, base URL) of a server on `repository`, ready; killed on exit if still up.

    `env` adds GLIMPSE_* settings to this process's environment and `args` flags to its
    command line; the server's output goes to `log_path`.
    """
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port),
                                 "--repository", str(repository), *args],
                                env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with GlimpseClient(url) as client:
            client.wait_ready(timeout=ready_timeout)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def queue_depth_is(client: AsyncGlimpseClient, key: str, depth: int
                   ) -> Callable[[], Awaitable[bool]]:
    """A condition for polling.until: `depth` requests wait in model `key`'s queue."""

    async def check() -> bool:
        metrics = (await client.http.get("/metrics")).text
        return f'glimpse_queue_depth{{model="{key}"}} {float(depth)}' in metrics

    return check


def not_ready(client: AsyncGlimpseClient) -> Callable[[], Awaitable[httpx.Response | None]]:
    """A condition for polling.until: the readiness answer once it is no longer 200."""

    async def check() -> httpx.Response | None:
        ready = await client.http.get("/v2/health/ready")
        return ready if ready.status_code != 200 else None

    return check
