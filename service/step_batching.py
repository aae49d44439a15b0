"""Step-level (continuous) batching of autoregressive decoders, as in Orca and TGI.

A request of an autoregressive model is several *rows* (sequences it decodes: DALL-E's
images times candidates). Whole-request batching would hold a batch until its longest
request finished; here the batch is the set of rows decoding now, and it changes
between steps: rows of waiting requests join as soon as there is room, and a row
leaves the moment it finishes (or its request is cancelled or expires). A request is
answered when its last row finishes.

Two layers, as in service/batching.py:
- `StepScheduler` is plain state with an explicit clock: which requests wait, which rows
  decode, which rows join and leave before the next step (`plan`), and which requests a
  step completed (`complete`). Requests are admitted first come, first served; a request
  with more rows than there is room for joins partly and the rest of its rows follow as
  room frees, ahead of any later request. `max_queue_size` counts requests that still
  have rows waiting; a full queue refuses (503), a request past its deadline expires
  (504) and its rows leave the batch.
- `StepBatcher` is the asyncio driver: one task per served model plans, runs the model's
  `StepDecoder.advance` (drop the leaving rows, add the joining ones, one step for every
  row) in a worker thread, and turns each completed request's row outputs into its
  result with `StepDecoder.finish`. A failing step fails the requests whose rows it
  held and the decoder starts over empty; waiting requests are served next.

The decoder keeps its per-row state (DALL-E's key/value cache) by row id; the scheduler
never sees it, and the decoder never sees requests wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from service.batching import BatchObserver, QueueDriver, QueueFull, resolve
from service.errors import ServiceUnavailable, request_id_var

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


@dataclass(eq=False)
class StepRequest(Generic[P]):
    """One request: its payload, its rows and what they produced so far."""

    payload: P
    rows: int
    enqueued_at: float
    deadline: float
    admitted: int = 0  # rows that have joined the decode batch
    outputs: dict[int, Any] = field(default_factory=dict)  # row index -> output
    cancelled: bool = False
    future: Any = field(default=None, repr=False)  # the driver's asyncio.Future
    request_id: str = "-"

    @property
    def done(self) -> bool:
        return len(self.outputs) == self.rows

    def ordered_outputs(self) -> list[Any]:
        return [self.outputs[i] for i in range(self.rows)]


@dataclass(frozen=True, eq=False)
class Row(Generic[P]):
    """One sequence of a request in the decode batch."""

    id: int  # unique for the scheduler's lifetime; the decoder keys its state by it
    request: StepRequest[P]
    index: int  # which of the request's rows, 0..rows-1


@dataclass
class StepPlan(Generic[P]):
    """What changes in the decode batch before the next step."""

    leaving: list[int]  # ids of rows to drop (their requests were cancelled or expired)
    joining: list[Row[P]]  # rows to add, in admission order
    started: list[StepRequest[P]]  # requests whose first rows join now


class StepScheduler(Generic[P]):
    """Admission of rows into a running decode batch; every method takes the time, none
    sleeps."""

    def __init__(self, *, max_rows: int, max_queue_size: int) -> None:
        if max_rows < 1 or max_queue_size < 1:
            raise ValueError("max_rows and max_queue_size must be >= 1")
        self.max_rows = max_rows
        self.max_queue_size = max_queue_size
        self.waiting: deque[StepRequest[P]] = deque()  # requests with rows still to admit
        self.running: dict[int, Row[P]] = {}  # row id -> row, rows in the decode batch
        self._leaving: list[int] = []
        self._next_id = 0

    def __len__(self) -> int:
        """Requests waiting for (some of) their rows to be admitted."""
        return len(self.waiting)

    @property
    def empty(self) -> bool:
        return not self.waiting and not self.running and not self._leaving

    def submit(self, payload: P, rows: int, *, now: float, timeout_s: float) -> StepRequest[P]:
        if rows < 1:
            raise ValueError(f"a request decodes at least one row, got {rows}")
        if len(self.waiting) >= self.max_queue_size:
            raise QueueFull(f"{len(self.waiting)} requests are already waiting")
        request = StepRequest(payload, rows, enqueued_at=now, deadline=now + timeout_s)
        self.waiting.append(request)
        return request

    def cancel(self, request: StepRequest[P]) -> bool:
        """Withdraw a request (its caller has gone): it admits no more rows and its running
        rows leave at the next plan. True if it was still pending."""
        if request.cancelled or request.done:
            return False
        request.cancelled = True
        with contextlib.suppress(ValueError):
            self.waiting.remove(request)
        rows = [row.id for row in self.running.values() if row.request is request]
        for row_id in rows:
            del self.running[row_id]
        self._leaving += rows
        return True

    def expire(self, now: float) -> list[StepRequest[P]]:
        """Withdraw and return the requests, waiting or decoding, whose deadline has passed."""
        pending = list(self.waiting) + list({id(r.request): r.request
                                             for r in self.running.values()}.values())
        expired = [r for r in pending if r.deadline <= now]
        for request in expired:
            self.cancel(request)
        return expired

    def plan(self) -> StepPlan[P]:
        """Rows that leave and rows that join before the next step (first come, first
        served, up to max_rows decoding)."""
        leaving, self._leaving = self._leaving, []
        joining: list[Row[P]] = []
        started: list[StepRequest[P]] = []
        room = self.max_rows - len(self.running)
        while room > 0 and self.waiting:
            request = self.waiting[0]
            if request.admitted == 0:
                started.append(request)
            take = min(room, request.rows - request.admitted)
            for index in range(request.admitted, request.admitted + take):
                row = Row(self._next_id, request, index)
                self._next_id += 1
                self.running[row.id] = row
                joining.append(row)
            request.admitted += take
            room -= take
            if request.admitted == request.rows:
                self.waiting.popleft()
        return StepPlan(leaving, joining, started)

    def complete(self, finished: Iterable[tuple[int, Any]]) -> list[StepRequest[P]]:
        """Record the outputs of rows a step finished (they have left the decode batch);
        returns the requests whose last row this was. Rows of withdrawn requests are
        ignored."""
        completed = []
        for row_id, output in finished:
            row = self.running.pop(row_id, None)
            if row is None or row.request.cancelled:
                continue
            row.request.outputs[row.index] = output
            if row.request.done:
                completed.append(row.request)
        return completed

    def abort(self) -> list[StepRequest[P]]:
        """After a failed step: withdraw and return every request with rows in the batch
        (the decoder has dropped them all)."""
        failed = list({id(r.request): r.request for r in self.running.values()}.values())
        self.running.clear()
        self._leaving.clear()
        for request in failed:
            self.cancel(request)
        return failed

    def drain(self) -> list[StepRequest[P]]:
        """Withdraw and return every request still pending (shutdown)."""
        pending = self.abort() + list(self.waiting)
        for request in list(self.waiting):
            self.cancel(request)
        return pending

    def wait_s(self, now: float) -> float | None:
        """Seconds until the first deadline; None when nothing is pending."""
        deadlines = [r.deadline for r in self.waiting]
        deadlines += [row.request.deadline for row in self.running.values()]
        return max(0.0, min(deadlines) - now) if deadlines else None


class StepDecoder(Protocol[P, R]):
    """The model side of step-level batching: per-row state, keyed by row id."""

    def rows(self, payload: P) -> int:
        """How many rows a request decodes."""
        ...

    def advance(self, leaving: Sequence[int], joining: Sequence[Row[P]]
                ) -> list[tuple[int, Any]]:
        """Drop rows `leaving` (ids it does not hold are ignored), add rows `joining`, and
        advance every row by one step; returns (row id, output) of the rows that finished,
        which it drops."""
        ...

    def finish(self, payload: P, outputs: list[Any]) -> R:
        """A request's result from the outputs of its rows, in row order."""
        ...

    def reset(self) -> None:
        """Drop every row (after a failed step)."""
        ...


class StepBatcher(QueueDriver[P, R]):
    """Runs a `StepDecoder` over the decode batch a `StepScheduler` plans, step by step."""

    def __init__(self, name: str, decoder: StepDecoder[P, R], *, max_batch_size: int = 8,
                 max_queue_size: int = 64, timeout_s: float = 30.0,
                 observer: BatchObserver | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, timeout_s=timeout_s, observer=observer, clock=clock)
        self.decoder = decoder
        self.queue: StepScheduler[P] = StepScheduler(max_rows=max_batch_size,
                                                     max_queue_size=max_queue_size)
        self.busy = False  # a step or a request's finish is computing

    @property
    def idle(self) -> bool:
        return self.queue.empty and not self.busy

    async def submit(self, payload: P) -> R:
        """Queue `payload` and wait for its result (Overloaded, RequestTimeout, or its error)."""
        self._check_accepting()
        now = self.clock()
        try:
            request = self.queue.submit(payload, self.decoder.rows(payload), now=now,
                                        timeout_s=self.timeout_s)
        except QueueFull as exc:
            raise self._overloaded(str(exc)) from None
        request.request_id = request_id_var.get()
        request.future = asyncio.get_running_loop().create_future()
        request.future.add_done_callback(lambda f: f.cancelled() and self.queue.cancel(request))
        self._wakeup.set()
        try:
            return await asyncio.wait_for(request.future, request.deadline - now)
        except TimeoutError:
            raise self._timeout_error() from None

    async def _run(self) -> None:
        while not (self._closing and self.queue.empty):
            self._wakeup.clear()
            now = self.clock()
            for request in self.queue.expire(now):
                resolve(request, error=self._timeout_error())
            plan = self.queue.plan()
            if plan.leaving or self.queue.running:
                await self._step(plan)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.queue.wait_s(now))

    async def _step(self, plan: StepPlan[P]) -> None:
        loop = asyncio.get_running_loop()
        started, rows = self.clock(), len(self.queue.running)
        self.busy = True
        try:
            finished = await loop.run_in_executor(self._executor, self.decoder.advance,
                                                  plan.leaving, plan.joining)
        except Exception as exc:
            failed = self.queue.abort()
            self.decoder.reset()
            log.error("step of %d rows on %s failed (requests %s): %r", rows, self.name,
                      ", ".join(r.request_id for r in failed), exc)
            for request in failed:
                resolve(request, error=exc)
            return
        finally:
            self.busy = False
        if self.observer is not None and rows:
            queue_s = [started - r.enqueued_at for r in plan.started]
            self.observer.batch_done(self.name, rows, queue_s, self.clock() - started)
        for request in self.queue.complete(finished):
            await self._finish(request)

    async def _finish(self, request: StepRequest[P]) -> None:
        loop = asyncio.get_running_loop()
        self.busy = True
        try:
            result = await loop.run_in_executor(self._executor, self.decoder.finish,
                                                request.payload, request.ordered_outputs())
        except Exception as exc:
            log.error("finishing request %s on %s failed: %r", request.request_id, self.name,
                      exc)
            resolve(request, error=exc)
        else:
            resolve(request, result=result)
        finally:
            self.busy = False

    async def stop(self, timeout_s: float) -> None:
        """Finish queued and running requests (at most `timeout_s`), then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                log.warning("%s: drain timed out with %d queued and %d rows decoding",
                            self.name, len(self.queue), len(self.queue.running))
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task  # until it has stopped: a second stop finds it done
        for request in self.queue.drain():
            resolve(request, error=ServiceUnavailable(f"model {self.name} shut down"))
        self._executor.shutdown(wait=False)

    def refuse_queued(self) -> int:
        """Refuse the requests with rows still waiting (their decoding rows leave too)."""
        waiting = list(self.queue.waiting)
        for request in waiting:
            self.queue.cancel(request)
            resolve(request, error=ServiceUnavailable(f"model {self.name} shut down"))
        return len(waiting)
