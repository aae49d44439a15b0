"""ONNX Runtime sessions, and the served models built on them.

Sessions are created from a validated `Bundle`; the input and output names that
ONNX Runtime reports must equal the ones the manifest records, so that every
caller can rely on the manifest alone. `ServiceState` holds what one app serves:
each model's pipeline and batching queue, readiness, and draining.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnxruntime as ort

from service.batching import Batcher
from service.bundle import Bundle, BundleError, GraphSpec
from service.errors import InvalidParameter, ModelNotFound, ServiceError, ServiceUnavailable
from service.settings import ResolvedModelSettings, Settings

if TYPE_CHECKING:
    from service.routers.metrics import ServiceMetrics

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ProviderList = list[str | tuple[str, dict[str, Any]]]


def choose_providers(device: str = "auto", providers: Sequence[str] | None = None,
                     available: Sequence[str] | None = None) -> ProviderList:
    """The providers, in priority order, for a session on `device`.

    `providers` given explicitly wins. Otherwise "auto" takes CUDA first when
    ONNX Runtime has it, then CPU; "cuda" or "cuda:N" requires CUDA on GPU N;
    "cpu" takes the CPU alone.
    """
    available = list(ort.get_available_providers() if available is None else available)
    if providers:
        missing = [p for p in providers if p not in available]
        if missing:
            raise ValueError(f"providers {missing} are not available (have {available})")
        return list(providers)
    if device == "cpu":
        return [CPU]
    if device == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if CUDA not in available:
        raise ValueError(f"device {device!r} needs {CUDA}, which this onnxruntime lacks "
                         "(install onnxruntime-gpu)")
    device_id = int(device.partition(":")[2] or 0)
    return [(CUDA, {"device_id": device_id}), CPU]


def session_options(intra_op_threads: int | None = None, *,
                    allow_spinning: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if not allow_spinning:
        # Decoding alternates graph runs with NumPy beam-search work on the same cores;
        # intra-op threads that spin-wait between runs take the CPU that work needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxGraph:
    """One ONNX Runtime session, fed and read by tensor name."""

    def __init__(self, session: ort.InferenceSession, name: str = "graph") -> None:
        self.session = session
        self.name = name
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray],
            outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs or self.output_names)
        values = self.session.run(names, {k: feeds[k] for k in self.input_names})
        return dict(zip(names, values, strict=True))

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()


def _check_names(bundle: Bundle, key: str, spec: GraphSpec, graph: OnnxGraph) -> None:
    for kind, declared, actual in (("inputs", spec.input_names(), graph.input_names),
                                   ("outputs", spec.output_names(), graph.output_names)):
        if sorted(declared) != sorted(actual):
            raise BundleError(bundle.path, f"graph {kind} are {actual}, manifest says "
                              f"{declared}", spec.file)


def load_graphs(bundle: Bundle, *, device: str = "auto", providers: Sequence[str] | None = None,
                intra_op_threads: int | None = None,
                allow_spinning: bool = False) -> dict[str, OnnxGraph]:
    """Create one session per graph of `bundle`, keyed like the manifest's `graphs`."""
    try:
        chosen = choose_providers(device, providers)
    except ValueError as exc:
        raise BundleError(bundle.path, str(exc)) from None
    graphs = {}
    for key, spec in bundle.manifest.graphs.items():
        try:
            session = ort.InferenceSession(str(bundle.path / spec.file),
                                           sess_options=session_options(
                                               intra_op_threads, allow_spinning=allow_spinning),
                                           providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            reason = f"onnxruntime cannot load it: {exc}"
            raise BundleError(bundle.path, reason, spec.file) from None
        graph = OnnxGraph(session, name=f"{bundle.key}:{key}")
        _check_names(bundle, key, spec, graph)
        graphs[key] = graph
    log.info("loaded %s with providers %s", bundle.key, chosen)
    return graphs


# ---------------------------------------------------------------------------- served models


class Pipeline(Protocol):
    """What a task contributes: a batch function and a warm-up (e.g. CaptionModel)."""

    def run_batch(self, requests: Sequence[Any]) -> Sequence[Any]: ...

    def warm_up(self, batch_sizes: Sequence[int]) -> None: ...


@dataclass
class ServedModel:
    bundle: Bundle
    settings: ResolvedModelSettings
    pipeline: Any  # a Pipeline; routers know its concrete type from the task
    batcher: Batcher

    @property
    def key(self) -> str:
        return self.bundle.key

    @property
    def task(self) -> str:
        return self.bundle.manifest.task


def warm_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to `max_batch_size`, and `max_batch_size` itself."""
    sizes = {1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size}
    return sorted(sizes | {max_batch_size})


@dataclass
class RequestTracker:
    """Labels one inference request for the metrics; `model` is set once it is resolved."""

    model: str = "unknown"


class ServiceState:
    """The served models, readiness and draining of one app (held in `app.state.service`)."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.errors: list[str] = []
        self.phase = "loading"  # -> "ready" -> "draining"
        self.in_flight = 0

    # ------------------------------------------------------------------ readiness

    @property
    def ready(self) -> bool:
        return self.phase == "ready" and not self.errors

    @property
    def status(self) -> str:
        if self.phase == "ready" and self.errors:
            return "degraded"
        return self.phase

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and all(m.batcher.idle for m in self.models.values())

    def begin_drain(self) -> None:
        """Readiness turns 503 and new inference requests are refused; queued ones finish."""
        self.phase = "draining"

    def check_accepting(self) -> None:
        if self.phase != "ready":
            raise ServiceUnavailable(f"the service is {self.phase}", retry_after_s=5)

    @contextmanager
    def track(self) -> Iterator[RequestTracker]:
        """Count the request in flight and, when it ends, by model and outcome."""
        tracker = RequestTracker()
        self.in_flight += 1
        outcome = "ok"
        try:
            yield tracker
        except ServiceError as exc:
            outcome = exc.error_type
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception:
            outcome = "internal_error"
            raise
        finally:
            self.in_flight -= 1
            self.metrics.count_request(tracker.model, outcome)

    # ------------------------------------------------------------------ lookup

    def resolve(self, model: str | None, task: str) -> ServedModel:
        """The served model a request names: "name", "name/version", or None (the default)."""
        if model is None:
            return self._default(task)
        match = re.fullmatch(r"([a-z0-9]+(?:-[a-z0-9]+)*)(?:/([1-9][0-9]*))?", model)
        if match is None:
            raise InvalidParameter(f"model must be 'name' or 'name/version', got {model!r}")
        name, version = match.groups()
        versions = self.versions(name)
        served = versions.get(int(version)) if version else next(reversed(versions.values()),
                                                                   None)
        if served is None:
            raise ModelNotFound(f"model {model!r} is not served; {task} models: "
                                f"{', '.join(self.keys(task)) or 'none'}")
        if served.task != task:
            raise InvalidParameter(f"model {model!r} is a {served.task} model, this endpoint "
                                   f"needs a {task} model ({', '.join(self.keys(task)) or 'none'})")
        return served

    def versions(self, name: str) -> dict[int, ServedModel]:
        """The served versions of `name`, ascending."""
        found = {m.bundle.manifest.version: m for m in self.models.values()
                 if m.bundle.manifest.name == name}
        return dict(sorted(found.items()))

    def keys(self, task: str) -> list[str]:
        return [key for key, m in self.models.items() if m.task == task]

    def _default(self, task: str) -> ServedModel:
        names = sorted({m.bundle.manifest.name for m in self.models.values()
                        if m.task == task})
        if not names:
            raise ModelNotFound(f"no {task} model is served")
        name = self.settings.default_models.get(task)
        return self.resolve(name if name in names else names[0], task)

    def is_latest(self, served: ServedModel) -> bool:
        versions = self.versions(served.bundle.manifest.name)
        return next(reversed(versions)) == served.bundle.manifest.version
