"""POST /v1/embeddings, /v1/retrieval/images and /v1/retrieval/captions.

An image or a sentence is embedded by a retrieval bundle (service/retrieval.py);
the two search endpoints rank that bundle's gallery by cosine similarity. Images
come as multipart `file` or JSON base64 `image`, like every image endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from service.errors import InvalidParameter, validation_message
from service.images import decode_image
from service.pipelines.retrieval import MAX_TOP_K, Query, QueryResult, RetrievalModel
from service.routers.deps import (
    StateDep,
    json_object,
    media_type,
    read_image_request,
    require_api_key,
    unless_disconnected,
)
from service.schemas import MODEL_FIELD_DOC, ErrorResponse, error_responses
from service.state import ServedModel

router = APIRouter(prefix="/v1", tags=["retrieval"], dependencies=[Depends(require_api_key)])

TOP_K_DOC = f"results returned, best first (1..{MAX_TOP_K})"
RESPONSES = {**error_responses(400, 401, 404, 413, 415, 422, 503, 504),
             409: {"model": ErrorResponse,
                   "description": "the model has no gallery of that kind (glimpse index)"}}


# ---------------------------------------------------------------------------- bodies


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description=MODEL_FIELD_DOC, examples=["retrieval-vse"])


class TextEmbeddingRequest(_Params):
    text: str = Field(min_length=1, description="a sentence",
                      examples=["a red circle left of a blue square"])


class ImageEmbeddingRequest(_Params):
    """The JSON form of an image embedding: the image travels base64-encoded."""

    image: str = Field(description="the image file, base64-encoded (a data: URL is accepted)")


class EmbeddingResponse(BaseModel):
    model: str = Field(examples=["retrieval-vse/1"])
    embedding: list[float] = Field(description="unit-length vector of the joint space")
    dimensions: int = Field(examples=[128])
    unknown_words: list[str] | None = Field(
        None, description="words outside the vocabulary, embedded as <unk>")


class ImageSearchRequest(_Params):
    text: str = Field(min_length=1, description="the sentence to find images for",
                      examples=["a small green star above a red circle"])
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description=TOP_K_DOC)


class CaptionSearchParams(_Params):
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description=TOP_K_DOC)


class CaptionSearchJSONRequest(CaptionSearchParams):
    image: str = Field(description="the image file, base64-encoded (a data: URL is accepted)")


class ImageHit(BaseModel):
    id: int = Field(description="the image id of the gallery (dataset imgid or folder index)")
    file: str = Field(examples=["images/test/test_000042.png"])
    score: float = Field(description="cosine similarity", examples=[0.83])


class CaptionHit(BaseModel):
    text: str = Field(examples=["a small green star above a red circle"])
    image_id: int | None = Field(description="the image the sentence was written for")
    score: float = Field(description="cosine similarity", examples=[0.79])


class ImageSearchResponse(BaseModel):
    model: str = Field(examples=["retrieval-vse/1"])
    results: list[ImageHit]
    unknown_words: list[str] | None = Field(
        None, description="words outside the vocabulary, embedded as <unk>")


class CaptionSearchResponse(BaseModel):
    model: str = Field(examples=["retrieval-vse/1"])
    results: list[CaptionHit]


def _multipart_schema(params: type[BaseModel], *, file_required: bool) -> dict[str, Any]:
    return {"type": "object", "required": ["file"] if file_required else [],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "the image file"},
                           **params.model_json_schema()["properties"]}}


def _request_body(multipart: dict[str, Any], *json_models: type[BaseModel]) -> dict[str, Any]:
    schema = ({"oneOf": [m.model_json_schema() for m in json_models]} if len(json_models) > 1
              else json_models[0].model_json_schema())
    return {"required": True, "content": {"multipart/form-data": {"schema": multipart},
                                          "application/json": {"schema": schema}}}


# ---------------------------------------------------------------------------- helpers


def _image_query(model: RetrievalModel, data: bytes, max_pixels: int, **search: Any) -> Query:
    return Query(image=model.preprocess(decode_image(data, max_pixels=max_pixels)), **search)


async def _answer(request: Request, served: ServedModel,
                  query: Query | Callable[[], Query]) -> tuple[Query, QueryResult]:
    """Admit the request to the model's queue, build its query (decoding an image off the
    event loop), and await its result."""
    with served.batcher.admission() as submit:
        if not isinstance(query, Query):
            query = await run_in_threadpool(query)
        return query, await unless_disconnected(request, submit(query))


def _validated(params: type[BaseModel], fields: dict[str, Any]) -> Any:
    try:
        return params.model_validate(fields)
    except ValidationError as exc:
        raise InvalidParameter(validation_message(exc)) from None


async def _text_fields(request: Request) -> dict[str, Any] | None:
    """The fields of a text embedding request, or None when it carries an image."""
    media = media_type(request)
    if media == "application/json":
        body = await json_object(request)
        fields, has_image = body, "image" in body
    elif media in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=32)
        fields, has_image = dict(form.multi_items()), "file" in form
    else:
        return None  # read_image_request answers 415 naming the accepted types
    if has_image and "text" in fields:
        raise InvalidParameter("send either text or an image, not both")
    if not has_image and "text" not in fields:
        raise InvalidParameter("send a sentence as `text`, or an image (JSON base64 `image` "
                               "or multipart `file`)")
    return None if has_image else fields


# ---------------------------------------------------------------------------- routes


@router.post("/embeddings", response_model=EmbeddingResponse, response_model_exclude_none=True,
             openapi_extra={"requestBody": _request_body(
                 _multipart_schema(TextEmbeddingRequest, file_required=False),
                 TextEmbeddingRequest, ImageEmbeddingRequest)},
             responses=error_responses(400, 401, 404, 413, 415, 422, 503, 504))
async def create_embedding(request: Request, state: StateDep) -> EmbeddingResponse:
    """Embed a sentence or an image into the retrieval model's joint space.

    Send JSON `{"text": ...}`, JSON `{"image": base64}`, or a form: multipart with the
    image as `file`, or a `text` field. Embeddings have unit length: the dot product of
    two of them is their cosine similarity, the score the search endpoints rank by.
    """
    with state.track() as tracker:
        state.check_accepting()
        fields = await _text_fields(request)
        query: Query | Callable[[], Query]
        if fields is not None:
            params = _validated(TextEmbeddingRequest, fields)
            served = state.resolve(params.model, "retrieval")
            model: RetrievalModel = served.pipeline
            query = Query(text=model.text_query(params.text))
        else:
            data, params = await read_image_request(request, _Params)
            served = state.resolve(params.model, "retrieval")
            model = served.pipeline
            query = partial(_image_query, model, data, state.settings.max_image_pixels)
        tracker.model = served.key
        query, result = await _answer(request, served, query)
        unknown = list(query.text.unknown) if query.text else None
        return EmbeddingResponse(model=served.key, embedding=result.embedding.tolist(),
                                 dimensions=int(result.embedding.shape[0]),
                                 unknown_words=unknown or None)


@router.post("/retrieval/images", response_model=ImageSearchResponse,
             response_model_exclude_none=True, responses=RESPONSES)
async def search_images(request: Request, body: ImageSearchRequest,
                        state: StateDep) -> ImageSearchResponse:
    """Rank the model's image gallery against a sentence (text-to-image retrieval)."""
    with state.track() as tracker:
        state.check_accepting()
        served = state.resolve(body.model, "retrieval")
        tracker.model = served.key
        model: RetrievalModel = served.pipeline
        model.check_search("images", body.top_k)
        query = Query(text=model.text_query(body.text), search="images", top_k=body.top_k)
        _, result = await _answer(request, served, query)
        hits = [ImageHit(id=h.entry["id"], file=h.entry["file"], score=h.score)
                for h in result.hits]
        return ImageSearchResponse(model=served.key, results=hits,
                                   unknown_words=list(query.text.unknown) or None)


@router.post("/retrieval/captions", response_model=CaptionSearchResponse, responses=RESPONSES,
             openapi_extra={"requestBody": _request_body(
                 _multipart_schema(CaptionSearchParams, file_required=True),
                 CaptionSearchJSONRequest)})
async def search_captions(request: Request, state: StateDep) -> CaptionSearchResponse:
    """Rank the model's sentence gallery against an image (image-to-text retrieval).

    Send the image as multipart `file` (`curl -F file=@cat.png -F top_k=3 ...`) or as
    JSON with the image base64-encoded in `image`.
    """
    with state.track() as tracker:
        state.check_accepting()
        data, params = await read_image_request(request, CaptionSearchParams)
        served = state.resolve(params.model, "retrieval")
        tracker.model = served.key
        model: RetrievalModel = served.pipeline
        model.check_search("captions", params.top_k)
        _, result = await _answer(request, served, partial(
            _image_query, model, data, state.settings.max_image_pixels, search="captions",
            top_k=params.top_k))
        hits = [CaptionHit(text=h.entry["text"], image_id=h.entry["image_id"], score=h.score)
                for h in result.hits]
        return CaptionSearchResponse(model=served.key, results=hits)

