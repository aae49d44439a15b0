"""Overload on a real server: a full queue refuses before the request body is read.

The server holds one caption model whose queue takes a single request and waits 5 s
for companions; while that request waits, another is refused from its headers alone.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_server import running_server

_spec = importlib.util.spec_from_file_location(
    "tiny_bundle", Path(__file__).parents[1] / "service" / "tiny_bundle.py")
tiny_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_bundle)

HOLD = {"caption-hold": {"max_batch_size": 2, "max_queue_size": 1,
                         "max_queue_delay_ms": 5000,
                         "idle_dispatch": False}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("overload")
    tiny_bundle.build_caption_bundle(root / "repository", "caption-hold", 1, seed=0)
    env = {"GLIMPSE_MODEL_OVERRIDES": json.dumps(HOLD), "GLIMPSE_INTRA_OP_THREADS": "1"}
    with running_server(root / "repository", root / "server.log", env) as (_, url):
        yield url


def _headers_only(url: str, path: str) -> bytes:
    """Send the head of a 1 MB multipart POST, never its body; return what comes back."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=3) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
                     "Content-Type: multipart/form-data; boundary=x\r\n"
                     "Content-Length: 1000000\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def test_a_full_queue_refuses_before_the_body_is_read(server: str) -> None:
    async def main() -> tuple[bytes, httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=30) as client:
            held = asyncio.ensure_future(client.post(
                "/v1/captions", files={"file": tiny_bundle.sample_png(0)}))
            while 'glimpse_queue_depth{model="caption-hold/1"} 1.0' not in \
                    (await client.get("/metrics")).text:
                await asyncio.sleep(0.02)
            # Within the socket's 3 s timeout, well before the held request's 5 s delay.
            refused = await asyncio.to_thread(_headers_only, server, "/v1/captions")
            return refused, await held

    refused, held = asyncio.run(main())
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert b"retry-after: 1" in head.lower()
    error = json.loads(body)["error"]
    assert error["type"] == "overloaded" and "caption-hold/1" in error["message"]
    assert held.status_code == 200
    metrics = httpx.get(f"{server}/metrics").text
    assert 'glimpse_requests_total{model="caption-hold/1",outcome="overloaded"} 1.0' in metrics


def test_other_paths_and_methods_pass_the_gate(server: str) -> None:
    assert httpx.get(f"{server}/v2/health/ready").status_code == 200
    assert httpx.get(f"{server}/v1/captions").status_code == 405
