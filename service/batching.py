"""Dynamic batching, shaped like Triton's dynamic batcher.

Two layers, as in TGI's router:
- `BatchQueue` is plain state with an explicit clock (`now` is an argument), so batch
  assembly is tested synchronously: a batch is ready when `max_batch_size` requests
  wait or the oldest has waited `max_queue_delay`, or at once when a lone request
  waits while the model is idle and no other request is on its way (waiting could only
  add its delay); a full queue refuses; a request past its deadline expires without
  being computed.
- `Batcher` is the asyncio driver: one task per served model takes ready batches,
  runs the batch function in a worker thread (ONNX Runtime releases the GIL, so the
  event loop keeps accepting requests) and resolves one future per request, as Ray
  Serve's batching does: the wait for companions subtracts the time the oldest request
  has already waited, a batch function returning the wrong number of results raises,
  and a failing batch fails each of its requests while the queue keeps serving.
  A caller that goes away (its await is cancelled) is removed from the queue before
  compute. `admission()` holds a queue place while a request is still being prepared
  (its image decoded), so an overloaded model refuses it before that work instead of
  letting unbounded work pile up in front of the queue.

What a driver shares with the step-level one of autoregressive decoders
(service/step_batching.py) lives in `QueueDriver`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from service.errors import (
    BatchSizeMismatch,
    Overloaded,
    RequestTimeout,
    ServiceUnavailable,
    request_id_var,
)

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class Pending(Generic[P]):
    """One queued request: its payload, when it arrived and when it stops being worth computing."""

    payload: P
    enqueued_at: float
    deadline: float
    future: Any = field(default=None, repr=False)  # the driver's asyncio.Future
    request_id: str = "-"


class BatchQueue(Generic[P]):
    """FIFO batch assembly; every method takes the current time, none sleeps."""

    def __init__(self, *, max_batch_size: int, max_queue_delay_s: float,
                 max_queue_size: int) -> None:
        if max_batch_size < 1 or max_queue_size < 1 or max_queue_delay_s < 0:
            raise ValueError("batch size and queue size must be >= 1, delay >= 0")
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self._items: deque[Pending[P]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def submit(self, payload: P, *, now: float, timeout_s: float) -> Pending[P]:
        if len(self._items) >= self.max_queue_size:
            raise QueueFull(f"{len(self._items)} requests are already waiting")
        pending = Pending(payload, enqueued_at=now, deadline=now + timeout_s)
        self._items.append(pending)
        return pending

    def cancel(self, pending: Pending[P]) -> bool:
        """Remove `pending` if it is still queued; True if it was."""
        try:
            self._items.remove(pending)
        except ValueError:
            return False
        return True

    def expire(self, now: float) -> list[Pending[P]]:
        """Remove and return the requests whose deadline has passed."""
        expired = [p for p in self._items if p.deadline <= now]
        for p in expired:
            self._items.remove(p)
        return expired

    def ready(self, now: float, *, idle: bool = False) -> bool:
        """Whether a batch is due. `idle`: the model computes nothing and no other request
        is on its way, so a lone request would wait for companions that are not coming."""
        if not self._items:
            return False
        if idle and len(self._items) == 1:
            return True
        waited = now - self._items[0].enqueued_at
        return len(self._items) >= self.max_batch_size or waited >= self.max_queue_delay_s

    def next_batch(self, now: float, *, flush: bool = False,
                   idle: bool = False) -> list[Pending[P]]:
        """The oldest `max_batch_size` requests if a batch is ready (or `flush`), else []."""
        if not (self.ready(now, idle=idle) or (flush and self._items)):
            return []
        count = min(self.max_batch_size, len(self._items))
        return [self._items.popleft() for _ in range(count)]

    def wait_s(self, now: float, *, idle: bool = False) -> float | None:
        """Seconds until a batch is due or a request expires; None while the queue is empty."""
        if not self._items:
            return None
        if self.ready(now, idle=idle):
            return 0.0
        due = self._items[0].enqueued_at + self.max_queue_delay_s
        deadline = min(p.deadline for p in self._items)
        return max(0.0, min(due, deadline) - now)


class BatchObserver(Protocol):
    def batch_done(self, model: str, size: int, queue_s: Sequence[float],
                   compute_s: float) -> None: ...


BatchFn = Callable[[list[P]], Sequence[R]]


class WaitingRequests(Protocol):
    """The plain state a driver runs: how many requests wait, and how many may."""

    max_queue_size: int

    def __len__(self) -> int: ...


class QueueDriver(ABC, Generic[P, R]):
    """What the asyncio drivers of every model queue share: the run task, admission,
    refusal when full or closed, and the errors a caller gets (503, 504).

    `Batcher` drives a `BatchQueue` (whole batches); service/step_batching.py's
    `StepBatcher` drives a running decode batch that requests join and leave between steps.
    """

    queue: WaitingRequests

    def __init__(self, name: str, *, timeout_s: float, observer: BatchObserver | None,
                 clock: Callable[[], float]) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.observer = observer
        self.clock = clock
        self.admitted = 0  # requests holding a queue place while being prepared
        # Called (on the event loop) whenever a queue place frees up: the admission gate
        # lets a request that waits for one through (service/middleware.py).
        self.on_room: Callable[[], None] | None = None
        # Requests of this model's task that the server has taken in and not answered yet,
        # queued ones included (service/middleware.py): those not queued here may join.
        self.arriving: Callable[[], int] | None = None
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")

    @property
    @abstractmethod
    def idle(self) -> bool:
        """Nothing queued and nothing running."""

    @property
    def has_room(self) -> bool:
        """Whether `admission()` would admit a request now."""
        return self.free_places > 0

    @property
    def free_places(self) -> int:
        """Requests `admission()` would admit now."""
        if self._closing or self._task is None:
            return 0
        return max(0, self.queue.max_queue_size - len(self.queue) - self.admitted)

    @abstractmethod
    async def submit(self, payload: P) -> R:
        """Queue `payload` and wait for its result (Overloaded, RequestTimeout, or its error)."""

    @abstractmethod
    async def _run(self) -> None:
        """The driver's loop, until `stop` has drained it."""

    @abstractmethod
    async def stop(self, timeout_s: float) -> None:
        """Finish queued and running requests (at most `timeout_s`), then stop; what is
        still waiting then is answered 503 (`abort`)."""

    @abstractmethod
    def abort(self, reason: str) -> None:
        """Stop accepting and answer every queued and running request with
        ServiceUnavailable now; running work may finish in its thread, unseen."""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batch-{self.name}")

    @contextlib.contextmanager
    def admission(self) -> Iterator[Callable[[P], Awaitable[R]]]:
        """Hold a queue place while a request is prepared; yields its `submit`.

        Raises Overloaded at once when queued plus admitted requests fill the queue, so
        that under overload a request is refused before its preparation costs anything.
        The place passes to the queue when the yielded `submit` runs, or is given back
        when the block ends without it.
        """
        self._check_accepting()
        waiting = len(self.queue) + self.admitted
        if waiting >= self.queue.max_queue_size:
            raise self._overloaded(f"{waiting} requests are already waiting")
        self.admitted += 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.admitted -= 1
                self._wakeup.set()  # a lone queued request may no longer have company coming

        async def submit(payload: P) -> R:
            release()  # and queue it before anything else runs: the place cannot be taken
            return await self.submit(payload)

        try:
            yield submit
        finally:
            if held:  # prepared but never queued: its place is free again
                release()
                self._room()

    def _room(self) -> bool:
        if self.on_room is not None:
            self.on_room()
        return True

    def _check_accepting(self) -> None:
        if self._closing or self._task is None:
            raise ServiceUnavailable(f"model {self.name} is not accepting requests")

    def _overloaded(self, reason: str) -> Overloaded:
        return Overloaded(f"model {self.name} is overloaded: {reason}; retry later")

    def _timeout_error(self) -> RequestTimeout:
        return RequestTimeout(f"request did not finish within {self.timeout_s:g} s "
                              f"(model {self.name})")


class Batcher(QueueDriver[P, R]):
    """Runs `infer` on batches assembled by a `BatchQueue`, one batch at a time."""

    def __init__(self, name: str, infer: BatchFn, *, max_batch_size: int = 8,
                 max_queue_delay_s: float = 0.002, max_queue_size: int = 64,
                 timeout_s: float = 30.0, observer: BatchObserver | None = None,
                 clock: Callable[[], float] = time.monotonic, idle_dispatch: bool = True) -> None:
        super().__init__(name, timeout_s=timeout_s, observer=observer, clock=clock)
        self.infer = infer
        self.idle_dispatch = idle_dispatch
        self.queue: BatchQueue[P] = BatchQueue(max_batch_size=max_batch_size,
                                               max_queue_delay_s=max_queue_delay_s,
                                               max_queue_size=max_queue_size)
        self.running = 0
        self._running_batch: list[Pending[P]] = []

    @property
    def idle(self) -> bool:
        return not self.queue and not self.running

    async def submit(self, payload: P) -> R:
        """Queue `payload` and wait for its result (Overloaded, RequestTimeout, or its error)."""
        self._check_accepting()
        now = self.clock()
        try:
            pending = self.queue.submit(payload, now=now, timeout_s=self.timeout_s)
        except QueueFull as exc:
            raise self._overloaded(str(exc)) from None
        pending.request_id = request_id_var.get()
        pending.future = asyncio.get_running_loop().create_future()
        pending.future.add_done_callback(
            lambda f: f.cancelled() and self.queue.cancel(pending) and self._room())
        self._wakeup.set()
        try:
            return await asyncio.wait_for(pending.future, pending.deadline - now)
        except TimeoutError:
            raise self._timeout_error() from None

    async def _run(self) -> None:
        while not (self._closing and not self.queue):
            self._wakeup.clear()
            now = self.clock()
            for pending in self.queue.expire(now):
                resolve(pending, error=self._timeout_error())
                self._room()
            idle = self._nothing_on_its_way()
            batch = self.queue.next_batch(now, flush=self._closing, idle=idle)
            if batch:
                self._room()
                await self._compute(batch)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.queue.wait_s(now, idle=idle))

    def _nothing_on_its_way(self) -> bool:
        """No request is being prepared for this queue (an image decoded) and, behind the
        HTTP server, none of the task is being read or answered: a lone queued request has
        no companion to wait for. (Nothing runs between batches.)"""
        if not self.idle_dispatch:
            return False
        others = self.arriving() - len(self.queue) if self.arriving is not None else 0
        return self.admitted == 0 and others <= 0

    async def _compute(self, batch: list[Pending[P]]) -> None:
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        started = self.clock()
        self.running = len(batch)
        self._running_batch = batch
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._infer_checked,
                                                 [p.payload for p in batch])
        except Exception as exc:
            log.error("batch of %d on %s failed (requests %s): %r", len(batch), self.name,
                      ", ".join(p.request_id for p in batch), exc)
            for pending in batch:
                resolve(pending, error=exc)
        else:
            for pending, result in zip(batch, results, strict=True):
                resolve(pending, result=result)
        finally:
            self.running = 0
            self._running_batch = []
        if self.observer is not None:
            queue_s = [started - p.enqueued_at for p in batch]
            self.observer.batch_done(self.name, len(batch), queue_s, self.clock() - started)

    def _infer_checked(self, payloads: list[P]) -> list[R]:
        results = list(self.infer(payloads))
        if len(results) != len(payloads):
            raise BatchSizeMismatch(f"batch function of {self.name} returned {len(results)} "
                                    f"results for {len(payloads)} requests")
        return results

    async def stop(self, timeout_s: float) -> None:
        """Finish queued and running requests (at most `timeout_s`), then stop; what is
        still waiting then is answered 503 (`abort`)."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                log.warning("%s: drain timed out with %d queued and %d running", self.name,
                            len(self.queue), self.running)
                self._task.cancel()
        self.abort(f"model {self.name} shut down")
        self._executor.shutdown(wait=False)

    def abort(self, reason: str) -> None:
        """Stop accepting and answer every queued and running request with ServiceUnavailable
        now. A running batch is left to finish in its thread; its results are dropped."""
        self._closing = True
        self._wakeup.set()
        while batch := self.queue.next_batch(self.clock(), flush=True):
            for pending in batch:
                resolve(pending, error=ServiceUnavailable(reason))
        for pending in self._running_batch:
            resolve(pending, error=ServiceUnavailable(reason))


class Awaited(Protocol):
    future: Any  # the asyncio.Future its caller awaits


def resolve(pending: Awaited, *, result: Any = None,
            error: BaseException | None = None) -> None:
    """Set the result or the error of a request's future, unless its caller has gone."""
    if pending.future.done():
        return
    if error is not None:
        pending.future.set_exception(error)
    else:
        pending.future.set_result(result)
