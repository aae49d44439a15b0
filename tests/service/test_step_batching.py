"""Step-level batching: StepScheduler as plain state, and the asyncio StepBatcher."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from polling import until

from service.batching import QueueFull
from service.errors import Overloaded, RequestTimeout, ServiceUnavailable
from service.step_batching import Row, StepBatcher, StepScheduler


def scheduler(rows: int = 4, size: int = 3) -> StepScheduler[str]:
    return StepScheduler(max_rows=rows, max_queue_size=size)


def joined(plan) -> list[tuple[str, int]]:
    return [(row.request.payload, row.index) for row in plan.joining]


def finish(s: StepScheduler[str], *payloads_and_indices: tuple[str, int]) -> list[str]:
    """Complete the running rows named (payload, index); returns the completed payloads."""
    ids = {(row.request.payload, row.index): row.id for row in s.running.values()}
    done = s.complete([(ids[key], f"{key[0]}{key[1]}") for key in payloads_and_indices])
    return [r.payload for r in done]


# ---------------------------------------------------------------------------- StepScheduler


def test_rows_join_first_come_first_served_up_to_the_batch_size() -> None:
    s = scheduler(rows=4)
    s.submit("a", 2, now=0.0, timeout_s=9)
    s.submit("b", 3, now=0.0, timeout_s=9)
    plan = s.plan()
    # "b" joins with the room that is left; its last row waits, ahead of anything later.
    assert joined(plan) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert [r.payload for r in plan.started] == ["a", "b"] and plan.leaving == []
    assert len(s.running) == 4 and [r.payload for r in s.waiting] == ["b"]
    s.submit("c", 1, now=0.0, timeout_s=9)
    assert joined(s.plan()) == []  # full: nothing joins, the batch keeps stepping


def test_a_finished_row_leaves_and_a_waiting_one_joins_at_the_next_step() -> None:
    s = scheduler(rows=3)
    s.submit("long", 2, now=0.0, timeout_s=9)
    s.submit("short", 1, now=0.0, timeout_s=9)
    s.submit("late", 2, now=0.0, timeout_s=9)
    assert joined(s.plan()) == [("long", 0), ("long", 1), ("short", 0)]
    assert finish(s, ("short", 0)) == ["short"]  # answered while "long" keeps decoding
    plan = s.plan()
    assert joined(plan) == [("late", 0)] and [r.payload for r in plan.started] == ["late"]
    assert finish(s, ("long", 1)) == []  # one of its two rows
    assert joined(s.plan()) == [("late", 1)] and s.plan().started == []
    assert finish(s, ("long", 0), ("late", 0), ("late", 1)) == ["long", "late"]
    assert s.empty


def test_outputs_are_kept_in_row_order() -> None:
    s = scheduler(rows=3)
    request = s.submit("a", 3, now=0.0, timeout_s=9)
    s.plan()
    finish(s, ("a", 2))
    finish(s, ("a", 0))
    assert finish(s, ("a", 1)) == ["a"]
    assert request.ordered_outputs() == ["a0", "a1", "a2"]


def test_a_full_queue_refuses_and_counts_requests_still_waiting() -> None:
    s = scheduler(rows=1, size=2)
    s.submit("a", 2, now=0.0, timeout_s=9)
    s.submit("b", 1, now=0.0, timeout_s=9)
    with pytest.raises(QueueFull):
        s.submit("c", 1, now=0.0, timeout_s=9)
    s.plan()  # "a" is partly admitted: it still waits for its second row
    assert len(s) == 2
    finish(s, ("a", 0))
    s.plan()
    assert len(s) == 1  # "a" fully admitted
    s.submit("c", 1, now=0.0, timeout_s=9)
    with pytest.raises(ValueError, match="at least one row"):
        s.submit("d", 0, now=0.0, timeout_s=9)


def test_a_cancelled_request_leaves_the_batch_and_admits_no_more_rows() -> None:
    s = scheduler(rows=2)
    a = s.submit("a", 3, now=0.0, timeout_s=9)
    s.submit("b", 1, now=0.0, timeout_s=9)
    first = s.plan()
    assert s.cancel(a) and not s.cancel(a)
    plan = s.plan()
    assert sorted(plan.leaving) == sorted(row.id for row in first.joining)
    assert joined(plan) == [("b", 0)]
    # A row of "a" that a step finished meanwhile is ignored.
    assert s.complete([(first.joining[0].id, "late")]) == []
    assert finish(s, ("b", 0)) == ["b"] and s.empty


def test_requests_past_their_deadline_expire_waiting_or_decoding() -> None:
    s = scheduler(rows=1)
    s.submit("decoding", 1, now=0.0, timeout_s=1.0)
    s.submit("waiting", 1, now=0.0, timeout_s=2.0)
    s.submit("patient", 1, now=0.0, timeout_s=9.0)
    (row,) = s.plan().joining
    assert s.wait_s(0.5) == pytest.approx(0.5)
    assert [r.payload for r in s.expire(1.0)] == ["decoding"]
    assert [r.payload for r in s.expire(2.0)] == ["waiting"]
    plan = s.plan()
    assert plan.leaving == [row.id] and joined(plan) == [("patient", 0)]


def test_abort_fails_the_decoding_requests_and_keeps_the_waiting_ones() -> None:
    s = scheduler(rows=2)
    s.submit("a", 1, now=0.0, timeout_s=9)
    s.submit("b", 2, now=0.0, timeout_s=9)  # partly admitted
    s.submit("c", 1, now=0.0, timeout_s=9)
    s.plan()
    assert [r.payload for r in s.abort()] == ["a", "b"]
    assert s.running == {} and [r.payload for r in s.waiting] == ["c"]
    assert joined(s.plan()) == [("c", 0)]
    assert sorted(r.payload for r in s.drain()) == ["c"] and s.empty


# ---------------------------------------------------------------------------- StepBatcher


class Countdown:
    """A decoder whose rows need `payload` steps each (payload = (rows, steps, tag)) and
    output (tag, row index, the sizes of the batches they stepped in)."""

    def __init__(self) -> None:
        self.state: dict[int, list] = {}  # row id -> [steps left, index, tag, sizes]
        self.steps: list[list[str]] = []  # the tags stepped together, per step
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on: str | None = None
        self.step_s = 0.0  # time each step takes

    def rows(self, payload: tuple) -> int:
        return payload[0]

    def advance(self, leaving: Sequence[int], joining: Sequence[Row]) -> list[tuple[int, Any]]:
        self.gate.wait(5)
        time.sleep(self.step_s)
        for row_id in leaving:
            self.state.pop(row_id, None)
        for row in joining:
            _, steps, tag = row.request.payload
            self.state[row.id] = [steps, row.index, tag, []]
        self.steps.append(sorted(s[2] for s in self.state.values()))
        if self.fail_on in self.steps[-1]:
            raise ValueError(f"cannot decode {self.fail_on}")
        finished, size = [], len(self.state)
        for row_id, s in list(self.state.items()):
            s[0] -= 1
            s[3].append(size)
            if s[0] == 0:
                finished.append((row_id, (s[2], s[1], s[3])))
                del self.state[row_id]
        return finished

    def finish(self, payload: tuple, outputs: list) -> list:
        return outputs

    def reset(self) -> None:
        self.state.clear()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_short_requests_are_answered_while_a_long_one_decodes() -> None:
    decoder = Countdown()
    decoder.step_s = 0.005

    async def main() -> tuple[list, list]:
        b = StepBatcher("m", decoder, max_batch_size=4)
        b.start()
        order: list[str] = []

        async def ask(payload: tuple) -> list:
            result = await b.submit(payload)
            order.append(payload[2])
            return result

        long = asyncio.ensure_future(ask((2, 30, "long")))
        await until(lambda: len(decoder.steps) >= 3)  # "long" decodes when the short ones come
        shorts = await asyncio.gather(ask((1, 2, "s1")), ask((2, 3, "s2")))
        results = [await long, *shorts]
        await b.stop(1.0)
        return results, order

    (long, s1, s2), order = run(main())
    assert order == ["s1", "s2", "long"]
    assert [index for _, index, _ in long] == [0, 1] and len(long[0][2]) == 30
    # The short requests joined the running batch: their rows stepped beside "long"'s,
    # and the second row of s2 joined when s1 left.
    assert s1 == [("s1", 0, [4, 4])]
    assert [sizes for _, _, sizes in s2] == [[4, 4, 4], [4, 3, 3]]
    assert max(long[0][2]) == 4 and long[0][2][-1] == 2  # alone again at the end
    assert all(len(tags) <= 4 for tags in decoder.steps)


def test_overload_is_refused_and_a_timeout_leaves_the_batch() -> None:
    decoder = Countdown()

    async def main() -> None:
        b = StepBatcher("m", decoder, max_batch_size=1, max_queue_size=1, timeout_s=0.3)
        b.start()
        decoder.gate.clear()  # the first step holds
        first = asyncio.ensure_future(b.submit((1, 1, "first")))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(b.submit((1, 1, "second")))  # waits: batch is full
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="overloaded"):
            await b.submit((1, 1, "third"))
        with pytest.raises(RequestTimeout):
            await second  # never admitted before its deadline
        decoder.gate.set()
        with pytest.raises(RequestTimeout):
            await first  # its step outlasted the deadline too
        # A cancelled request's rows leave: the next request decodes alone.
        assert await b.submit((1, 2, "after")) == [("after", 0, [1, 1])]
        await b.stop(1.0)

    run(main())


def test_a_failing_step_fails_its_requests_and_the_batcher_keeps_serving() -> None:
    decoder = Countdown()
    decoder.fail_on = "bad"

    async def main() -> None:
        b = StepBatcher("m", decoder, max_batch_size=2)
        b.start()
        decoder.gate.clear()
        bad = asyncio.ensure_future(b.submit((1, 3, "bad")))
        good = asyncio.ensure_future(b.submit((1, 3, "good")))
        later = asyncio.ensure_future(b.submit((1, 1, "later")))  # waits for room
        await asyncio.sleep(0.05)
        decoder.gate.set()
        with pytest.raises(ValueError, match="cannot decode bad"):
            await bad
        with pytest.raises(ValueError, match="cannot decode bad"):
            await good  # shared the failed step
        assert await later == [("later", 0, [1])]
        await b.stop(1.0)

    run(main())


def test_stop_drains_then_refuses() -> None:
    decoder = Countdown()

    async def main() -> None:
        b = StepBatcher("m", decoder, max_batch_size=1)
        b.start()
        pending = [asyncio.ensure_future(b.submit((1, 2, t))) for t in "ab"]
        await asyncio.sleep(0)
        await b.stop(2.0)
        assert [await p for p in pending] == [[("a", 0, [1, 1])], [("b", 0, [1, 1])]]
        assert b.idle
        with pytest.raises(ServiceUnavailable):
            await b.submit((1, 1, "c"))

    run(main())


def test_admission_counts_places_held_while_preparing() -> None:
    async def main() -> None:
        b = StepBatcher("m", Countdown(), max_queue_size=1)
        b.start()
        with b.admission(), pytest.raises(Overloaded), b.admission():
            pass
        with b.admission() as submit:
            assert await submit((1, 1, "x")) == [("x", 0, [1])]
        await b.stop(1.0)

    run(main())
