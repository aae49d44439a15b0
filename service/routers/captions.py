"""POST /v1/captions: an image in, beam-searched captions out (batched across requests)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.pipelines.caption import CaptionModel, CaptionRequest, CaptionResult
from service.routers.deps import ImageCall, image_call, require_api_key
from service.schemas import (
    CaptionJSONRequest,
    CaptionOut,
    CaptionParams,
    CaptionResponse,
    WordAttention,
    error_responses,
    image_request_body,
)

router = APIRouter(prefix="/v1", tags=["captions"], dependencies=[Depends(require_api_key)])

CaptionCall = Annotated[ImageCall[CaptionModel, CaptionParams],
                        Depends(image_call(CaptionParams, CaptionModel))]


def caption_response(model: str, result: CaptionResult) -> CaptionResponse:
    captions = [CaptionOut(text=c.text, log_prob=c.log_prob) for c in result.captions]
    attention = None
    if any(c.attention is not None for c in result.captions):
        attention = [[WordAttention(word=w, weights=a.tolist())
                      for w, a in zip(c.words, c.attention, strict=True)]
                     for c in result.captions if c.attention is not None]
    return CaptionResponse(model=model, captions=captions, attention=attention)


@router.post("/captions", response_model=CaptionResponse, response_model_exclude_none=True,
             openapi_extra={"requestBody": image_request_body(CaptionParams,
                                                              CaptionJSONRequest)},
             responses=error_responses(400, 401, 404, 413, 415, 422, 503, 504))
async def create_captions(call: CaptionCall) -> CaptionResponse:
    """Caption an image with beam search.

    Send the image as multipart `file` with the parameters as form fields
    (`curl -F file=@cat.png -F beam_size=5 .../v1/captions`), or as JSON with the
    image base64-encoded in `image`. Requests to the same model are batched together;
    each still gets exactly the captions it would get alone.
    """
    model, p = call.pipeline, call.params
    search = model.params(beam_size=p.beam_size, max_length=p.max_length,
                          length_penalty=p.length_penalty, num_captions=p.num_captions,
                          return_attention=p.return_attention)
    result: CaptionResult = await call.compute_prepared(
        lambda: CaptionRequest(model.preprocess(call.decode_image()), search))
    return caption_response(call.key, result)
