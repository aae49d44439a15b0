"""What one app serves: each model's pipeline and batching queue, readiness and draining.

`ServiceState` lives in `app.state.service`; the routers reach it through
`service.routers.deps.StateDep`, and the lifespan fills it (service/loading.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import defaultdict, deque
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
        # task -> inference requests past the admission gate and not yet answered: those
        # not in a queue are companions on their way (`QueueDriver.arriving`)
        self.arriving: dict[str, int] = defaultdict(int)
        # task -> requests the admission gate holds until a queue of the task has room
        self.waiting: dict[str, deque[asyncio.Future[None]]] = defaultdict(deque)

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
        for waiting in self.waiting.values():  # let them through, to be refused
            while waiting:
                _let_through(waiting.popleft())

    # ------------------------------------------------------------------ admission waits

    def has_room(self, task: str) -> bool | None:
        """Whether a queue of `task` has room now; None when no model of `task` is served."""
        served = [m for m in self.models.values() if m.task == task]
        return any(m.batcher.has_room for m in served) if served else None

    def room(self, task: str) -> None:
        """Places freed up in a queue of `task`: let as many waiting requests through."""
        waiting = self.waiting[task]
        free = sum(m.batcher.free_places for m in self.models.values() if m.task == task)
        while free > 0 and waiting:
            if _let_through(waiting.popleft()):
                free -= 1

    async def wait_for_room(self, task: str, timeout_s: float) -> bool:
        """Wait (first come, first served) until a queue of `task` has room; False when
        `timeout_s` passes first."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[task].append(future)
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            with contextlib.suppress(ValueError):
                self.waiting[task].remove(future)
            return False
        return True

    def abort(self, reason: str) -> None:
        """Answer every queued and running request with 503 now (drain timed out, or a
        second signal): JSON errors, rather than connections cut by the server."""
        self.begin_drain()
        for served in self.models.values():
            served.batcher.abort(reason)

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

    def is_default(self, served: ServedModel) -> bool:
        """Whether `served` answers the requests of its task that name no model."""
        return self._default(served.task) is served

    def is_latest(self, served: ServedModel) -> bool:
        versions = self.versions(served.bundle.manifest.name)
        return next(reversed(versions)) == served.bundle.manifest.version


def _let_through(future: asyncio.Future[None]) -> bool:
    if future.done():
        return False
    future.set_result(None)
    return True
