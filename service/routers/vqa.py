"""POST /v1/vqa: an image and a question in, ranked answers out (batched across requests)."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from service.images import decode_image
from service.pipelines.vqa import DEFAULT_TOP_K, MAX_TOP_K, VqaModel, VqaRequest, VqaResult
from service.routers.deps import (
    StateDep,
    read_image_request,
    require_api_key,
    unless_disconnected,
)
from service.schemas import MODEL_FIELD_DOC, error_responses

router = APIRouter(prefix="/v1", tags=["vqa"], dependencies=[Depends(require_api_key)])


class VqaParams(BaseModel):
    """Parameters of /v1/vqa besides the image."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=1000, description="the question, in words "
                          "the model was trained on", examples=["what color is the circle?"])
    model: str | None = Field(None, description=MODEL_FIELD_DOC, examples=["vqa-updown"])
    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, description="answers returned, "
                       "best first (at most the model's answer count)", examples=[3])
    return_attention: bool = Field(
        False, description="the attention weight of each image region, with its box")


class VqaJSONRequest(VqaParams):
    """The JSON form of /v1/vqa: the image travels base64-encoded."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"image": "iVBORw0KGgoAAAANSUhEUgAA...",
                                         "question": "how many circles are there?",
                                         "top_k": 3}]})

    image: str = Field(description="the image file, base64-encoded (a data: URL is accepted)")


class AnswerOut(BaseModel):
    answer: str = Field(examples=["red"])
    score: float = Field(description="sigmoid score in [0, 1] (answers are scored "
                         "independently, so the scores need not sum to 1)", examples=[0.97])


class RegionAttention(BaseModel):
    box: list[float] = Field(description="[x0, y0, x1, y1] in pixels of the uploaded image",
                             examples=[[12.0, 30.5, 28.0, 46.5]])
    weight: float = Field(description="attention weight; the weights of a response sum to 1",
                          examples=[0.81])


class VqaResponse(BaseModel):
    model: str = Field(description="the bundle that answered, name/version",
                       examples=["vqa-updown/1"])
    question: str = Field(examples=["what color is the circle?"])
    answers: list[AnswerOut]
    attention: list[RegionAttention] | None = Field(
        None, description="with return_attention: every region the model attended over, "
        "the whole image last")


_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["file", "question"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the image file"},
        **{name: {k: v for k, v in prop.items() if k != "default"}
           for name, prop in VqaParams.model_json_schema()["properties"].items()},
    },
}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        "application/json": {"schema": VqaJSONRequest.model_json_schema()},
    },
}


def _graph_input(model: VqaModel, data: bytes, max_pixels: int
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """The graph's image input and the uploaded image's (width, height)."""
    image = decode_image(data, max_pixels=max_pixels)
    return model.preprocess(image), image.size


def vqa_response(model: str, question: str, result: VqaResult, size: tuple[int, int]
                 ) -> VqaResponse:
    attention = None
    if result.attention is not None:
        attention = [RegionAttention(box=r.box_in_pixels(*size), weight=r.weight)
                     for r in result.attention]
    return VqaResponse(model=model, question=question,
                       answers=[AnswerOut(answer=a.answer, score=a.score)
                                for a in result.answers],
                       attention=attention)


@router.post("/vqa", response_model=VqaResponse, response_model_exclude_none=True,
             openapi_extra={"requestBody": _REQUEST_BODY},
             responses=error_responses(400, 401, 404, 413, 415, 422, 503, 504))
async def answer_question(request: Request, state: StateDep) -> VqaResponse:
    """Answer a question about an image (Bottom-Up and Top-Down attention).

    Send the image as multipart `file` with the question and options as form fields
    (`curl -F file=@scene.png -F question="what color is the circle?" .../v1/vqa`), or
    as JSON with the image base64-encoded in `image`. A question with words the model
    does not know is refused with 422 naming them. Requests to the same model are
    batched together; each gets exactly the answer it would get alone.
    """
    with state.track() as tracker:
        state.check_accepting()
        data, params = await read_image_request(request, VqaParams)
        served = state.resolve(params.model, "vqa")
        tracker.model = served.key
        model: VqaModel = served.pipeline
        question = model.encode_question(params.question)
        answer_params = model.params(top_k=params.top_k,
                                     return_attention=params.return_attention)
        with served.batcher.admission() as submit:
            image, size = await run_in_threadpool(_graph_input, model, data,
                                                  state.settings.max_image_pixels)
            result = await unless_disconnected(
                request, submit(VqaRequest(image, question, answer_params)))
        return vqa_response(served.key, params.question, result, size)
