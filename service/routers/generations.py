"""POST /v1/images/generations: a text prompt in, generated images out (batched).

The body follows the shape users know from other image APIs: JSON `{"prompt", "model",
"n", "seed", "response_format": "b64_json"}` -> `{"created", "model", "seed", "data":
[{"b64_json"}]}`. With `Accept: image/png` (and n = 1) the answer is the PNG itself,
its seed in the `X-Seed` header. The same prompt, n and seed give the same images,
whatever else is batched with the request. Any generation bundle answers: a GAN
(`GenerationModel`) or DALL-E (`DalleModel`, which also reads `candidates`,
`temperature`, `top_k` and `top_p`), both `TextToImage` pipelines.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from service.errors import InvalidParameter
from service.pipelines.generation import GenerationResult, TextToImage
from service.routers.deps import ModelCall, json_call, read_json_request, require_api_key
from service.schemas import (
    GeneratedImage,
    GenerationParams,
    GenerationResponse,
    error_responses,
    json_request_body,
    size_pixels,
)

TASK = "generation"  # of the models that answer this router's requests
router = APIRouter(prefix="/v1", tags=["images"], dependencies=[Depends(require_api_key)])

PNG = "image/png"
log = logging.getLogger("service")


def wants_png(request: Request) -> bool:
    """Accept names image/png and not JSON: answer with the PNG itself."""
    accepted = {part.split(";")[0].strip().lower()
                for part in request.headers.get("accept", "").split(",")}
    return PNG in accepted and "application/json" not in accepted


async def read_params(request: Request) -> GenerationParams:
    """The validated JSON body (415 for another content type, 400 for malformed JSON); a
    PNG answer holds one image, so n > 1 with `Accept: image/png` is refused."""
    params = await read_json_request(request, GenerationParams)
    if wants_png(request) and params.n != 1:
        raise InvalidParameter(f"n: Accept: image/png returns one image; ask for n = 1 or "
                               f"accept application/json for {params.n} images")
    return params


GenerationCall = Annotated[ModelCall[TextToImage, GenerationParams],
                           Depends(json_call(read_params, TextToImage))]

_RESPONSES = {
    **error_responses(400, 401, 404, 413, 415, 422, 503, 504),
    200: {"content": {PNG: {"schema": {"type": "string", "format": "binary"}}},
          "description": "JSON by default; the PNG itself with `Accept: image/png` and n = 1"},
}


@router.post("/images/generations", response_model=GenerationResponse, responses=_RESPONSES,
             openapi_extra={"requestBody": json_request_body(GenerationParams)})
async def create_images(request: Request, call: GenerationCall) -> Response | GenerationResponse:
    """Generate images from a text prompt with a text-conditional GAN or DALL-E.

    `curl -H 'Content-Type: application/json' -d '{"prompt": "a red circle", "n": 2,
    "seed": 7}' .../v1/images/generations`. Prompts with characters outside the
    model's alphabet or words outside its training captions are refused (422), naming
    them. A GAN request counts once toward the queue's max_batch_size, whatever its n;
    DALL-E decodes n * candidates sequences, which join and leave its running decode
    batch (max_batch_size sequences) between steps. Sampling settings (`candidates`,
    `temperature`, `top_k`, `top_p`) are for DALL-E; a GAN refuses them (422).

    OpenAI's clients work unchanged: `size` resizes the PNGs, `quality` may be "auto" or
    "standard", `user` is logged, and `style` (which glimpse cannot honour) is refused.
    """
    p = call.params
    job = call.pipeline.request(p.prompt, p.n, p.seed, p.sampling(), size=size_pixels(p.size))
    if p.user is not None:
        log.info("generation for user %r", p.user)
    result: GenerationResult = await call.compute(job)
    if wants_png(request):
        return Response(result.pngs[0], media_type=PNG, headers={"X-Seed": str(result.seed)})
    data = [GeneratedImage(b64_json=base64.b64encode(png).decode()) for png in result.pngs]
    return GenerationResponse(created=int(time.time()), model=call.key, seed=result.seed,
                              data=data)
