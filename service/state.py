"""What one app serves: each model's pipeline and batching queue, readiness and draining.

`ServiceState` lives in `app.state.service`; the routers reach it through
`service.routers.deps.StateDep`, and the lifespan fills it (service/loading.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from service.batching import QueueDriver
from service.bundle import Bundle
from service.errors import InvalidParameter, ModelNotFound, ServiceError, ServiceUnavailable
from service.metrics import ServiceMetrics
from service.pipelines.base import Pipeline
from service.settings import ResolvedModelSettings, Settings

P = TypeVar("P", bound=Pipeline[Any, Any])


@dataclass
class ServedModel:
    bundle: Bundle
    settings: ResolvedModelSettings
    pipeline: Pipeline[Any, Any]
    batcher: QueueDriver[Any, Any]

    @property
    def key(self) -> str:
        return self.bundle.key

    @property
    def task(self) -> str:
        return self.bundle.manifest.task

    def pipeline_as(self, kind: type[P]) -> P:
        """The pipeline with its own type (that of the task the model was resolved for)."""
        if not isinstance(self.pipeline, kind):
            raise TypeError(f"{self.key} is served by {type(self.pipeline).__name__}, "
                            f"not {kind.__name__}")
        return self.pipeline


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

    def refuse_queued(self) -> int:
        """Refuse (503) every request still waiting in a queue, as a drain that ran out of
        time does; running batches go on. Returns how many were refused."""
        return sum(m.batcher.refuse_queued() for m in self.models.values())

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
