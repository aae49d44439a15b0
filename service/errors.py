"""Errors the service answers with, and the request id that ties an answer to its logs.

Every error leaves the service as JSON, `{"error": {"type", "message", "request_id"}}`,
with the HTTP status that says what happened (see docs/service.md). Code anywhere in
`service/` raises a `ServiceError` subclass; the handlers installed by
`install_error_handlers` turn it, FastAPI's validation errors and unknown routes into
that shape.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

# The id of the request being served by the current task; "-" outside a request.
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


class RequestIdLogFilter(logging.Filter):
    """Adds `record.request_id` so that every log line can name its request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class ServiceError(Exception):
    """An error with the HTTP status, error type and headers it is answered with."""

    status: int = 500
    error_type: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status, error_type = 400, "bad_request"


class Unauthorized(ServiceError):
    status, error_type = 401, "unauthorized"

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ModelNotFound(ServiceError):
    status, error_type = 404, "model_not_found"


class PayloadTooLarge(ServiceError):
    status, error_type = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, error_type = 415, "unsupported_media_type"


class InvalidParameter(ServiceError):
    status, error_type = 422, "invalid_parameter"


class ServiceUnavailable(ServiceError):
    """Queue full, not ready yet, or draining: the client may retry after `retry_after_s`."""

    status, error_type = 503, "unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class Overloaded(ServiceUnavailable):
    error_type = "overloaded"


class RequestTimeout(ServiceError):
    status, error_type = 504, "timeout"


class ClientDisconnected(ServiceError):
    """The caller went away; nobody reads this answer (499, as nginx logs it)."""

    status, error_type = 499, "client_disconnected"


class BatchSizeMismatch(ServiceError):
    """A batch function returned a different number of results than it was given."""


def validation_message(exc: ValidationError | RequestValidationError) -> str:
    """One line naming each invalid parameter: `beam_size: Input should be ... 20`."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        name = ".".join(loc) or "request"
        parts.append(f"{name}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts)


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", None) or request_id_var.get()


def error_response(
    status: int, error_type: str, message: str, request_id: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"type": error_type, "message": message, "request_id": request_id}}
    return JSONResponse(body, status_code=status,
                        headers={**(headers or {}), "X-Request-ID": request_id})


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status, exc.error_type, exc.message, request_id_of(request),
                          exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError | ValidationError)
    return error_response(422, InvalidParameter.error_type, validation_message(exc),
                          request_id_of(request))


_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, _HTTP_TYPES.get(exc.status_code, "http_error"),
                          str(exc.detail), request_id_of(request), dict(exc.headers or {}))


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error raised inside a route as the JSON error body."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
