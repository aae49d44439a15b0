"""Dependencies and input parsing shared by the routers."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from service.errors import (
    BadRequest,
    ClientDisconnected,
    InvalidParameter,
    Unauthorized,
    UnsupportedMediaType,
    validation_message,
)
from service.state import ServiceState

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


# Dependencies that never block are `async def`: FastAPI runs a plain `def` dependency in
# its thread pool, two thread hand-offs per request that the event loop pays for in GIL
# waits while a batch computes.


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key")


async def require_api_key(request: Request, state: StateDep) -> None:
    """With GLIMPSE_API_KEYS set, demand one of them (Authorization: Bearer or X-API-Key)."""
    keys = state.settings.api_keys
    if not keys:
        return
    presented = _presented_key(request)
    if presented is None:
        raise Unauthorized("an API key is required: 'Authorization: Bearer KEY' or 'X-API-Key'")
    # Compare with every key so that the time taken does not reveal which one matched.
    matches = [hmac.compare_digest(presented.encode(), key.encode()) for key in keys]
    if not any(matches):
        raise Unauthorized("invalid API key")


# ---------------------------------------------------------------------------- image requests


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lowercased ("" when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def json_object(request: Request) -> dict[str, Any]:
    """The JSON object of the body (400 when it is not JSON or not an object)."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object")
    return body


async def read_json_request(request: Request, params: type[M]) -> M:
    """The validated parameters of a JSON-only request (415 for another content type)."""
    media = media_type(request)
    if media != "application/json":
        raise UnsupportedMediaType(f"send application/json, not {media or 'no content type'}")
    try:
        return params.model_validate(await json_object(request))
    except ValidationError as exc:
        raise InvalidParameter(validation_message(exc)) from None


def _b64decode(text: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image: not valid base64") from None


async def _from_multipart(request: Request) -> tuple[bytes, dict[str, Any]]:
    form = await request.form(max_files=1, max_fields=32)
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidParameter("file: send the image as the multipart part named 'file'")
        data = await upload.read()
        fields = {key: value for key, value in form.multi_items() if key != "file"}
    finally:
        await form.close()
    return data, fields


async def _from_json(request: Request) -> tuple[bytes, dict[str, Any]]:
    body = await json_object(request)
    image = body.pop("image", None)
    if not isinstance(image, str):
        raise InvalidParameter("image: required, the image file encoded as a base64 string")
    return _b64decode(image), body


async def read_image_request(request: Request, params: type[M]) -> tuple[bytes, M]:
    """The image bytes and the validated parameters of a multipart or JSON request."""
    media = media_type(request)
    if media == "multipart/form-data":
        data, fields = await _from_multipart(request)
    elif media == "application/json":
        data, fields = await _from_json(request)
    else:
        raise UnsupportedMediaType("send multipart/form-data (the image as 'file') or "
                                   f"application/json (the image base64 in 'image'), "
                                   f"not {media or 'no content type'}")
    try:
        return data, params.model_validate(fields)
    except ValidationError as exc:
        raise InvalidParameter(validation_message(exc)) from None


# ---------------------------------------------------------------------------- disconnects


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so only that can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (ClientDisconnected)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # let the cancellation take the request off its queue
    if not watch.cancelled() and watch.done():
        raise ClientDisconnected("the client disconnected before its answer was ready")
    return task.result()
