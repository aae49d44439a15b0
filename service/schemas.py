"""Request and response bodies of the HTTP API; their examples make /docs a usable manual.

One section per endpoint family, in the order of docs/service.md. An endpoint that
takes an image reads it as multipart `file` (its parameters as form fields) or as JSON
base64 `image`: its `*Params` model validates the parameters of both forms, its
`*JSONRequest` model documents the JSON form, and `image_request_body` builds the
OpenAPI description of both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.decoding import MAX_BEAM_SIZE
from service.pipelines.activity import MAX_TOP_K as MAX_ACTIVITY_TOP_K
from service.pipelines.base import MAX_SEED
from service.pipelines.caption import MAX_CAPTIONS, MAX_LENGTH, MAX_TEMPERATURE
from service.pipelines.dalle import MAX_CANDIDATES, MAX_ROWS_PER_REQUEST
from service.pipelines.dalle import MAX_TEMPERATURE as DALLE_MAX_TEMPERATURE
from service.pipelines.generation import MAX_IMAGES_PER_REQUEST, SamplingOptions
from service.pipelines.retrieval import MAX_SEARCH_DEPTH
from service.pipelines.retrieval import MAX_TOP_K as MAX_SEARCH_TOP_K
from service.pipelines.vqa import DEFAULT_TOP_K as DEFAULT_ANSWERS
from service.pipelines.vqa import MAX_TOP_K as MAX_ANSWERS
from service.videos import MIN_FRAMES as MIN_CLIP_FRAMES

MODEL_FIELD_DOC = ('"name" (its highest served version) or "name/version"; omitted: the '
                   "default model of the task (GLIMPSE_DEFAULT_MODELS, else the first name A-Z)")
IMAGE_FIELD_DOC = ("the image file (PNG, JPEG, GIF, BMP, TIFF, WebP, ...), base64-encoded; "
                   "a data: URL is accepted")
# A 32x32 PNG of a red circle on grey, so that the examples in /docs run as they are.
IMAGE_EXAMPLE = ("iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAAd0lEQVR42u2VsRHAIAhFDeeYqZzESa"
                 "wyaFqThieGIwV06ocHHujRey+eJsXZEhAPqER0jjEvr9Y+A7xCz5sQI6vR4akOIP5EIzvZEWVEm/L0"
                 "iT4n+ZeApZdA1QddES9CVYrZE2rE7A+rrCRHx//A1lc5yQlIwNNu/dEnMDXGE7kAAAAASUVORK5CYI"
                 "I=")
# What `base64.b64decode(validate=True)` reads, after an optional data: URL prefix.
BASE64_PATTERN = (r"^(data:[^,]*,)?(?:[A-Za-z0-9+/]{4})*"
                  r"(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")


# Text with no letter or digit has no word the models read: it is refused (422) whatever
# the model, so the document says so. (Which words: a model's vocabulary, in /docs.)
HAS_A_WORD = {"pattern": "[A-Za-z0-9]"}


def image_field() -> Any:
    """The JSON `image` field: a non-empty base64 string (the image itself is checked when
    decoded: 415 when it is not an image)."""
    return Field(min_length=4, pattern=BASE64_PATTERN, description=IMAGE_FIELD_DOC,
                 examples=[IMAGE_EXAMPLE], json_schema_extra={"contentEncoding": "base64",
                                    "contentMediaType": "image/*"})


class ModelParams(BaseModel):
    """What every inference request may say: the model to answer it (each endpoint's
    parameters extend this, with an example of its task's model)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description=MODEL_FIELD_DOC)


# ---------------------------------------------------------------------------- OpenAPI bodies


def image_request_body(form: type[BaseModel] | tuple[type[BaseModel], ...],
                       *json_forms: type[BaseModel],
                       image_optional: bool = False) -> dict[str, Any]:
    """The OpenAPI `requestBody` of an endpoint that reads multipart `file` plus the fields
    of `form`, or one of `json_forms` as JSON.

    Defaults are left out of the form's fields, so that a form filled in /docs sends only
    what its user set. With `image_optional` (a form that takes text instead), nothing in
    the form is required.
    """
    if isinstance(form, tuple):  # exclusive sets of fields: one multipart form each
        variants = [image_request_body(f, *json_forms)["content"]["multipart/form-data"]
                    ["schema"] for f in form]
        body = image_request_body(form[0], *json_forms)
        body["content"]["multipart/form-data"]["schema"] = {"oneOf": variants}
        return body
    schema = form.model_json_schema()
    fields = {name: form_field(prop) for name, prop in schema["properties"].items()}
    image_file = {"type": "string", "format": "binary", "contentMediaType": "image/*",
                  "description": "the image file"}
    required = ["file", *schema.get("required", [])]
    # Fields the server does not know are refused (422), so the form allows none.
    multipart: dict[str, Any] = {
        "type": "object",
        "required": required,
        "properties": {"file": image_file, **fields},
        "additionalProperties": False,
        "title": schema.get("title", "form"),
    }
    if image_optional:  # an image, or the form's text fields instead
        text_only = {k: v for k, v in fields.items()}
        multipart = {"oneOf": [
            {**multipart, "required": ["file"], "properties": {
                "file": image_file, **{k: v for k, v in fields.items() if k == "model"}},
             "title": "image"},
            {"type": "object", "required": schema.get("required", []),
             "properties": text_only, "additionalProperties": False, "title": "text"},
        ]}
    json_schemas = [m.model_json_schema() for m in json_forms]
    json_schema = json_schemas[0] if len(json_schemas) == 1 else {"oneOf": json_schemas}
    return {"required": True, "content": {"multipart/form-data": {"schema": multipart},
                                          "application/json": {"schema": json_schema}}}


def form_field(prop: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema property as a form field: no default (a form filled in /docs sends only
    what its user set) and no null (a form omits a field instead)."""
    prop = {k: v for k, v in prop.items() if k != "default"}
    variants = [v for v in prop.pop("anyOf", []) if v.get("type") != "null"]
    if len(variants) == 1:
        prop.update(variants[0])
    elif variants:
        prop["anyOf"] = variants
    return prop


def json_request_body(body: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI `requestBody` of an endpoint that reads a JSON `body` only."""
    return {"required": True, "content": {"application/json": {"schema":
                                                               body.model_json_schema()}}}


# ---------------------------------------------------------------------------- domain


class DomainOut(BaseModel):
    """How far the image lies from the images the model was trained on (service/domain.py)."""

    score: float = Field(description="Mahalanobis distance of the image's statistics from "
                         "those of the model's validation images", examples=[2.1])
    threshold: float = Field(description="the 99th percentile of the validation images' "
                             "distances", examples=[5.3])
    in_domain: bool = Field(description="score <= threshold; when false, the model has "
                            "never seen images like this one and its answer may be "
                            "meaningless", examples=[True])


DOMAIN_DOC = ("how far the image lies from the model's training images; absent for a "
              "model without domain statistics")


def domain_out(domain: Any) -> DomainOut | None:
    """The response field of a `service.domain.DomainScore` (or None)."""
    if domain is None:
        return None
    return DomainOut(score=domain.score, threshold=domain.threshold,
                     in_domain=domain.in_domain)


# ---------------------------------------------------------------------------- captions


class CaptionCommon(ModelParams):
    """What both decoding methods of /v1/captions read."""

    model: str | None = Field(None, description=MODEL_FIELD_DOC, examples=["caption-sat"])
    max_length: int | None = Field(None, ge=1, le=MAX_LENGTH,
                                   description="decoding steps, the final <eos> included",
                                   examples=[20])
    num_captions: int = Field(1, ge=1, le=MAX_CAPTIONS,
                              description="captions returned; with beam search <= beam_size",
                              examples=[1])
    return_attention: bool = Field(
        False, description="per-word attention maps (attention models only)")


class BeamCaptionParams(CaptionCommon):
    """Beam search (the default): the best captions first."""

    decoding: Literal["beam"] = Field("beam", description="beam search")
    beam_size: int | None = Field(None, ge=1, le=MAX_BEAM_SIZE,
                                  description="beams kept per step", examples=[3])
    length_penalty: float | None = Field(
        None, ge=0, le=10, examples=[0.0],
        description="GNMT alpha: captions rank by log_prob / ((5 + |Y|) / 6)^alpha")


class SampleCaptionParams(CaptionCommon):
    """Sampling: captions drawn at random from the model's distribution, in the order drawn."""

    decoding: Literal["sample"] = Field(description="sampling")
    temperature: float | None = Field(
        None, gt=0, le=MAX_TEMPERATURE, examples=[0.7],
        description="divides the log-probabilities; below 1 sharpens, above 1 flattens "
                    "(default 1)")
    top_k: int | None = Field(
        None, ge=0, examples=[5],
        description="draw among the k most likely words only (default 0: every word the step "
                    "graph returns, at most the bundle's decoding.top_k)")
    top_p: float | None = Field(
        None, gt=0, le=1, examples=[0.9],
        description="draw among the most likely words whose probabilities reach top_p "
                    "(nucleus sampling; default 1: no cut)")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, examples=[7],
        description="the same image and seed give the same captions; omitted: drawn at "
                    "random and returned in the X-Seed header")


class CaptionParams(BeamCaptionParams, SampleCaptionParams):
    """The parameters of /v1/captions as the server reads them; omitted ones take the
    bundle's defaults. The parameters of the method not chosen are refused (422), as the
    OpenAPI document's two forms (`BeamCaptionParams`, `SampleCaptionParams`) say."""

    decoding: Literal["beam", "sample"] = Field(
        "beam", description="beam: beam search, the best captions first; sample: captions "
                            "drawn at random from the model's distribution, in the order drawn")


class BeamCaptionJSONRequest(BeamCaptionParams):
    """The JSON form of /v1/captions with beam search: the image travels base64-encoded."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"image": IMAGE_EXAMPLE, "model": "caption-sat", "beam_size": 3, "num_captions": 2}]})

    image: str = image_field()


class SampleCaptionJSONRequest(SampleCaptionParams):
    """The JSON form of /v1/captions with sampling: the image travels base64-encoded."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"image": IMAGE_EXAMPLE, "decoding": "sample", "temperature": 0.7, "top_p": 0.9,
         "seed": 7, "num_captions": 3}]})

    image: str = image_field()


class CaptionOut(BaseModel):
    text: str = Field(examples=["a red circle left of a blue square"])
    log_prob: float = Field(description="sum of the token log-probabilities, <eos> included",
                            examples=[-2.31])


class WordAttention(BaseModel):
    word: str
    weights: list[list[float]] = Field(description="[grid_h][grid_w] attention weights")


class CaptionResponse(BaseModel):
    model: str = Field(description="the bundle that answered, name/version",
                       examples=["caption-sat/8"])
    captions: list[CaptionOut]
    attention: list[list[WordAttention]] | None = Field(
        None, description="with return_attention: for each caption, one map per word")
    domain: DomainOut | None = Field(None, description=DOMAIN_DOC)


# ---------------------------------------------------------------------------- vqa


class VqaParams(ModelParams):
    """Parameters of /v1/vqa besides the image."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=1000, json_schema_extra=HAS_A_WORD,
                          description="the question, in words "
                          "the model was trained on", examples=["what color is the circle?"])
    model: str | None = Field(None, description=MODEL_FIELD_DOC, examples=["vqa-updown"])
    top_k: int = Field(DEFAULT_ANSWERS, ge=1, le=MAX_ANSWERS, description="answers returned, "
                       "best first (at most the model's answer count)", examples=[3])
    return_attention: bool = Field(
        False, description="the attention weight of each image region, with its box")


class VqaJSONRequest(VqaParams):
    """The JSON form of /v1/vqa: the image travels base64-encoded."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"image": IMAGE_EXAMPLE,
                                         "question": "how many circles are there?",
                                         "top_k": 3}]})

    image: str = image_field()


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
                       examples=["vqa-updown/4"])
    question: str = Field(examples=["what color is the circle?"])
    answers: list[AnswerOut]
    attention: list[RegionAttention] | None = Field(
        None, description="with return_attention: every region the model attended over, "
        "the whole image last")
    domain: DomainOut | None = Field(None, description=DOMAIN_DOC)


# ---------------------------------------------------------------------------- alignments


class AlignmentParams(ModelParams):
    """Parameters of /v1/alignments; an omitted beta takes the bundle's default."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description=MODEL_FIELD_DOC, examples=["align-brnn"])
    sentence: str = Field(min_length=1, max_length=1000, json_schema_extra=HAS_A_WORD,
                          description="the sentence to align",
                          examples=["a red circle left of a blue square"])
    beta: float | None = Field(
        None, ge=0, allow_inf_nan=False, examples=[2.0],
        description="bonus for giving neighbouring words the same region: 0 aligns each word "
                    "on its own, a large value the whole sentence to one region")


class AlignmentJSONRequest(AlignmentParams):
    """The JSON form of /v1/alignments: the image travels base64-encoded."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"image": IMAGE_EXAMPLE,
                                         "sentence": "a red circle left of a blue square",
                                         "beta": 2.0}]})

    image: str = image_field()


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
                       examples=["align-brnn/2"])
    sentence: str = Field(description="the sentence's words as the model read them",
                          examples=["a red circle left of a blue square"])
    score: float = Field(description="image-sentence score S_kl = sum_t max_i v_i^T s_t "
                         "(Eq. 8 of Karpathy & Fei-Fei 2015)", examples=[15.2])
    segments: list[SegmentOut]
    domain: DomainOut | None = Field(None, description=DOMAIN_DOC)


# ---------------------------------------------------------------------------- retrieval

SEARCH_TOP_K_DOC = f"results returned, best first (1..{MAX_SEARCH_TOP_K})"
MAX_SEARCH_OFFSET = MAX_SEARCH_DEPTH - MAX_SEARCH_TOP_K  # any top_k may follow it
SEARCH_OFFSET_DOC = (f"results skipped before the top_k returned, for paging "
                     f"(0..{MAX_SEARCH_OFFSET}): offset 10 with top_k 10 is the second page")


def offset_field() -> Any:
    return Field(0, ge=0, le=MAX_SEARCH_OFFSET, description=SEARCH_OFFSET_DOC,
                 examples=[0, 10])


class RetrievalParams(ModelParams):
    model: str | None = Field(None, description=MODEL_FIELD_DOC, examples=["retrieval-vse"])


class TextEmbeddingRequest(RetrievalParams):
    text: str = Field(min_length=1, json_schema_extra=HAS_A_WORD, description="a sentence",
                      examples=["a red circle left of a blue square"])


class ImageEmbeddingRequest(RetrievalParams):
    """The JSON form of an image embedding: the image travels base64-encoded."""

    image: str = image_field()


class EmbeddingResponse(BaseModel):
    model: str = Field(examples=["retrieval-vse/2"])
    embedding: list[float] = Field(description="unit-length vector of the joint space")
    dimensions: int = Field(examples=[128])
    unknown_words: list[str] | None = Field(
        None, description="words outside the vocabulary, embedded as <unk>")
    domain: DomainOut | None = Field(None, description="for an image: " + DOMAIN_DOC)


class ImageSearchRequest(RetrievalParams):
    text: str = Field(min_length=1, json_schema_extra=HAS_A_WORD,
                      description="the sentence to find images for",
                      examples=["a small green star above a red circle"])
    top_k: int = Field(5, ge=1, le=MAX_SEARCH_TOP_K, description=SEARCH_TOP_K_DOC)
    offset: int = offset_field()


class CaptionSearchParams(RetrievalParams):
    top_k: int = Field(5, ge=1, le=MAX_SEARCH_TOP_K, description=SEARCH_TOP_K_DOC)
    offset: int = offset_field()


class CaptionSearchJSONRequest(CaptionSearchParams):
    image: str = image_field()


class ImageHit(BaseModel):
    id: int = Field(description="the image id of the gallery (dataset imgid or folder index)")
    file: str = Field(examples=["images/test/test_000042.png"])
    score: float = Field(description="cosine similarity", examples=[0.83])


class CaptionHit(BaseModel):
    text: str = Field(examples=["a small green star above a red circle"])
    image_id: int | None = Field(description="the image the sentence was written for")
    score: float = Field(description="cosine similarity", examples=[0.79])


class ImageSearchResponse(BaseModel):
    model: str = Field(examples=["retrieval-vse/2"])
    results: list[ImageHit]
    unknown_words: list[str] | None = Field(
        None, description="words outside the vocabulary, embedded as <unk>")


class CaptionSearchResponse(BaseModel):
    model: str = Field(examples=["retrieval-vse/2"])
    results: list[CaptionHit]
    domain: DomainOut | None = Field(None, description=DOMAIN_DOC)


# ---------------------------------------------------------------------------- generations

IMAGE_SIZES = (64, 128, 256, 512)
ImageSize = Literal["64x64", "128x128", "256x256", "512x512"]


def size_pixels(size: str | None) -> int | None:
    """The side of a "SxS" size, None for None."""
    return None if size is None else int(size.partition("x")[0])



class GenerationParams(ModelParams):
    """The JSON body of /v1/images/generations."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"prompt": "a large red circle",
                                         "model": "dalle", "n": 2, "seed": 7}]})

    # Declared, not enforced here: the pipeline answers an empty prompt "must not be empty".
    prompt: str = Field(json_schema_extra={"minLength": 1, **HAS_A_WORD},
                        examples=["a large red circle"],
                        description="what to draw, in the words of the training captions; at "
                        "most the model's max_prompt_length characters (its manifest's "
                        "`inference`; 64 for the committed models)")
    model: str | None = Field(None, description=MODEL_FIELD_DOC, examples=["dalle"])
    n: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST, description="images to generate")
    seed: int | None = Field(None, ge=0, le=MAX_SEED,
                             description="seed of the noise; omitted: drawn at random and "
                             "returned")
    response_format: Literal["b64_json"] = Field("b64_json",
                                                 description="images as base64-encoded PNG")
    # Token-sampling models (DALL-E) only; a GAN refuses them.
    candidates: int | None = Field(
        None, ge=1, le=MAX_CANDIDATES, examples=[4],
        description="DALL-E: samples drawn per returned image, the best kept by the model's "
                    f"reranker (default: the model's, 4 for the committed dalle); n * "
                    f"candidates <= {MAX_ROWS_PER_REQUEST}")
    temperature: float | None = Field(
        None, gt=0, le=DALLE_MAX_TEMPERATURE, examples=[1.0],
        description="DALL-E: divides the logits of each image code; below 1 sharpens, above 1 "
                    "flattens")
    top_k: int | None = Field(
        None, ge=0, examples=[64],
        description="DALL-E: draw each image code among the k most likely only (0, or k "
                    "at least the codebook's size: all)")
    top_p: float | None = Field(
        None, gt=0, le=1, examples=[0.9],
        description="DALL-E: draw each image code among the most likely whose probabilities "
                    "reach top_p (nucleus sampling; 1: no cut)")

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(temperature=self.temperature, top_k=self.top_k,
                               top_p=self.top_p, candidates=self.candidates)

    # The fields OpenAI's images API adds, accepted where glimpse can honour them, so that
    # its clients (the OpenAI SDK's `images.generate`) work unchanged.
    size: ImageSize | None = Field(
        None, description="side of the returned PNGs: the model draws at its own size "
        "(inference.image_size) and the image is resized to this one; omitted: the model's")
    quality: Literal["auto", "standard"] | None = Field(
        None, description="glimpse draws one quality; 'auto' and 'standard' name it")
    style: None = Field(None, description="glimpse's generators have no styles: omit it")
    user: str | None = Field(None, max_length=256,
                             description="the end user, for the service's logs")

    @field_validator("style", mode="before")
    @classmethod
    def _no_style(cls, value: object) -> object:
        if value is not None:
            raise ValueError("glimpse's generators have no styles (such as 'vivid' or "
                             "'natural'); omit style")
        return value


class GeneratedImage(BaseModel):
    b64_json: str = Field(description="a PNG, base64-encoded", examples=["iVBORw0KGgo..."])


class GenerationResponse(BaseModel):
    created: int = Field(description="Unix time of the answer", examples=[1767225600])
    model: str = Field(description="the bundle that answered, name/version",
                       examples=["dalle/2"])
    seed: int = Field(description="the seed the images were drawn with", examples=[7])
    data: list[GeneratedImage]


# ---------------------------------------------------------------------------- videos

VIDEO_FIELD_DOC = ("the clip file, base64-encoded (a data: URL is accepted): an animated GIF, "
                   "APNG or WebP, an MP4 or a WebM")
FRAMES_FIELD_DOC = "the clip as its frames, in order, each an image file base64-encoded"
# a two-frame 8 x 8 APNG: a red square moving right
VIDEO_EXAMPLE = ("iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAACGFjVEwAAAACAAAAAPONk3AAAAAaZmNU"
                 "TAAAAAAAAAAIAAAACAAAAAAAAAAAAAEACAAA8cpuDAAAAClJREFUeJxjPHHiBAM2wIRVFJ8ECwMDg7mF"
                 "BYRzEslY8ow6ic1hOHUAAJUoB8VZOgCCAAAAGmZjVEwAAAABAAAABgAAAAMAAAABAAAAAwABAAgAANBW"
                 "8e0AAAAhZmRBVAAAAAJ4nGM8ceIEAwMDAwODuYUFhMHEgAGwCAEAn80DBe6C1zUAAAAASUVORK5CYII=")
# `video` and each of `frames`: base64 text, as an image field (the file is checked when
# decoded: 415 when it is not a clip or an image)
VIDEO_BASE64 = {"minLength": 4, "pattern": BASE64_PATTERN, "contentEncoding": "base64"}
# A JSON clip request carries exactly one of the clip file and its frames (as the server
# requires: it refuses both and neither).
VIDEO_JSON_ONE_OF = [
    {"required": ["video"], "properties": {"video": {"type": "string"}}},
    {"required": ["frames"], "properties": {"frames": {"type": "array",
                                                       "minItems": MIN_CLIP_FRAMES}}}]


class VideoActivityParams(ModelParams):
    """Parameters of /v1/videos/activities besides the clip."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description=MODEL_FIELD_DOC, examples=["activity-lrcn"])
    top_k: int | None = Field(None, ge=1, le=MAX_ACTIVITY_TOP_K, examples=[3],
                              description="labels returned, best first (default 5, at most "
                                          "the model's classes)")
    per_frame: bool = Field(False, description="also the labels of each sampled frame")


class VideoActivityJSONRequest(VideoActivityParams):
    """The JSON form of /v1/videos/activities: the clip (`video`) or its frames (`frames`)
    travel base64-encoded."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": VIDEO_JSON_ONE_OF, "examples": [
            {"video": VIDEO_EXAMPLE, "model": "activity-lrcn", "top_k": 3},
            {"frames": [IMAGE_EXAMPLE, IMAGE_EXAMPLE, IMAGE_EXAMPLE], "per_frame": True}]})

    video: str | None = Field(None, description=VIDEO_FIELD_DOC,
                              json_schema_extra=VIDEO_BASE64)
    frames: list[str] | None = Field(None, description=FRAMES_FIELD_DOC,
                                     json_schema_extra={"items": VIDEO_BASE64})


class LabelScoreOut(BaseModel):
    label: str = Field(examples=["move_left"])
    score: float = Field(description="probability; the scores of all labels sum to 1",
                         examples=[0.93])


class FrameActivitiesOut(BaseModel):
    frame: int = Field(description="index among the sampled frames", examples=[3])
    activities: list[LabelScoreOut]


class VideoActivityResponse(BaseModel):
    model: str = Field(description="the bundle that answered, name/version",
                       examples=["activity-lrcn/1"])
    num_frames: int = Field(description="frames in the clip as sent", examples=[48])
    sampled_frames: int = Field(description="frames the model read, evenly spread over "
                                "the clip", examples=[16])
    activities: list[LabelScoreOut]
    per_frame: list[FrameActivitiesOut] | None = Field(
        None, description="with per_frame: the labels of each sampled frame (the model's "
        "reading up to that frame)")


class VideoCaptionParams(ModelParams):
    """Decoding parameters of /v1/videos/captions; omitted ones take the bundle's defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description=MODEL_FIELD_DOC,
                              examples=["video-caption-lrcn"])
    beam_size: int | None = Field(None, ge=1, le=MAX_BEAM_SIZE,
                                  description="beam search: beams kept per step", examples=[5])
    max_length: int | None = Field(None, ge=1, le=MAX_LENGTH,
                                   description="decoding steps, the final <eos> included",
                                   examples=[24])
    length_penalty: float | None = Field(
        None, ge=0, le=10, examples=[0.0],
        description="GNMT alpha, descriptions rank by log_prob / ((5 + |Y|) / 6)^alpha")
    num_captions: int = Field(1, ge=1, le=MAX_BEAM_SIZE, examples=[1],
                              description="descriptions returned, best first; <= beam_size")


class VideoCaptionJSONRequest(VideoCaptionParams):
    """The JSON form of /v1/videos/captions: the clip (`video`) or its frames (`frames`)
    travel base64-encoded."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": VIDEO_JSON_ONE_OF, "examples": [
            {"video": VIDEO_EXAMPLE, "model": "video-caption-lrcn", "beam_size": 5,
             "num_captions": 2}]})

    video: str | None = Field(None, description=VIDEO_FIELD_DOC,
                              json_schema_extra=VIDEO_BASE64)
    frames: list[str] | None = Field(None, description=FRAMES_FIELD_DOC,
                                     json_schema_extra={"items": VIDEO_BASE64})


class VideoCaptionResponse(BaseModel):
    model: str = Field(description="the bundle that answered, name/version",
                       examples=["video-caption-lrcn/1"])
    num_frames: int = Field(description="frames in the clip as sent", examples=[48])
    sampled_frames: int = Field(description="frames the model read", examples=[16])
    captions: list[CaptionOut] = Field(examples=[[{
        "text": "the small red circle moves to the left while a blue star stays still",
        "log_prob": -1.7}]])


# ---------------------------------------------------------------------------- models, health


class ModelInfo(BaseModel):
    name: str = Field(examples=["caption-sat"])
    version: int = Field(examples=[1])
    id: str = Field(description="name/version", examples=["caption-sat/8"])
    latest: bool = Field(description="served when a request names the model without version")
    default: bool = Field(description="answers the requests of its task that name no model")
    task: str = Field(examples=["caption"])
    architecture: str = Field(examples=["sat-soft"])
    created: datetime
    defaults: dict[str, Any] = Field(description="request parameters the model defaults to",
                                     examples=[{"beam_size": 3, "max_length": 20}])
    metrics: dict[str, Any] = Field(description="evaluation measured on this bundle")


class OpenAIModel(BaseModel):
    """One entry of the listing in the shape OpenAI's clients read (`client.models.list()`)."""

    id: str = Field(description="name/version, usable as a request's `model`",
                    examples=["gan-int-cls/4"])
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the bundle was exported", examples=[1767225600])
    owned_by: str = Field("glimpse", examples=["glimpse"])


class ModelList(BaseModel):
    """glimpse's own listing (`models`) and the OpenAI-style one (`object`, `data`)."""

    models: list[ModelInfo]
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class Live(BaseModel):
    status: Literal["live"] = "live"


class Ready(BaseModel):
    ready: bool
    status: Literal["loading", "ready", "degraded", "draining"] = Field(
        description="degraded: some bundles failed to load (see errors)")
    models: list[str] = Field(description="served models, name/version")
    errors: list[str] = Field(description="bundles that could not be loaded, and why")


# ---------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    type: str = Field(examples=["invalid_parameter"])
    message: str = Field(examples=["beam_size: Input should be less than or equal to 20"])
    request_id: str = Field(examples=["3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b"])


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting the error body for `statuses`."""
    meanings = {400: "malformed request", 401: "missing or invalid API key",
                404: "unknown model", 409: "the model has no gallery of that kind (glimpse index)",
                413: "body or image too large",
                415: "not an image / unsupported content type", 422: "invalid parameter",
                503: "queue full, not ready or draining (see Retry-After)",
                504: "timed out before it was computed"}
    return {s: {"model": ErrorResponse, "description": meanings[s]} for s in statuses}
