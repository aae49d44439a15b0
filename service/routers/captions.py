"""POST /v1/captions: an image in, beam-searched captions out (batched across requests)."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from service.images import decode_image
from service.pipelines.caption import CaptionModel, CaptionRequest, CaptionResult
from service.routers.deps import (
    StateDep,
    read_image_request,
    require_api_key,
    unless_disconnected,
)
from service.schemas import (
    CaptionJSONRequest,
    CaptionOut,
    CaptionParams,
    CaptionResponse,
    WordAttention,
    error_responses,
)

router = APIRouter(prefix="/v1", tags=["captions"], dependencies=[Depends(require_api_key)])

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the image file"},
        **{name: {k: v for k, v in prop.items() if k != "default"}
           for name, prop in CaptionParams.model_json_schema()["properties"].items()},
    },
}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        "application/json": {"schema": CaptionJSONRequest.model_json_schema()},
    },
}


def _encoder_input(model: CaptionModel, data: bytes, max_pixels: int) -> np.ndarray:
    return model.preprocess(decode_image(data, max_pixels=max_pixels))


def caption_response(model: str, result: CaptionResult) -> CaptionResponse:
    captions = [CaptionOut(text=c.text, log_prob=c.log_prob) for c in result.captions]
    attention = None
    if any(c.attention is not None for c in result.captions):
        attention = [[WordAttention(word=w, weights=a.tolist())
                      for w, a in zip(c.words, c.attention, strict=True)]
                     for c in result.captions if c.attention is not None]
    return CaptionResponse(model=model, captions=captions, attention=attention)


@router.post("/captions", response_model=CaptionResponse, response_model_exclude_none=True,
             openapi_extra={"requestBody": _REQUEST_BODY},
             responses=error_responses(400, 401, 404, 413, 415, 422, 503, 504))
async def create_captions(request: Request, state: StateDep) -> CaptionResponse:
    """Caption an image with beam search.

    Send the image as multipart `file` with the parameters as form fields
    (`curl -F file=@cat.png -F beam_size=5 .../v1/captions`), or as JSON with the
    image base64-encoded in `image`. Requests to the same model are batched together;
    each still gets exactly the captions it would get alone.
    """
    with state.track() as tracker:
        state.check_accepting()
        data, params = await read_image_request(request, CaptionParams)
        served = state.resolve(params.model, "caption")
        tracker.model = served.key
        model: CaptionModel = served.pipeline
        search = model.params(beam_size=params.beam_size, max_length=params.max_length,
                              length_penalty=params.length_penalty,
                              num_captions=params.num_captions,
                              return_attention=params.return_attention)
        with served.batcher.admission() as submit:
            image = await run_in_threadpool(_encoder_input, model, data,
                                            state.settings.max_image_pixels)
            result = await unless_disconnected(request, submit(CaptionRequest(image, search)))
        return caption_response(served.key, result)
