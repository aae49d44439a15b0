"""Dependencies and input parsing shared by the routers.

Every inference endpoint starts the same way: count the request (`ServiceState.track`),
refuse it while the service is loading or draining, read its parameters, resolve the
model they name and label the request with it. `image_call` and `json_call` do that
once, as the endpoint's dependency, and hand the handler a `ModelCall` whose pipeline
has its real type:

    CaptionCall = Annotated[ImageCall[CaptionModel, CaptionParams],
                            Depends(image_call(CaptionParams, CaptionModel))]

The image of an `ImageCall` is still encoded: the handler decodes it only once the
model's queue has admitted the request (`ModelCall.compute_prepared`), so that an
overloaded model refuses it before that work.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Request
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from service.access import key_accepted, presented_key
from service.errors import (
    BadRequest,
    ClientDisconnected,
    InvalidParameter,
    Unauthorized,
    UnsupportedMediaType,
    validation_message,
)
from service.images import decode_image
from service.pipelines import Pipeline
from service.schemas import ModelParams
from service.state import RequestTracker, ServedModel, ServiceState

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


# Dependencies that never block are `async def`: FastAPI runs a plain `def` dependency in
# its thread pool, two thread hand-offs per request that the event loop pays for in GIL
# waits while a batch computes.


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


async def require_api_key(request: Request, state: StateDep) -> None:
    """With GLIMPSE_API_KEYS set, demand one of them (Authorization: Bearer or X-API-Key)."""
    keys = state.settings.api_keys
    if not keys:
        return
    presented = presented_key(request.headers)
    if not key_accepted(presented, keys):
        state.metrics.count_request("unknown", Unauthorized.error_type)
        if presented is None:
            raise Unauthorized("an API key is required: 'Authorization: Bearer KEY' or "
                               "'X-API-Key'")
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


def validated(params: type[M], fields: dict[str, Any], *, from_json: bool) -> M:
    """`params` from a JSON object or from form fields (InvalidParameter naming each bad one).

    JSON values must have the JSON Schema type the OpenAPI document declares: false is
    not a number and 0 not a boolean (pydantic's lax mode would take both), but 3.0 is
    an integer. Form fields are text, parsed as their declared types.
    """
    try:
        if from_json:
            whole = {k: int(v) if isinstance(v, float) and v.is_integer() else v
                     for k, v in fields.items()}
            return params.model_validate(whole, strict=True)
        return params.model_validate(form_booleans(params, fields))
    except ValidationError as exc:
        raise InvalidParameter(validation_message(exc)) from None


def form_booleans(params: type[BaseModel], fields: dict[str, Any]) -> dict[str, Any]:
    """Boolean form fields read as true or false only (what forms and /docs send); pydantic
    alone would also take 0, 1, yes, no, on and off."""
    out = dict(fields)
    for name, value in fields.items():
        field = params.model_fields.get(name)
        if field is not None and field.annotation is bool and isinstance(value, str):
            if value.lower() not in ("true", "false"):
                raise InvalidParameter(f"{name}: must be true or false, got {value!r}")
            out[name] = value.lower() == "true"
    return out


async def read_json_request(request: Request, params: type[M]) -> M:
    """The validated parameters of a JSON-only request (415 for another content type)."""
    media = media_type(request)
    if media != "application/json":
        raise UnsupportedMediaType(f"send application/json, not {media or 'no content type'}")
    return validated(params, await json_object(request), from_json=True)


def _b64decode(text: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image: not valid base64") from None


def single_fields(parts: list[tuple[str, Any]], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A form's fields by name, each given once: a field sent twice is refused (422) rather
    than read as one of its values, which the schema's single value cannot say."""
    fields: dict[str, Any] = {}
    for key, value in parts:
        if key in skip:
            continue
        if key in fields:
            raise InvalidParameter(f"{key}: given more than once; send each field once")
        fields[key] = value
    return fields


async def _from_multipart(request: Request) -> tuple[bytes, dict[str, Any]]:
    form = await request.form(max_files=1, max_fields=32)
    try:
        upload = form.get("file")
        if upload is None:
            raise InvalidParameter("file: send the image as the multipart part named 'file'")
        data = await upload.read() if not isinstance(upload, str) else form_bytes(upload)
        fields = single_fields(form.multi_items(), skip=("file",))
    finally:
        await form.close()
    return data, fields


def form_bytes(value: str) -> bytes:
    """The bytes of a file part sent without a filename, which Starlette hands over as text:
    decoded as UTF-8 when they are UTF-8, else as Latin-1 (lossless either way)."""
    try:
        raw = value.encode("latin-1")
        raw.decode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8")
    except UnicodeDecodeError:
        return raw
    return value.encode("utf-8")


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
    return data, validated(params, fields, from_json=media == "application/json")


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


# ---------------------------------------------------------------------------- model calls


PipelineT = TypeVar("PipelineT", bound=Pipeline[Any, Any])
ParamsT = TypeVar("ParamsT", bound=ModelParams)


@dataclass(frozen=True)
class ModelCall(Generic[PipelineT, ParamsT]):
    """A request past the preamble: its parameters, the model they resolved to and that
    model's pipeline."""

    request: Request
    params: ParamsT
    served: ServedModel
    pipeline: PipelineT

    @property
    def key(self) -> str:
        """The answering bundle, name/version."""
        return self.served.key

    async def compute(self, payload: Any) -> Any:
        """The pipeline's result for `payload`, computed in a batch of the model's queue
        (cancelled if the client disconnects first)."""
        with self.served.batcher.admission() as submit:
            return await unless_disconnected(self.request, submit(payload))

    async def compute_prepared(self, prepare: Callable[[], Any]) -> Any:
        """As `compute`, for a payload that `prepare` builds in a worker thread (decoding an
        image) once the queue has a place for it: an overloaded model refuses the request
        before that work."""
        with self.served.batcher.admission() as submit:
            payload = await run_in_threadpool(prepare)
            return await unless_disconnected(self.request, submit(payload))


@dataclass(frozen=True)
class ImageCall(ModelCall[PipelineT, ParamsT]):
    """A model call that carries an image file, not yet decoded."""

    image: bytes
    max_image_pixels: int

    def decode_image(self) -> Image.Image:
        """The uploaded image (PayloadTooLarge past the pixel limit, UnsupportedMediaType if
        it is not an image); blocking, call it in `compute_prepared`."""
        return decode_image(self.image, max_pixels=self.max_image_pixels)


# The dependencies below yield inside `state.track()`: FastAPI throws an exception of the
# handler back into them, so the request is counted with the outcome of the whole call.


def resolve_model(state: ServiceState, tracker: RequestTracker, model: str | None,
                  kind: type[PipelineT]) -> tuple[ServedModel, PipelineT]:
    """The served model a request names for `kind`'s task and its pipeline; the request's
    metrics are labelled with the model from here on."""
    served = state.resolve(model, kind.task)
    tracker.model = served.key
    return served, served.pipeline_as(kind)


def image_call(params: type[ParamsT], kind: type[PipelineT]
               ) -> Callable[..., AsyncIterator[ImageCall[PipelineT, ParamsT]]]:
    """The dependency of an endpoint that reads an image and `params` (multipart or JSON)
    and is answered by a `kind` pipeline."""

    async def read_image_call(request: Request, state: StateDep
                              ) -> AsyncIterator[ImageCall[PipelineT, ParamsT]]:
        with state.track() as tracker:
            state.check_accepting()
            data, values = await read_image_request(request, params)
            served, pipeline = resolve_model(state, tracker, values.model, kind)
            yield ImageCall(request, values, served, pipeline, data,
                            state.settings.max_image_pixels)

    return read_image_call


def json_call(read: Callable[[Request], Awaitable[ParamsT]], kind: type[PipelineT]
              ) -> Callable[..., AsyncIterator[ModelCall[PipelineT, ParamsT]]]:
    """The dependency of an endpoint whose JSON body `read` validates and a `kind` pipeline
    answers."""

    async def read_json_call(request: Request, state: StateDep
                             ) -> AsyncIterator[ModelCall[PipelineT, ParamsT]]:
        with state.track() as tracker:
            state.check_accepting()
            values = await read(request)
            served, pipeline = resolve_model(state, tracker, values.model, kind)
            yield ModelCall(request, values, served, pipeline)

    return read_json_call
