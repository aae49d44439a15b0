"""Request and response bodies of the HTTP API; their examples make /docs a usable manual."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MODEL_FIELD_DOC = ('"name" (its highest served version) or "name/version"; omitted: the '
                   "default model of the task (GLIMPSE_DEFAULT_MODELS, else the first name A-Z)")


class CaptionParams(BaseModel):
    """Search parameters of /v1/captions; omitted ones take the bundle's defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description=MODEL_FIELD_DOC, examples=["caption-sat"])
    beam_size: int | None = Field(None, ge=1, le=20, description="beams kept per step",
                                  examples=[3])
    max_length: int | None = Field(None, ge=1, le=100,
                                   description="decoding steps, the final <eos> included",
                                   examples=[20])
    length_penalty: float | None = Field(
        None, ge=0, le=10, examples=[0.0],
        description="GNMT alpha: captions rank by log_prob / ((5 + |Y|) / 6)^alpha")
    num_captions: int = Field(1, ge=1, le=20, description="captions returned, <= beam_size",
                              examples=[1])
    return_attention: bool = Field(
        False, description="per-word attention maps (attention models only)")


class CaptionJSONRequest(CaptionParams):
    """The JSON form of /v1/captions: the image travels base64-encoded."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"image": "iVBORw0KGgoAAAANSUhEUgAA...",
                                         "model": "caption-sat", "beam_size": 3,
                                         "num_captions": 2}]})

    image: str = Field(description="the image file, base64-encoded (a data: URL is accepted)")


class CaptionOut(BaseModel):
    text: str = Field(examples=["a red circle left of a blue square"])
    log_prob: float = Field(description="sum of the token log-probabilities, <eos> included",
                            examples=[-2.31])


class WordAttention(BaseModel):
    word: str
    weights: list[list[float]] = Field(description="[grid_h][grid_w] attention weights")


class CaptionResponse(BaseModel):
    model: str = Field(description="the bundle that answered, name/version",
                       examples=["caption-sat/1"])
    captions: list[CaptionOut]
    attention: list[list[WordAttention]] | None = Field(
        None, description="with return_attention: for each caption, one map per word")


class ModelInfo(BaseModel):
    name: str = Field(examples=["caption-sat"])
    version: int = Field(examples=[1])
    id: str = Field(description="name/version", examples=["caption-sat/1"])
    latest: bool = Field(description="served when a request names the model without version")
    task: str = Field(examples=["caption"])
    architecture: str = Field(examples=["sat-soft"])
    created: datetime
    defaults: dict[str, Any] = Field(description="request parameters the model defaults to",
                                     examples=[{"beam_size": 3, "max_length": 20}])
    metrics: dict[str, Any] = Field(description="evaluation measured on this bundle")


class ModelList(BaseModel):
    models: list[ModelInfo]


class Live(BaseModel):
    status: Literal["live"] = "live"


class Ready(BaseModel):
    ready: bool
    status: Literal["loading", "ready", "degraded", "draining"] = Field(
        description="degraded: some bundles failed to load (see errors)")
    models: list[str] = Field(description="served models, name/version")
    errors: list[str] = Field(description="bundles that could not be loaded, and why")


class ErrorDetail(BaseModel):
    type: str = Field(examples=["invalid_parameter"])
    message: str = Field(examples=["beam_size: Input should be less than or equal to 20"])
    request_id: str = Field(examples=["3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b"])


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting the error body for `statuses`."""
    meanings = {400: "malformed request", 401: "missing or invalid API key",
                404: "unknown model", 413: "body or image too large",
                415: "not an image / unsupported content type", 422: "invalid parameter",
                503: "queue full, not ready or draining (see Retry-After)",
                504: "timed out before it was computed"}
    return {s: {"model": ErrorResponse, "description": meanings[s]} for s in statuses}
