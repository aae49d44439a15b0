"""ASGI middleware: the request context (request id, body size limit, access log, last-resort
500) and the admission gate that refuses inference requests before their body is read."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.access import key_accepted, presented_key
from service.errors import (
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    ServiceUnavailable,
    error_response,
    request_id_var,
)
from service.state import ServiceState

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# The pages glimpse serves (/, /docs, /redoc) load everything from glimpse itself; the
# policy keeps it so, down to ReDoc's attribution logo, which it would fetch from a CDN.
# Swagger UI's and ReDoc's pages start with inline scripts and styles.
PAGE_POLICY = (b"default-src 'self'; script-src 'self' 'unsafe-inline'; "
               b"style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
               b"worker-src 'self' blob:; connect-src 'self'; font-src 'self' data:; "
               b"frame-ancestors 'self'")


class RequestContextMiddleware:
    """Request id, body size limit, access log and the JSON answer to unexpected errors.

    The id is the client's X-Request-ID when it is a short token, else a new uuid; it
    is returned in the X-Request-ID header, put in every error body and every log line.
    Bodies larger than `max_body_bytes` are refused with 413 from their Content-Length,
    or as soon as a streamed body passes the limit. HTML pages get `PAGE_POLICY`.
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
                if any(k.lower() == b"content-type" and v.startswith(b"text/html")
                       for k, v in kept):
                    kept.append((b"content-security-policy", PAGE_POLICY))
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


class AdmissionGate:
    """Refuses an inference request before its body is read when no queue can take it.

    Under overload, clients that ignore Retry-After send again at once. When every
    refusal first read and parsed a multipart body, refusing took the cores the models
    needed (a server doing 130-155 captions/s answered 29-39/s). The gate knows the task
    of each inference path; when the service is not ready it answers 503 at once, and
    when every served model of that task has a full queue the request waits, its body
    unread, up to GLIMPSE_ADMISSION_WAIT_MS for a place (first come, first served) and
    is refused 503 if none frees up; the server then discards the body unread. The wait
    bounds how often a client that ignores Retry-After can be refused, so refusals
    cannot take the cores either. A request that names one model of several is checked
    again against that model's queue once its body is parsed (`Batcher.admission`).
    Requests with a wrong API key pass through, to be answered 401.
    """

    def __init__(self, app: ASGIApp, state: ServiceState, tasks: Mapping[str, str]) -> None:
        self.app = app
        self.state = state
        self.tasks = tasks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = self.tasks.get(scope["path"]) if scope["type"] == "http" else None
        refusal = self.refusal(scope, task) if task and scope["method"] == "POST" else None
        if isinstance(refusal, Overloaded) and await self.state.wait_for_room(
                task, self.state.settings.admission_wait_ms / 1000):
            refusal = None if self.state.phase == "ready" else ServiceUnavailable(
                f"the service is {self.state.phase}", retry_after_s=5)
        if refusal is None:
            if task is None:
                await self.app(scope, receive, send)
                return
            self.state.arriving[task] += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.state.arriving[task] -= 1
            return
        if isinstance(refusal, Overloaded):
            self.count_overloaded(task)
        request_id = scope.get("state", {}).get("request_id", request_id_var.get())
        await error_response(refusal.status, refusal.error_type, refusal.message, request_id,
                             refusal.headers)(scope, receive, send)

    def refusal(self, scope: Scope, task: str) -> ServiceError | None:
        state = self.state
        keys = state.settings.api_keys
        if keys:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in scope["headers"]}
            if not key_accepted(presented_key(headers), keys):
                return None
        if state.phase != "ready":
            state.metrics.count_request("unknown", ServiceUnavailable.error_type)
            return ServiceUnavailable(f"the service is {state.phase}", retry_after_s=5)
        if state.has_room(task) in (None, True):
            return None
        names = ", ".join(m.key for m in state.models.values() if m.task == task)
        return Overloaded(f"every {task} model ({names}) has a full queue; retry later")

    def count_overloaded(self, task: str) -> None:
        served = [m.key for m in self.state.models.values() if m.task == task]
        self.state.metrics.count_request(served[0] if len(served) == 1 else "unknown",
                                         Overloaded.error_type)
