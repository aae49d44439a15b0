"""POST /v1/alignments: an image and a sentence in, the sentence's segments and regions out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.domain import DomainScore
from service.images import to_rgb
from service.pipelines.alignment import AlignmentModel, AlignmentRequest, AlignmentResult
from service.routers.deps import ImageCall, image_call, require_api_key
from service.schemas import (
    AlignmentJSONRequest,
    AlignmentParams,
    AlignmentResponse,
    SegmentOut,
    domain_out,
    error_responses,
    image_request_body,
)

TASK = "alignment"  # of the models that answer this router's requests
router = APIRouter(prefix="/v1", tags=["alignments"], dependencies=[Depends(require_api_key)])

AlignmentCall = Annotated[ImageCall[AlignmentModel, AlignmentParams],
                          Depends(image_call(AlignmentParams, AlignmentModel))]


def alignment_response(model: str, result: AlignmentResult, domain: DomainScore | None = None
                       ) -> AlignmentResponse:
    segments = [SegmentOut(text=s.text, start=s.start, end=s.end, box=s.box, score=s.score)
                for s in result.segments]
    return AlignmentResponse(model=model, sentence=" ".join(result.words), score=result.score,
                             segments=segments, domain=domain_out(domain))


@router.post("/alignments", response_model=AlignmentResponse,
             openapi_extra={"requestBody": image_request_body(AlignmentParams,
                                                              AlignmentJSONRequest)},
             responses=error_responses(400, 401, 404, 413, 415, 422, 503, 504))
async def create_alignment(call: AlignmentCall) -> AlignmentResponse:
    """Align the snippets of a sentence to regions of an image.

    Send the image as multipart `file` with `sentence` (and optionally `beta`, `model`)
    as form fields (`curl -F file=@scene.png -F sentence="a red circle" .../v1/alignments`),
    or as JSON with the image base64-encoded in `image`. Each word gets a region by the
    exact maximiser of the paper's chain MRF; the segments are the runs of words that
    share a region. Words outside the model's vocabulary are refused with 422.
    """
    model = call.pipeline
    text = model.encode_sentence(call.params.sentence)
    beta = model.beta(call.params.beta)

    domain = None

    def prepare() -> AlignmentRequest:
        nonlocal domain
        image = to_rgb(call.decode_image())
        array = model.preprocess(image)
        domain = model.domain_score(array)
        return AlignmentRequest(array, image.size, text, beta)

    result: AlignmentResult = await call.compute_prepared(prepare)
    return alignment_response(call.key, result, domain)
