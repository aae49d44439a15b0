"""BatchQueue as plain state (explicit clock), and the asyncio Batcher driving it."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from polling import until

from service.batching import Batcher, BatchQueue, QueueFull
from service.errors import BatchSizeMismatch, Overloaded, RequestTimeout, ServiceUnavailable


def make_queue(batch: int = 3, delay: float = 0.010, size: int = 5) -> BatchQueue[str]:
    return BatchQueue(max_batch_size=batch, max_queue_delay_s=delay, max_queue_size=size)


# ---------------------------------------------------------------------------- BatchQueue


def test_batch_forms_when_full_without_waiting() -> None:
    q = make_queue(batch=3)
    for name in "abcd":
        q.submit(name, now=0.0, timeout_s=1.0)
    assert q.ready(0.0)
    assert [p.payload for p in q.next_batch(0.0)] == ["a", "b", "c"]
    assert len(q) == 1
    assert q.next_batch(0.0) == []  # "d" alone waits for companions


def test_partial_batch_waits_for_the_delay_of_its_oldest_request() -> None:
    q = make_queue(batch=3, delay=0.010)
    q.submit("a", now=0.000, timeout_s=1.0)
    q.submit("b", now=0.006, timeout_s=1.0)
    assert q.next_batch(0.009) == []
    # The wait subtracts the time the oldest request has already spent.
    assert q.wait_s(0.006) == pytest.approx(0.004)
    assert [p.payload for p in q.next_batch(0.010)] == ["a", "b"]
    assert q.wait_s(0.010) is None


def test_zero_delay_sends_every_request_at_once() -> None:
    q = make_queue(batch=4, delay=0.0)
    q.submit("a", now=5.0, timeout_s=1.0)
    assert [p.payload for p in q.next_batch(5.0)] == ["a"]


def test_full_queue_refuses() -> None:
    q = make_queue(size=2)
    q.submit("a", now=0.0, timeout_s=1.0)
    q.submit("b", now=0.0, timeout_s=1.0)
    with pytest.raises(QueueFull):
        q.submit("c", now=0.0, timeout_s=1.0)
    q.next_batch(1.0)
    q.submit("c", now=1.0, timeout_s=1.0)  # room again once a batch left
    assert len(q) == 1


def test_expired_requests_leave_the_queue_uncomputed() -> None:
    q = make_queue(batch=3, delay=0.5)
    q.submit("short", now=0.0, timeout_s=0.1)
    q.submit("long", now=0.0, timeout_s=2.0)
    assert q.wait_s(0.0) == pytest.approx(0.1)  # woken for the first deadline
    assert [p.payload for p in q.expire(0.1)] == ["short"]
    assert [p.payload for p in q.next_batch(0.5)] == ["long"]


def test_cancel_removes_only_a_queued_request() -> None:
    q = make_queue(batch=2, delay=0.0)
    a = q.submit("a", now=0.0, timeout_s=1.0)
    b = q.submit("b", now=0.0, timeout_s=1.0)
    assert q.cancel(a)
    assert not q.cancel(a)
    assert q.next_batch(0.0) == [b]
    assert not q.cancel(b)  # already taken


def test_flush_takes_a_partial_batch_before_its_delay() -> None:
    q = make_queue(batch=3, delay=10.0)
    q.submit("a", now=0.0, timeout_s=60.0)
    assert q.next_batch(0.0) == []
    assert [p.payload for p in q.next_batch(0.0, flush=True)] == ["a"]


# ---------------------------------------------------------------------------- Batcher


class Recorder:
    """A batch function that records its batches and can be held at a gate."""

    def __init__(self, fn=None) -> None:
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fn = fn or (lambda xs: [x * 10 for x in xs])

    def __call__(self, payloads: list) -> list:
        self.batches.append(list(payloads))
        self.gate.wait(5)
        return self.fn(payloads)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def started(batcher: Batcher) -> Batcher:
    batcher.start()
    return batcher


def test_concurrent_requests_share_a_batch_and_get_their_own_results() -> None:
    infer = Recorder()

    async def main() -> list:
        b = await started(Batcher("m", infer, max_batch_size=4, max_queue_delay_s=0.05))
        results = await asyncio.gather(*(b.submit(i) for i in range(6)))
        await b.stop(1.0)
        return results

    assert run(main()) == [0, 10, 20, 30, 40, 50]
    assert infer.batches == [[0, 1, 2, 3], [4, 5]]


def test_failing_batch_fails_its_requests_only_and_the_queue_keeps_serving() -> None:
    def fn(xs: list) -> list:
        if -1 in xs:
            raise ValueError("bad input in batch")
        return [x + 1 for x in xs]

    async def main() -> tuple:
        b = await started(Batcher("m", Recorder(fn), max_batch_size=2, max_queue_delay_s=0.05))
        first = await asyncio.gather(b.submit(-1), b.submit(5), return_exceptions=True)
        second = await asyncio.gather(b.submit(1), b.submit(2))
        await b.stop(1.0)
        return first, second

    first, second = run(main())
    assert all(isinstance(r, ValueError) and "bad input" in str(r) for r in first)
    assert second == [2, 3]


def test_wrong_number_of_results_raises_for_every_request() -> None:
    async def main() -> list:
        b = await started(Batcher("m", Recorder(lambda xs: xs[:1]), max_batch_size=2,
                                  max_queue_delay_s=0.05))
        out = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        await b.stop(1.0)
        return out

    out = run(main())
    assert [type(r) for r in out] == [BatchSizeMismatch, BatchSizeMismatch]
    assert "returned 1 results for 2 requests" in str(out[0])


def test_full_queue_answers_overloaded_and_loses_nothing() -> None:
    infer = Recorder()
    infer.gate.clear()  # hold the first batch in compute

    async def main() -> list:
        b = await started(Batcher("m", infer, max_batch_size=1, max_queue_delay_s=0.0,
                                  max_queue_size=2))
        first = asyncio.ensure_future(b.submit(0))
        await until(lambda: infer.batches)  # the first request is being computed
        queued = [asyncio.ensure_future(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert len(b.queue) == 2
        with pytest.raises(Overloaded) as refused:
            await b.submit(3)
        assert refused.value.headers["Retry-After"] == "1"
        infer.gate.set()
        out = await asyncio.gather(first, *queued)
        await b.stop(1.0)
        return out

    assert run(main()) == [0, 10, 20]
    assert infer.batches == [[0], [1], [2]]


def test_request_past_its_timeout_is_answered_504_and_never_computed() -> None:
    infer = Recorder()
    infer.gate.clear()

    async def main() -> None:
        b = await started(Batcher("m", infer, max_batch_size=1, max_queue_delay_s=0.0,
                                  timeout_s=0.05))
        busy = asyncio.ensure_future(b.submit(0))  # holds the worker past the others' timeout
        await until(lambda: infer.batches)
        with pytest.raises(RequestTimeout):
            await b.submit(1)
        assert len(b.queue) == 0
        infer.gate.set()
        with pytest.raises(RequestTimeout):  # its compute outlived its own timeout too
            await busy
        assert await b.submit(2) == 20
        await b.stop(1.0)

    run(main())
    assert infer.batches == [[0], [2]]


def test_cancelled_caller_is_removed_before_compute() -> None:
    infer = Recorder()
    infer.gate.clear()

    async def main() -> None:
        b = await started(Batcher("m", infer, max_batch_size=1, max_queue_delay_s=0.0))
        busy = asyncio.ensure_future(b.submit(0))
        await until(lambda: infer.batches)
        gone = asyncio.ensure_future(b.submit(1))
        stays = asyncio.ensure_future(b.submit(2))
        await asyncio.sleep(0.01)
        assert len(b.queue) == 2
        gone.cancel()  # the client disconnected
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        assert len(b.queue) == 1
        infer.gate.set()
        assert await asyncio.gather(busy, stays) == [0, 20]
        await b.stop(1.0)

    run(main())
    assert infer.batches == [[0], [2]]


def test_stop_finishes_queued_requests_then_refuses_new_ones() -> None:
    infer = Recorder()

    async def main() -> list:
        b = await started(Batcher("m", infer, max_batch_size=8, max_queue_delay_s=5.0))
        pending = [asyncio.ensure_future(b.submit(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        await b.stop(1.0)  # does not wait out the 5 s delay: the queue is flushed
        with pytest.raises(ServiceUnavailable):
            await b.submit(9)
        assert b.idle
        return await asyncio.gather(*pending)

    assert run(main()) == [0, 10, 20]
    assert infer.batches == [[0, 1, 2]]


def test_observer_sees_batch_size_queue_and_compute_time() -> None:
    seen = []

    class Observer:
        def batch_done(self, model, size, queue_s, compute_s) -> None:
            seen.append((model, size, len(queue_s), compute_s >= 0))

    async def main() -> None:
        b = await started(Batcher("m/1", Recorder(), max_batch_size=2, max_queue_delay_s=0.05,
                                  observer=Observer()))
        await asyncio.gather(b.submit(1), b.submit(2))
        await b.stop(1.0)

    run(main())
    assert seen == [("m/1", 2, 2, True)]


def test_stop_past_its_timeout_answers_running_and_queued_requests_unavailable() -> None:
    release = threading.Event()

    def slow(payloads: list[int]) -> list[int]:
        release.wait(5)
        return payloads

    async def main() -> list:
        b = await started(Batcher("m", slow, max_batch_size=1, max_queue_delay_s=0.0))
        running = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.05)  # in the worker thread now
        queued = asyncio.ensure_future(b.submit(2))
        await asyncio.sleep(0.01)
        await b.stop(0.1)
        outcomes = await asyncio.wait_for(
            asyncio.gather(running, queued, return_exceptions=True), 1.0)
        release.set()
        return outcomes

    outcomes = run(main())
    assert [type(o) for o in outcomes] == [ServiceUnavailable, ServiceUnavailable]
