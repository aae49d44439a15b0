"""The FastAPI app: `create_app(settings)` builds it; its lifespan loads the repository.

Start-up discovers every bundle under the repository, verifies manifests and sha256s,
creates ONNX Runtime sessions with the configured providers, warms each model at the
batch sizes its queue will form and starts its batching queue. A bundle that fails is
skipped with an error log naming the bundle, the file and the reason; the others are
served, and /v2/health/ready answers 503 ("degraded") until the repository is fixed,
so that a deployment never silently runs without a model it was given.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.alignment import AlignmentModel
from service.batching import Batcher
from service.bundle import Bundle, BundleError, discover
from service.captioning import CaptionModel
from service.errors import (
    PayloadTooLarge,
    error_response,
    install_error_handlers,
    request_id_var,
)
from service.generation import GenerationModel
from service.retrieval import RetrievalModel
from service.routers import alignments, captions, health, metrics, models, retrieval, vqa
from service.routers.generations import router as generations_router
from service.routers.metrics import ServiceMetrics
from service.runtime import ServedModel, ServiceState, load_graphs, warm_batch_sizes
from service.settings import Settings
from service.vqa import VqaModel

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")

# task -> how a bundle of that task becomes a pipeline (a batch function plus warm-up)
PIPELINES: dict[str, Callable[..., Any]] = {"caption": CaptionModel, "alignment": AlignmentModel,
                                            "vqa": VqaModel,
                                            "retrieval": RetrievalModel,
                                            "generation": GenerationModel}

DESCRIPTION = """
Image-language models exported to ONNX, served with ONNX Runtime and dynamic batching.

Errors are JSON: `{"error": {"type", "message", "request_id"}}`; the request id is also
in the `X-Request-ID` header and in the service logs. With `GLIMPSE_API_KEYS` set, send
`Authorization: Bearer KEY` or `X-API-Key: KEY` (health and metrics stay open).
"""


# ---------------------------------------------------------------------------- loading


def load_model(bundle: Bundle, settings: Settings, metrics: ServiceMetrics) -> ServedModel:
    """Sessions, pipeline, warm-up and batching queue of one bundle (raises BundleError)."""
    task = bundle.manifest.task
    if task not in PIPELINES:
        raise BundleError(bundle.path, f"task {task!r} is not served by this version of glimpse")
    knobs = settings.for_model(bundle.manifest.name)
    graphs = load_graphs(bundle, device=knobs.device, providers=knobs.providers,
                         intra_op_threads=knobs.intra_op_threads,
                         allow_spinning=settings.ort_spinning)
    pipeline = PIPELINES[task](bundle, graphs)
    started = time.perf_counter()
    try:
        pipeline.warm_up(warm_batch_sizes(knobs.max_batch_size))
    except Exception as exc:  # graphs that load but cannot run as the manifest says
        raise BundleError(bundle.path, f"warm-up failed: {exc}") from exc
    log.info("warmed %s in %.2f s", bundle.key, time.perf_counter() - started)
    batcher = Batcher(bundle.key, pipeline.run_batch, max_batch_size=knobs.max_batch_size,
                      max_queue_delay_s=knobs.max_queue_delay_ms / 1000,
                      max_queue_size=knobs.max_queue_size, timeout_s=knobs.request_timeout_s,
                      observer=metrics)
    return ServedModel(bundle=bundle, settings=knobs, pipeline=pipeline, batcher=batcher)


def load_repository(state: ServiceState) -> None:
    """Fill `state.models` and `state.errors` from the repository (blocking)."""
    bundles, errors = discover(state.settings.model_repository)
    for bundle in bundles:
        try:
            state.models[bundle.key] = load_model(bundle, state.settings, state.metrics)
        except BundleError as exc:
            errors.append(exc)
    for exc in errors:
        log.error("not serving %s", exc)
    state.errors = [str(exc) for exc in errors]
    if not bundles and not errors:
        log.warning("model repository %s holds no bundle", state.settings.model_repository)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    await asyncio.to_thread(load_repository, state)
    for served in state.models.values():
        served.batcher.start()
        state.metrics.watch_queue(served.key, lambda b=served.batcher: len(b.queue))
    state.phase = "ready"
    log.info("ready: %d model(s) %s", len(state.models), ", ".join(state.models) or "")
    try:
        yield
    finally:
        state.begin_drain()
        timeout = state.settings.drain_timeout_s
        await asyncio.gather(*(m.batcher.stop(timeout) for m in state.models.values()))
        log.info("stopped")


# ---------------------------------------------------------------------------- middleware

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    """Request id, body size limit, access log and the JSON answer to unexpected errors.

    The id is the client's X-Request-ID when it is a short token, else a new uuid; it
    is returned in the X-Request-ID header, put in every error body and every log line.
    Bodies larger than `max_body_bytes` are refused with 413 from their Content-Length,
    or as soon as a streamed body passes the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _CLIENT_REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = [500]
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                status[0] = message["status"]
                kept = [(k, v) for k, v in message.get("headers", [])
                        if k.lower() != b"x-request-id"]
                message["headers"] = [*kept, (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of "
                                      f"{self.max_body_bytes}")
            await self.app(scope, self._limited(receive), send_with_id)
        except PayloadTooLarge as exc:
            if response_started:
                raise
            await error_response(413, exc.error_type, exc.message, request_id)(scope, receive,
                                                                              send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"],
                          extra={"request_id": request_id})
            if response_started:
                raise
            await error_response(500, "internal_error", "internal error; the request id "
                                 "names it in the service logs", request_id)(scope, receive,
                                                                             send_with_id)
        finally:
            access_log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status[0],
                            (time.perf_counter() - started) * 1000,
                            extra={"request_id": request_id})
            request_id_var.reset(token)

    def _limited(self, receive: Receive) -> Receive:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLarge(f"body exceeds the limit of {self.max_body_bytes} "
                                          "bytes")
            return message

        return limited_receive


# ---------------------------------------------------------------------------- factory


def _version() -> str:
    try:
        return importlib.metadata.version("glimpse")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The glimpse app; nothing is loaded until its lifespan starts."""
    settings = settings or Settings()
    app = FastAPI(title="glimpse", version=_version(), description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.service = ServiceState(settings, ServiceMetrics())
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type",
                                          "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    for router in (health.router, metrics.router, models.router, captions.router,
                   alignments.router, vqa.router, retrieval.router, generations_router):
        app.include_router(router)
    return app
