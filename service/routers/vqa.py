"""POST /v1/vqa: an image and a question in, ranked answers out (batched across requests)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.domain import DomainScore
from service.pipelines.vqa import VqaModel, VqaRequest, VqaResult
from service.routers.deps import ImageCall, image_call, require_api_key
from service.schemas import (
    AnswerOut,
    RegionAttention,
    VqaJSONRequest,
    VqaParams,
    VqaResponse,
    domain_out,
    error_responses,
    image_request_body,
)

TASK = "vqa"  # of the models that answer this router's requests
router = APIRouter(prefix="/v1", tags=["vqa"], dependencies=[Depends(require_api_key)])

VqaCall = Annotated[ImageCall[VqaModel, VqaParams], Depends(image_call(VqaParams, VqaModel))]


def vqa_response(model: str, question: str, result: VqaResult, size: tuple[int, int],
                 domain: DomainScore | None = None) -> VqaResponse:
    attention = None
    if result.attention is not None:
        attention = [RegionAttention(box=r.box_in_pixels(*size), weight=r.weight)
                     for r in result.attention]
    return VqaResponse(model=model, question=question,
                       answers=[AnswerOut(answer=a.answer, score=a.score)
                                for a in result.answers],
                       attention=attention, domain=domain_out(domain))


@router.post("/vqa", response_model=VqaResponse, response_model_exclude_none=True,
             openapi_extra={"requestBody": image_request_body(VqaParams, VqaJSONRequest)},
             responses=error_responses(400, 401, 404, 413, 415, 422, 503, 504))
async def answer_question(call: VqaCall) -> VqaResponse:
    """Answer a question about an image (Bottom-Up and Top-Down attention).

    Send the image as multipart `file` with the question and options as form fields
    (`curl -F file=@scene.png -F question="what color is the circle?" .../v1/vqa`), or
    as JSON with the image base64-encoded in `image`. A question with words the model
    does not know is refused with 422 naming them. Requests to the same model are
    batched together; each gets exactly the answer it would get alone.
    """
    model = call.pipeline
    question = model.encode_question(call.params.question)
    params = model.params(top_k=call.params.top_k,
                          return_attention=call.params.return_attention)
    size = (0, 0)  # of the image as sent: boxes are answered in its pixels
    domain = None

    def prepare() -> VqaRequest:
        nonlocal size, domain
        image = call.decode_image()
        size = image.size
        array = model.preprocess(image)
        domain = model.domain_score(array)
        return VqaRequest(array, question, params)

    result: VqaResult = await call.compute_prepared(prepare)
    return vqa_response(call.key, call.params.question, result, size, domain)
