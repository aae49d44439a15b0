"""Service settings: one pydantic-settings class, read from `GLIMPSE_*` environment variables.

Lists (`GLIMPSE_PROVIDERS`, `GLIMPSE_API_KEYS`, `GLIMPSE_CORS_ORIGINS`) are comma
separated; `GLIMPSE_MODEL_OVERRIDES` is JSON mapping a model name to the knobs it
changes, e.g. `{"caption-sat": {"max_batch_size": 16, "device": "cuda:1"}}`.
docs/service.md has the full table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# "auto": CUDA when ONNX Runtime has its CUDA provider, else CPU; "cuda[:N]" requires it.
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]
CommaList = Annotated[list[str], NoDecode]
# "auto": powers of two on a GPU, off on CPU (service/runtime.py `resolve_buckets`).
BucketSetting = Literal["auto", "off"] | Annotated[list[Annotated[int, Field(ge=1)]],
                                                   Field(min_length=1)]
CudaOptions = dict[str, str | int | bool]
# ONNX Runtime's CUDA provider options. HEURISTIC: cuDNN's exhaustive algorithm search
# (ONNX Runtime's default) costs 100+ ms on every new input shape. kSameAsRequested:
# the arena grows by what a run needs, not to the next power of two, so several models
# share a GPU's memory.
DEFAULT_CUDA_OPTIONS: CudaOptions = {"cudnn_conv_algo_search": "HEURISTIC",
                                     "arena_extend_strategy": "kSameAsRequested"}


def split_buckets(value: object) -> object:
    """'1, 2, 4' -> [1, 2, 4]; 'auto' and 'off' as they are."""
    if isinstance(value, str) and value.strip() not in ("auto", "off"):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value.strip() if isinstance(value, str) else value


def check_buckets(value: object) -> object:
    if isinstance(value, list) and value != sorted(set(value)):
        raise ValueError(f"batch buckets must be increasing sizes, got {value}")
    return value


def check_cuda_options(options: CudaOptions | None) -> CudaOptions | None:
    if options and str(options.get("enable_cuda_graph", "0")).lower() in ("1", "true"):
        # A captured CUDA graph replays fixed device addresses: its inputs and outputs
        # must stay in the same device buffers (IO binding), which glimpse's graph runs,
        # fed with NumPy arrays, do not do.
        raise ValueError("enable_cuda_graph needs inputs and outputs bound to fixed device "
                         "buffers, which glimpse does not do; leave it off")
    return options


class ModelSettings(BaseModel):
    """Knobs that may differ per served model; `None` means "use the service-wide value"."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int | None = Field(None, ge=1, le=1024)
    max_queue_delay_ms: float | None = Field(None, ge=0)
    max_queue_size: int | None = Field(None, ge=1)
    request_timeout_s: float | None = Field(None, gt=0)
    idle_dispatch: bool | None = None
    device: Device | None = None
    intra_op_threads: int | None = Field(None, ge=0)
    providers: list[str] | None = None
    batch_buckets: BucketSetting | None = None
    cuda_options: CudaOptions | None = None  # merged over the service-wide options

    _buckets = field_validator("batch_buckets", mode="before")(split_buckets)
    _increasing = field_validator("batch_buckets")(check_buckets)
    _cuda = field_validator("cuda_options")(check_cuda_options)


class ResolvedModelSettings(BaseModel):
    """The knobs one model is served with: service-wide values with its overrides applied."""

    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    request_timeout_s: float
    idle_dispatch: bool
    device: str
    intra_op_threads: int | None
    providers: list[str] | None
    batch_buckets: BucketSetting
    cuda_options: CudaOptions


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GLIMPSE_", extra="ignore",
                                      protected_namespaces=())

    model_repository: Path = Path("model_repository")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"

    # ONNX Runtime. Explicit providers replace the choice that `device` makes.
    providers: CommaList = []
    device: Device = "auto"
    intra_op_threads: int | None = Field(None, ge=0)
    # Let idle intra-op threads spin-wait for the next run (ONNX Runtime's default).
    # Off: between the step graph's runs the cores belong to beam search.
    ort_spinning: bool = False
    # Batch sizes each graph's batch dimension is padded to: "auto" (powers of two up to
    # 16 x max_batch_size on a GPU, off on CPU), "off", or the sizes, e.g. "1,2,4,8,16".
    batch_buckets: Annotated[BucketSetting, NoDecode] = "auto"
    cuda_options: CudaOptions = DEFAULT_CUDA_OPTIONS

    # Dynamic batching, per model queue (Triton's dynamic batcher knobs).
    max_batch_size: int = Field(8, ge=1, le=1024)
    max_queue_delay_ms: float = Field(2.0, ge=0)
    max_queue_size: int = Field(64, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    # A request alone in an idle model's queue, with no other request of its task being
    # read or prepared, is computed at once rather than after max_queue_delay_ms.
    # False: it waits like any partial batch (Triton's dynamic batcher).
    idle_dispatch: bool = True
    # A request that finds every queue of its task full waits this long, its body unread,
    # for a place before it is refused 503: clients that ignore Retry-After and send again
    # at once cannot make refusals take the cores the models need. 0: refuse at once.
    admission_wait_ms: float = Field(100.0, ge=0)
    model_overrides: dict[str, ModelSettings] = {}
    # Task -> model name used when a request names no model. When that model is not
    # served, the first served name A-Z is used.
    default_models: dict[str, str] = {
        "caption": "caption-updown", "vqa": "vqa-updown", "retrieval": "retrieval-vse",
        "alignment": "align-brnn", "generation": "gan-int-cls", "activity": "activity-lrcn",
        "video-caption": "video-caption-lrcn",
    }

    # Input limits.
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(4096 * 4096, ge=1)  # per image, and per frame of a clip
    max_video_frames: int = Field(1024, ge=2)  # frames of a clip, decoded or sent
    max_video_seconds: float = Field(120.0, gt=0)  # length of a clip, from its container

    # Access.
    api_keys: CommaList = []
    cors_origins: CommaList = []

    # Seconds that queued and running requests get to finish on SIGTERM.
    drain_timeout_s: float = Field(30.0, ge=0)

    # The Qdrant server that galleries indexed as `qdrant` are searched on, e.g.
    # http://localhost:6333; unset: qdrant-client's embedded local mode, in the process.
    qdrant_url: str | None = None

    @field_validator("providers", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    _buckets = field_validator("batch_buckets", mode="before")(split_buckets)
    _increasing = field_validator("batch_buckets")(check_buckets)
    _cuda = field_validator("cuda_options")(check_cuda_options)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_when_given(cls, value: object) -> object:
        # " , " or "," would otherwise split into no key at all and silently turn
        # authentication off; an empty value is the explicit way to run without keys.
        if isinstance(value, str) and value.strip() and not cls._split_commas(value):
            raise ValueError("GLIMPSE_API_KEYS names no key; leave it empty to run "
                             "without authentication")
        return value

    def for_model(self, name: str) -> ResolvedModelSettings:
        """The settings `name` is served with: its `model_overrides` entry over the defaults."""
        override = self.model_overrides.get(name, ModelSettings())
        fields = ModelSettings.model_fields
        values = {key: getattr(self, key) for key in fields}
        values.update(override.model_dump(exclude_none=True))
        values["cuda_options"] = {**self.cuda_options, **(override.cuda_options or {})}
        values["providers"] = values["providers"] or None
        return ResolvedModelSettings(**values)
