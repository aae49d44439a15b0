"""The FastAPI app: `create_app(settings)` builds it; its lifespan serves the repository.

Nothing is loaded when the app is built: the lifespan loads and warms the bundles
(service/loading.py) and drains their queues on shutdown.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from service.errors import install_error_handlers
from service.loading import serving
from service.metrics import ServiceMetrics
from service.middleware import AdmissionGate, RequestContextMiddleware
from service.openapi import openapi_document
from service.routers import INFERENCE_TASKS, ROUTERS, web
from service.settings import Settings
from service.state import ServiceState

DOCS_ASSETS = "/docs-assets"
DESCRIPTION = """
Image-language models exported to ONNX, served with ONNX Runtime and dynamic batching.

Errors are JSON: `{"error": {"type", "message", "request_id"}}`; the request id is also
in the `X-Request-ID` header and in the service logs. With `GLIMPSE_API_KEYS` set, send
`Authorization: Bearer KEY` or `X-API-Key: KEY` (health and metrics stay open).
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with serving(app.state.service):
        yield


def _version() -> str:
    try:
        return importlib.metadata.version("glimpse")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The glimpse app; nothing is loaded until its lifespan starts."""
    settings = settings or Settings()
    # /docs and /redoc with Swagger UI's and ReDoc's files served by glimpse itself (from
    # the fastapi-offline package), not from a CDN: GPU servers often have no internet.
    app = FastAPIOffline(title="glimpse", version=_version(), description=DESCRIPTION,
                         lifespan=lifespan, static_url=DOCS_ASSETS,
                         swagger_ui_parameters={"validatorUrl": None,
                                                "tryItOutEnabled": True})
    app.openapi = partial(openapi_document, app)  # type: ignore[method-assign]
    app.state.service = ServiceState(settings, ServiceMetrics())
    install_error_handlers(app)
    app.add_middleware(AdmissionGate, state=app.state.service, tasks=INFERENCE_TASKS)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type",
                                          "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", web.static_files(), name="static")
    return app
