"""POST /v1/alignments: an image and a sentence in, the sentence's segments and regions out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from service.images import decode_image, to_rgb
from service.pipelines.alignment import AlignmentModel, AlignmentRequest, AlignmentResult
from service.routers.deps import (
    StateDep,
    read_image_request,
    require_api_key,
    unless_disconnected,
)
from service.schemas import MODEL_FIELD_DOC, error_responses
from service.text import EncodedText

router = APIRouter(prefix="/v1", tags=["alignments"], dependencies=[Depends(require_api_key)])


class AlignmentParams(BaseModel):
    """Parameters of /v1/alignments; an omitted beta takes the bundle's default."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description=MODEL_FIELD_DOC, examples=["align-brnn"])
    sentence: str = Field(min_length=1, max_length=1000, description="the sentence to align",
                          examples=["a red circle left of a blue square"])
    beta: float | None = Field(
        None, ge=0, allow_inf_nan=False, examples=[2.0],
        description="bonus for giving neighbouring words the same region: 0 aligns each word "
                    "on its own, a large value the whole sentence to one region")


class AlignmentJSONRequest(AlignmentParams):
    """The JSON form of /v1/alignments: the image travels base64-encoded."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"image": "iVBORw0KGgoAAAANSUhEUgAA...",
                                         "sentence": "a red circle left of a blue square",
                                         "beta": 2.0}]})

    image: str = Field(description="the image file, base64-encoded (a data: URL is accepted)")


class SegmentOut(BaseModel):
    text: str = Field(examples=["a red circle"])
    start: int = Field(description="index of the segment's first word", examples=[0])
    end: int = Field(description="index one past the segment's last word", examples=[3])
    box: list[float] = Field(description="[x0, y0, x1, y1] of the region, in pixels of the "
                             "image as sent", examples=[[4.0, 10.5, 22.0, 28.0]])
    score: float = Field(description="sum over the segment's words of the region-word "
                         "score v_i^T s_t", examples=[7.3])


class AlignmentResponse(BaseModel):
    model: str = Field(description="the bundle that answered, name/version",
                       examples=["align-brnn/1"])
    sentence: str = Field(description="the sentence's words as the model read them",
                          examples=["a red circle left of a blue square"])
    score: float = Field(description="image-sentence score S_kl = sum_t max_i v_i^T s_t "
                         "(Eq. 8 of Karpathy & Fei-Fei 2015)", examples=[15.2])
    segments: list[SegmentOut]


_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["file", "sentence"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the image file"},
        **{name: {k: v for k, v in prop.items() if k != "default"}
           for name, prop in AlignmentParams.model_json_schema()["properties"].items()},
    },
}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        "application/json": {"schema": AlignmentJSONRequest.model_json_schema()},
    },
}


def _request(model: AlignmentModel, data: bytes, max_pixels: int, text: EncodedText,
             beta: float) -> AlignmentRequest:
    image = to_rgb(decode_image(data, max_pixels=max_pixels))
    return AlignmentRequest(model.preprocess(image), image.size, text, beta)


def alignment_response(model: str, result: AlignmentResult) -> AlignmentResponse:
    segments = [SegmentOut(text=s.text, start=s.start, end=s.end, box=s.box, score=s.score)
                for s in result.segments]
    return AlignmentResponse(model=model, sentence=" ".join(result.words), score=result.score,
                             segments=segments)


@router.post("/alignments", response_model=AlignmentResponse,
             openapi_extra={"requestBody": _REQUEST_BODY},
             responses=error_responses(400, 401, 404, 413, 415, 422, 503, 504))
async def create_alignment(request: Request, state: StateDep) -> AlignmentResponse:
    """Align the snippets of a sentence to regions of an image.

    Send the image as multipart `file` with `sentence` (and optionally `beta`, `model`)
    as form fields (`curl -F file=@scene.png -F sentence="a red circle" .../v1/alignments`),
    or as JSON with the image base64-encoded in `image`. Each word gets a region by the
    exact maximiser of the paper's chain MRF; the segments are the runs of words that
    share a region. Words outside the model's vocabulary are refused with 422.
    """
    with state.track() as tracker:
        state.check_accepting()
        data, params = await read_image_request(request, AlignmentParams)
        served = state.resolve(params.model, "alignment")
        tracker.model = served.key
        model: AlignmentModel = served.pipeline
        text = model.encode_sentence(params.sentence)
        beta = model.beta(params.beta)
        with served.batcher.admission() as submit:
            work = await run_in_threadpool(_request, model, data,
                                           state.settings.max_image_pixels, text, beta)
            result = await unless_disconnected(request, submit(work))
        return alignment_response(served.key, result)
