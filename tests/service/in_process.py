"""An httpx transport that sends each request through a started TestClient.

Starlette's TestClient is built on httpx2 when that is installed (the OpenAI SDK
brings it), so its own transport cannot be handed to an `httpx.Client` such as
`GlimpseClient`'s; this one copies each request and answer across.
"""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient


class TestClientTransport(httpx.BaseTransport):
    __test__ = False  # not a test class, despite its name

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.client.request(request.method, str(request.url),
                                     headers=list(request.headers.multi_items()),
                                     content=request.read())
        return httpx.Response(answer.status_code, headers=list(answer.headers.multi_items()),
                              content=answer.content, request=request)
