"""POST /v1/embeddings, /v1/retrieval/images and /v1/retrieval/captions.

An image or a sentence is embedded by a retrieval bundle (service/pipelines/retrieval.py);
the two search endpoints rank that bundle's gallery by cosine similarity. Images
come as multipart `file` or JSON base64 `image`, like every image endpoint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from service.domain import DomainScore
from service.errors import InvalidParameter
from service.pipelines.retrieval import Query, QueryResult, RetrievalModel
from service.routers.deps import (
    ImageCall,
    ModelCall,
    StateDep,
    image_call,
    json_call,
    json_object,
    media_type,
    read_image_request,
    read_json_request,
    require_api_key,
    resolve_model,
    single_fields,
    validated,
)
from service.schemas import (
    CaptionHit,
    CaptionSearchJSONRequest,
    CaptionSearchParams,
    CaptionSearchResponse,
    EmbeddingResponse,
    ImageEmbeddingRequest,
    ImageHit,
    ImageSearchRequest,
    ImageSearchResponse,
    RetrievalParams,
    TextEmbeddingRequest,
    domain_out,
    error_responses,
    image_request_body,
    json_request_body,
)

TASK = "retrieval"  # of the models that answer this router's requests
router = APIRouter(prefix="/v1", tags=["retrieval"], dependencies=[Depends(require_api_key)])

RESPONSES = error_responses(400, 401, 404, 413, 415, 422, 503, 504, 409)


# ---------------------------------------------------------------------------- reading


async def _text_fields(request: Request) -> tuple[dict[str, Any], bool] | None:
    """The fields of a text embedding request and whether they came as JSON, or None when
    it carries an image."""
    media = media_type(request)
    if media == "application/json":
        body = await json_object(request)
        fields, has_image = body, "image" in body
    elif media in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=32)
        fields, has_image = single_fields(form.multi_items()), "file" in form
    else:
        return None  # read_image_request answers 415 naming the accepted types
    if has_image and "text" in fields:
        raise InvalidParameter("send either text or an image, not both")
    if not has_image and "text" not in fields:
        raise InvalidParameter("send a sentence as `text`, or an image (JSON base64 `image` "
                               "or multipart `file`)")
    return None if has_image else (fields, media == "application/json")


EmbeddingCall = (ModelCall[RetrievalModel, TextEmbeddingRequest]
                 | ImageCall[RetrievalModel, RetrievalParams])


async def read_embedding_call(request: Request, state: StateDep) -> AsyncIterator[EmbeddingCall]:
    """A sentence (JSON or form `text`) or an image (JSON `image` or multipart `file`)."""
    with state.track() as tracker:
        state.check_accepting()
        text_fields = await _text_fields(request)
        if text_fields is not None:
            fields, from_json = text_fields
            text = validated(TextEmbeddingRequest, fields, from_json=from_json)
            yield ModelCall(request, text,
                            *resolve_model(state, tracker, text.model, RetrievalModel))
        else:
            data, params = await read_image_request(request, RetrievalParams)
            yield ImageCall(request, params,
                            *resolve_model(state, tracker, params.model, RetrievalModel),
                            data, state.settings.max_image_pixels)


async def read_image_search(request: Request) -> ImageSearchRequest:
    return await read_json_request(request, ImageSearchRequest)


@dataclass
class ImageQuery:
    """Builds the query of an image call in a worker thread (`compute_prepared`), keeping
    the image's domain score for the answer."""

    call: ImageCall[RetrievalModel, Any]
    search: dict[str, Any]
    domain: DomainScore | None = None

    def __call__(self) -> Query:
        image = self.call.pipeline.preprocess(self.call.decode_image())
        self.domain = self.call.pipeline.domain_score(image)
        return Query(image=image, **self.search)


# ---------------------------------------------------------------------------- routes


@router.post("/embeddings", response_model=EmbeddingResponse, response_model_exclude_none=True,
             openapi_extra={"requestBody": image_request_body(
                 TextEmbeddingRequest, TextEmbeddingRequest, ImageEmbeddingRequest,
                 image_optional=True)},
             responses=error_responses(400, 401, 404, 413, 415, 422, 503, 504))
async def create_embedding(
        call: Annotated[EmbeddingCall, Depends(read_embedding_call)]) -> EmbeddingResponse:
    """Embed a sentence or an image into the retrieval model's joint space.

    Send JSON `{"text": ...}`, JSON `{"image": base64}`, or a form: multipart with the
    image as `file`, or a `text` field. Embeddings have unit length: the dot product of
    two of them is their cosine similarity, the score the search endpoints rank by.
    """
    unknown, domain = None, None
    if isinstance(call, ImageCall):
        query = ImageQuery(call, {})
        result: QueryResult = await call.compute_prepared(query)
        domain = query.domain
    else:
        query = Query(text=call.pipeline.text_query(call.params.text))
        result = await call.compute(query)
        unknown = list(query.text.unknown) if query.text else None
    return EmbeddingResponse(model=call.key, embedding=result.embedding.tolist(),
                             dimensions=int(result.embedding.shape[0]),
                             unknown_words=unknown or None, domain=domain_out(domain))


ImageSearchCall = Annotated[ModelCall[RetrievalModel, ImageSearchRequest],
                            Depends(json_call(read_image_search, RetrievalModel))]


@router.post("/retrieval/images", response_model=ImageSearchResponse,
             response_model_exclude_none=True, responses=RESPONSES,
             openapi_extra={"requestBody": json_request_body(ImageSearchRequest)})
async def search_images(call: ImageSearchCall) -> ImageSearchResponse:
    """Rank the model's image gallery against a sentence (text-to-image retrieval).

    `top_k` hits after the first `offset` (paging): offset 10 with top_k 10 is the second
    page of ten. Each hit carries the gallery entry's id and file name.
    """
    model, body = call.pipeline, call.params
    model.check_search("images", body.top_k, body.offset)
    query = Query(text=model.text_query(body.text), search="images", top_k=body.top_k,
                  offset=body.offset)
    result: QueryResult = await call.compute(query)
    hits = [ImageHit(id=h.entry["id"], file=h.entry["file"], score=h.score)
            for h in result.hits]
    return ImageSearchResponse(model=call.key, results=hits,
                               unknown_words=list(query.text.unknown) or None)


CaptionSearchCall = Annotated[ImageCall[RetrievalModel, CaptionSearchParams],
                              Depends(image_call(CaptionSearchParams, RetrievalModel))]


@router.post("/retrieval/captions", response_model=CaptionSearchResponse, responses=RESPONSES,
             openapi_extra={"requestBody": image_request_body(CaptionSearchParams,
                                                              CaptionSearchJSONRequest)})
async def search_captions(call: CaptionSearchCall) -> CaptionSearchResponse:
    """Rank the model's sentence gallery against an image (image-to-text retrieval).

    Send the image as multipart `file` (`curl -F file=@cat.png -F top_k=3 ...`) or as
    JSON with the image base64-encoded in `image`.
    """
    top_k, offset = call.params.top_k, call.params.offset
    call.pipeline.check_search("captions", top_k, offset)
    query = ImageQuery(call, {"search": "captions", "top_k": top_k, "offset": offset})
    result: QueryResult = await call.compute_prepared(query)
    hits = [CaptionHit(text=h.entry["text"], image_id=h.entry["image_id"], score=h.score)
            for h in result.hits]
    return CaptionSearchResponse(model=call.key, results=hits, domain=domain_out(query.domain))
