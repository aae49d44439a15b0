"""Batcher.admission: queue places held while requests are prepared, refused when full."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest
from polling import until

from service.batching import Batcher
from service.errors import Overloaded, ServiceUnavailable
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.state import ServiceState


class HeldInfer:
    """A batch function that blocks until `gate` is set and records its batches."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.batches: list[list[int]] = []

    def __call__(self, payloads: list[int]) -> list[int]:
        self.batches.append(list(payloads))
        self.gate.wait(5)
        return [p * 10 for p in payloads]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_admission_is_refused_before_preparation_when_places_are_taken() -> None:
    async def main() -> tuple[int, int]:
        b = Batcher("m", HeldInfer(), max_batch_size=1, max_queue_size=2)
        b.start()
        prepared = []
        with b.admission(), b.admission():
            assert b.admitted == 2
            with pytest.raises(Overloaded, match="2 requests are already waiting"), \
                    b.admission():
                prepared.append("third")  # never reached: refused before its work
        assert prepared == []
        after = b.admitted  # places left unused are given back
        with b.admission():
            inside = b.admitted
        await b.stop(1.0)
        return after, inside

    assert run(main()) == (0, 1)


def test_admitted_requests_pass_their_place_to_the_queue() -> None:
    infer = HeldInfer()

    async def main() -> list[int]:
        b = Batcher("m", infer, max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=2)
        b.start()
        busy = asyncio.ensure_future(b.submit(0))  # holds the worker
        await until(lambda: infer.batches)

        async def client(value: int) -> int:
            with b.admission() as submit:
                await asyncio.sleep(0)  # the preparation, e.g. decoding the image
                return await submit(value)

        queued = [asyncio.ensure_future(client(i)) for i in (1, 2)]
        await until(lambda: len(b.queue) >= 2)
        assert b.admitted == 0  # each place counted once: now in the queue
        with pytest.raises(Overloaded), b.admission():
            pass
        infer.gate.set()
        out = await asyncio.gather(busy, *queued)
        await b.stop(1.0)
        return out

    assert run(main()) == [0, 10, 20]
    assert infer.batches == [[0], [1], [2]]


def test_admission_refuses_a_batcher_that_is_not_running() -> None:
    b = Batcher("m", HeldInfer())
    with pytest.raises(ServiceUnavailable, match="not accepting"), b.admission():
        pass
    assert b.admitted == 0


# ---------------------------------------------------------------------------- waiting for room


def test_a_request_waiting_for_room_gets_the_place_that_frees_up() -> None:
    async def main() -> tuple[bool, bool, bool]:
        batcher = Batcher("m/1", lambda xs: xs, max_batch_size=1, max_queue_delay_s=0,
                          max_queue_size=1)
        batcher.start()
        state = ServiceState(Settings(), ServiceMetrics())
        state.models = {"m/1": SimpleNamespace(task="caption", batcher=batcher, key="m/1")}
        batcher.on_room = lambda: state.room("caption")
        with batcher.admission():  # the only place, held while "preparing"
            assert state.has_room("caption") is False
            timed_out = await state.wait_for_room("caption", 0.05)
            waiter = asyncio.ensure_future(state.wait_for_room("caption", 5))
            await asyncio.sleep(0.01)
            still_waiting = not waiter.done()
        # the block ended without queueing: its place is free, and goes to the waiter
        let_through = await asyncio.wait_for(waiter, 1)
        await batcher.stop(1)
        return timed_out, still_waiting, let_through

    assert asyncio.run(main()) == (False, True, True)
