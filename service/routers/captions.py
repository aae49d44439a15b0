"""POST /v1/captions: an image in, captions out (beam search or sampling, batched)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from service.domain import DomainScore
from service.pipelines.caption import (
    CaptionModel,
    CaptionRequest,
    CaptionResult,
    SampleParams,
    refuse_unused,
)
from service.routers.deps import ImageCall, image_call, require_api_key
from service.schemas import (
    BeamCaptionJSONRequest,
    BeamCaptionParams,
    CaptionOut,
    CaptionParams,
    CaptionResponse,
    SampleCaptionJSONRequest,
    SampleCaptionParams,
    WordAttention,
    domain_out,
    error_responses,
    image_request_body,
)

TASK = "caption"  # of the models that answer this router's requests
router = APIRouter(prefix="/v1", tags=["captions"], dependencies=[Depends(require_api_key)])

# The parameters that belong to the decoding method a request did not choose.
OTHER_METHOD = {"beam": ("temperature", "top_k", "top_p", "seed"),
                "sample": ("beam_size", "length_penalty")}

CaptionCall = Annotated[ImageCall[CaptionModel, CaptionParams],
                        Depends(image_call(CaptionParams, CaptionModel))]


def caption_response(model: str, result: CaptionResult, domain: DomainScore | None = None
                     ) -> CaptionResponse:
    captions = [CaptionOut(text=c.text, log_prob=c.log_prob) for c in result.captions]
    attention = None
    if any(c.attention is not None for c in result.captions):
        attention = [[WordAttention(word=w, weights=a.tolist())
                      for w, a in zip(c.words, c.attention, strict=True)]
                     for c in result.captions if c.attention is not None]
    return CaptionResponse(model=model, captions=captions, attention=attention,
                           domain=domain_out(domain))


@router.post("/captions", response_model=CaptionResponse, response_model_exclude_none=True,
             openapi_extra={"requestBody": image_request_body(
                 (BeamCaptionParams, SampleCaptionParams), BeamCaptionJSONRequest,
                 SampleCaptionJSONRequest)},
             responses=error_responses(400, 401, 404, 413, 415, 422, 503, 504))
async def create_captions(call: CaptionCall, response: Response) -> CaptionResponse:
    """Caption an image, with beam search (the default) or by sampling.

    Send the image as multipart `file` with the parameters as form fields
    (`curl -F file=@cat.png -F beam_size=5 .../v1/captions`), or as JSON with the
    image base64-encoded in `image`. `decoding: "sample"` draws captions with
    `temperature`, `top_k`, `top_p` and `seed`; the seed it drew with is returned in
    the `X-Seed` header. Requests to the same model are batched together; each still
    gets exactly the captions it would get alone.
    """
    model, p = call.pipeline, call.params
    # A parameter of the other method is refused even when sent as null: the OpenAPI
    # document's two forms do not have it.
    refuse_unused(p.decoding, **{name: "sent" for name in OTHER_METHOD[p.decoding]
                                 if name in p.model_fields_set})
    decoding = model.params(decoding=p.decoding, beam_size=p.beam_size,
                            max_length=p.max_length, length_penalty=p.length_penalty,
                            num_captions=p.num_captions, return_attention=p.return_attention,
                            temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                            seed=p.seed)
    domain = None

    def prepare() -> CaptionRequest:
        nonlocal domain
        image = model.preprocess(call.decode_image())
        domain = model.domain_score(image)
        return CaptionRequest(image, decoding)

    result: CaptionResult = await call.compute_prepared(prepare)
    if isinstance(decoding, SampleParams):
        response.headers["X-Seed"] = str(decoding.seed)
    return caption_response(call.key, result, domain)
