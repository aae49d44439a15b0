"""POST /v1/images/generations: a text prompt in, generated images out (batched).

The body follows the shape users know from other image APIs: JSON `{"prompt", "model",
"n", "seed", "response_format": "b64_json"}` -> `{"created", "model", "seed", "data":
[{"b64_json"}]}`. With `Accept: image/png` (and n = 1) the answer is the PNG itself,
its seed in the `X-Seed` header. The same prompt, n and seed give the same images,
whatever else is batched with the request.
"""

from __future__ import annotations

import base64
import time
from typing import Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.errors import InvalidParameter
from service.pipelines.base import MAX_SEED
from service.pipelines.generation import MAX_IMAGES_PER_REQUEST, GenerationModel
from service.routers.deps import (
    StateDep,
    read_json_request,
    require_api_key,
    unless_disconnected,
)
from service.schemas import MODEL_FIELD_DOC, error_responses

router = APIRouter(prefix="/v1", tags=["images"], dependencies=[Depends(require_api_key)])

PNG = "image/png"


class GenerationParams(BaseModel):
    """The JSON body of /v1/images/generations."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"prompt": "a red circle left of a blue square",
                                         "model": "gan-int-cls", "n": 2, "seed": 7}]})

    prompt: str = Field(description="what to draw, in the words of the training captions; at "
                        "most the model's max_prompt_length characters (its manifest's "
                        "`inference`; 64 for the committed models)")
    model: str | None = Field(None, description=MODEL_FIELD_DOC, examples=["gan-int-cls"])
    n: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST, description="images to generate")
    seed: int | None = Field(None, ge=0, le=MAX_SEED,
                             description="seed of the noise; omitted: drawn at random and "
                             "returned")
    response_format: Literal["b64_json"] = Field("b64_json",
                                                 description="images as base64-encoded PNG")


class GeneratedImage(BaseModel):
    b64_json: str = Field(description="a PNG, base64-encoded", examples=["iVBORw0KGgo..."])


class GenerationResponse(BaseModel):
    created: int = Field(description="Unix time of the answer", examples=[1767225600])
    model: str = Field(description="the bundle that answered, name/version",
                       examples=["gan-int-cls/1"])
    seed: int = Field(description="the seed the images were drawn with", examples=[7])
    data: list[GeneratedImage]


async def read_params(request: Request) -> GenerationParams:
    """The validated JSON body (415 for another content type, 400 for malformed JSON)."""
    return await read_json_request(request, GenerationParams)


def wants_png(request: Request) -> bool:
    """Accept names image/png and not JSON: answer with the PNG itself."""
    accepted = {part.split(";")[0].strip().lower()
                for part in request.headers.get("accept", "").split(",")}
    return PNG in accepted and "application/json" not in accepted


_RESPONSES = {
    **error_responses(400, 401, 404, 413, 415, 422, 503, 504),
    200: {"content": {PNG: {"schema": {"type": "string", "format": "binary"}}},
          "description": "JSON by default; the PNG itself with `Accept: image/png` and n = 1"},
}


_REQUEST_BODY = {"required": True, "content": {
    "application/json": {"schema": GenerationParams.model_json_schema()}}}


@router.post("/images/generations", response_model=GenerationResponse, responses=_RESPONSES,
             openapi_extra={"requestBody": _REQUEST_BODY})
async def create_images(request: Request, state: StateDep) -> Response | GenerationResponse:
    """Generate images from a text prompt with a text-conditional GAN.

    `curl -H 'Content-Type: application/json' -d '{"prompt": "a red circle", "n": 2,
    "seed": 7}' .../v1/images/generations`. Prompts with characters outside the
    model's alphabet or words outside its training captions are refused (422), naming
    them. A request counts once toward the queue's max_batch_size, whatever its n.
    """
    with state.track() as tracker:
        state.check_accepting()
        params = await read_params(request)
        png = wants_png(request)
        if png and params.n != 1:
            raise InvalidParameter(f"n: Accept: image/png returns one image; ask for n = 1 or "
                                   f"accept application/json for {params.n} images")
        served = state.resolve(params.model, "generation")
        tracker.model = served.key
        model: GenerationModel = served.pipeline
        job = model.request(params.prompt, params.n, params.seed)
        with served.batcher.admission() as submit:
            result = await unless_disconnected(request, submit(job))
        if png:
            return Response(result.pngs[0], media_type=PNG, headers={"X-Seed": str(result.seed)})
        data = [GeneratedImage(b64_json=base64.b64encode(p).decode()) for p in result.pngs]
        return GenerationResponse(created=int(time.time()), model=served.key, seed=result.seed,
                                  data=data)
