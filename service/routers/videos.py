"""POST /v1/videos/activities and /v1/videos/captions: a clip in, labels or descriptions out.

A clip travels as multipart form data (the clip file as `file`, or its frames as
repeated `frames` parts, the parameters as form fields) or as JSON (`video`: the clip
file base64-encoded, or `frames`: a list of base64 images). Like an image, it is
decoded only once the model's queue has admitted the request; service/videos.py
says which files are read and what the limits are.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from service.errors import BadRequest, InvalidParameter, UnsupportedMediaType
from service.pipelines.activity import ActivityModel, ActivityResult
from service.pipelines.base import Pipeline
from service.pipelines.caption import CaptionResult
from service.pipelines.video_caption import VideoCaptionModel
from service.routers.deps import (
    ModelCall,
    StateDep,
    json_object,
    media_type,
    require_api_key,
    resolve_model,
    single_fields,
    validated,
)
from service.schemas import (
    MIN_CLIP_FRAMES,
    CaptionOut,
    FrameActivitiesOut,
    LabelScoreOut,
    ModelParams,
    VideoActivityJSONRequest,
    VideoActivityParams,
    VideoActivityResponse,
    VideoCaptionJSONRequest,
    VideoCaptionParams,
    VideoCaptionResponse,
    error_responses,
)
from service.videos import VideoLimits, decode_clip, decode_frames

# the task of the models that answer each endpoint
TASKS = {"/v1/videos/activities": "activity", "/v1/videos/captions": "video-caption"}

router = APIRouter(prefix="/v1/videos", tags=["videos"], dependencies=[Depends(require_api_key)])

PipelineT = TypeVar("PipelineT", bound=Pipeline[Any, Any])
ParamsT = TypeVar("ParamsT", bound=ModelParams)


@dataclass(frozen=True)
class Clip:
    """An uploaded clip, not yet decoded: one file, or its frames as image files."""

    file: bytes | None
    frames: list[bytes]

    def decode(self, size: int, limits: VideoLimits) -> np.ndarray:
        """uint8 (n, size, size, 3); blocking, call it in `compute_prepared`."""
        if self.file is not None:
            return decode_clip(self.file, size, limits)
        return decode_frames(self.frames, size, limits)


def base64_file(text: str, field: str) -> bytes:
    """A file sent base64-encoded in JSON (a data: URL is accepted); 400 if not base64."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field}: not valid base64") from None


def one_clip(file: bytes | None, frames: list[bytes]) -> Clip:
    if (file is None) == (not frames):
        raise InvalidParameter("send the clip as one file ('file', or 'video' in JSON) or as "
                               "its frames ('frames'), not both and not neither")
    return Clip(file, frames)


async def read_video_request(request: Request, params: type[ParamsT], max_frames: int
                             ) -> tuple[Clip, ParamsT]:
    """The clip and the validated parameters of a multipart or JSON request."""
    media = media_type(request)
    if media == "multipart/form-data":
        form = await request.form(max_files=max_frames + 1, max_fields=32)
        try:
            parts = form.multi_items()
            uploads = {key: [v for k, v in parts if k == key] for key in ("file", "frames")}
            if any(isinstance(v, str) for values in uploads.values() for v in values) or \
                    len(uploads["file"]) > 1:
                raise InvalidParameter("file, frames: send files (one 'file', or 'frames' "
                                       "parts), not text fields")
            file = await uploads["file"][0].read() if uploads["file"] else None
            frames = [await upload.read() for upload in uploads["frames"]]
            fields = single_fields(parts, skip=tuple(uploads))
        finally:
            await form.close()
    elif media == "application/json":
        body = await json_object(request)
        video, images = body.pop("video", None), body.pop("frames", None)
        if video is not None and not isinstance(video, str):
            raise InvalidParameter("video: the clip file encoded as a base64 string")
        if images is not None and (not isinstance(images, list)
                                   or not all(isinstance(i, str) for i in images)):
            raise InvalidParameter("frames: a list of image files, each a base64 string")
        file = None if video is None else base64_file(video, "video")
        frames = [base64_file(image, "frames") for image in images or []]
        fields = body
    else:
        raise UnsupportedMediaType("send multipart/form-data (the clip as 'file', or its "
                                   "frames as 'frames') or application/json ('video' or "
                                   f"'frames' base64), not {media or 'no content type'}")
    clip = one_clip(file, frames)
    # JSON values have their JSON type (0 is no boolean); form fields are text (deps.validated)
    return clip, validated(params, fields, from_json=media == "application/json")


@dataclass(frozen=True)
class VideoCall(ModelCall[PipelineT, ParamsT]):
    """A model call that carries a clip, not yet decoded."""

    clip: Clip
    limits: VideoLimits


def video_call(params: type[ParamsT], kind: type[PipelineT]
               ) -> Callable[..., AsyncIterator[VideoCall[PipelineT, ParamsT]]]:
    """The dependency of an endpoint that reads a clip and `params`, answered by `kind`."""

    async def read_video_call(request: Request, state: StateDep
                              ) -> AsyncIterator[VideoCall[PipelineT, ParamsT]]:
        with state.track() as tracker:
            state.check_accepting()
            settings = state.settings
            limits = VideoLimits(max_frames=settings.max_video_frames,
                                 max_seconds=settings.max_video_seconds,
                                 max_pixels=settings.max_image_pixels)
            clip, values = await read_video_request(request, params, limits.max_frames)
            served, pipeline = resolve_model(state, tracker, values.model, kind)
            yield VideoCall(request, values, served, pipeline, clip, limits)

    return read_video_call


def video_request_body(form: type[BaseModel], json_form: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI `requestBody`: multipart `file` or repeated `frames` plus the fields of
    `form` (without defaults, so a form filled in /docs sends only what was set), or JSON."""
    schema = form.model_json_schema()
    binary = {"type": "string", "format": "binary"}
    multipart = {"type": "object", "properties": {
        "file": {**binary, "description": "the clip file: an animated GIF, APNG or WebP, an "
                                          "MP4 or a WebM"},
        "frames": {"type": "array", "items": binary, "minItems": MIN_CLIP_FRAMES,
                   "description": "or the clip as its frames, in order (repeat the part)"},
        **{name: {k: v for k, v in prop.items() if k != "default"}
           for name, prop in schema["properties"].items()}},
        # one clip: the file or its frames, not both and not neither
        "oneOf": [{"required": ["file"]}, {"required": ["frames"]}]}
    return {"required": True, "content": {
        "multipart/form-data": {"schema": multipart},
        "application/json": {"schema": json_form.model_json_schema()}}}


ActivityCall = Annotated[VideoCall[ActivityModel, VideoActivityParams],
                         Depends(video_call(VideoActivityParams, ActivityModel))]
VideoCaptionCall = Annotated[VideoCall[VideoCaptionModel, VideoCaptionParams],
                             Depends(video_call(VideoCaptionParams, VideoCaptionModel))]
ERRORS = error_responses(400, 401, 404, 413, 415, 422, 503, 504)


def labels(scores: list) -> list[LabelScoreOut]:
    return [LabelScoreOut(label=s.label, score=s.score) for s in scores]


@router.post("/activities", response_model=VideoActivityResponse,
             response_model_exclude_none=True, responses=ERRORS,
             openapi_extra={"requestBody": video_request_body(VideoActivityParams,
                                                              VideoActivityJSONRequest)})
async def recognise_activities(call: ActivityCall) -> VideoActivityResponse:
    """What happens in a clip: the activity labels with their probabilities.

    Send the clip as multipart `file` (`curl -F file=@clip.mp4 -F top_k=3
    .../v1/videos/activities`), as repeated `frames` images, or as JSON (`video` or
    `frames`, base64). The clip is sampled to the model's frames, evenly over its length.
    LRCN reads the frames in order (an LSTM over per-frame CNN features) and averages its
    per-frame predictions; `per_frame: true` returns them too. Requests to the same model
    are batched together.
    """
    model, p = call.pipeline, call.params
    top_k = model.top_k(p.top_k)  # a bad value is refused before the clip is decoded
    counted: dict[str, int] = {}  # frames of the clip as sent, once decoded

    def prepare() -> Any:
        frames = call.clip.decode(model.image_size, call.limits)
        counted["frames"] = len(frames)
        return model.request(frames, top_k=top_k, per_frame=p.per_frame)

    result: ActivityResult = await call.compute_prepared(prepare)
    per_frame = None if result.frames is None else [
        FrameActivitiesOut(frame=f.frame, activities=labels(f.activities)) for f in result.frames]
    return VideoActivityResponse(model=call.key, num_frames=counted["frames"],
                                 sampled_frames=model.num_frames,
                                 activities=labels(result.activities), per_frame=per_frame)


@router.post("/captions", response_model=VideoCaptionResponse, responses=ERRORS,
             openapi_extra={"requestBody": video_request_body(VideoCaptionParams,
                                                              VideoCaptionJSONRequest)})
async def describe_video(call: VideoCaptionCall) -> VideoCaptionResponse:
    """Describe a clip in words, with beam search: who does what.

    Send the clip as multipart `file`, as repeated `frames`, or as JSON (`video` or
    `frames`, base64); `beam_size`, `max_length`, `length_penalty` and `num_captions` work
    as for /v1/captions. The clip is sampled to the model's frames, evenly over its length.
    """
    model, p = call.pipeline, call.params
    params = model.search_params(beam_size=p.beam_size, max_length=p.max_length,
                                 length_penalty=p.length_penalty, num_captions=p.num_captions)
    counted: dict[str, int] = {}  # frames of the clip as sent, once decoded

    def prepare() -> Any:
        frames = call.clip.decode(model.image_size, call.limits)
        counted["frames"] = len(frames)
        return model.request(frames, params)

    result: CaptionResult = await call.compute_prepared(prepare)
    captions = [CaptionOut(text=c.text, log_prob=c.log_prob) for c in result.captions]
    return VideoCaptionResponse(model=call.key, num_frames=counted["frames"],
                                sampled_frames=model.num_frames, captions=captions)
