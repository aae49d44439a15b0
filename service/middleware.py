"""The request-context middleware: request id, body size limit, access log, last-resort 500."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, error_response, request_id_var

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")

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
