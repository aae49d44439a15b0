"""Waiting in tests for something another thread, task or process does: always with a
deadline, so that a condition that never comes fails the test instead of hanging it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


def wait_until(condition: Callable[[], Any], timeout: float = 10.0,
               interval: float = 0.002) -> Any:
    """The first true value of `condition()`; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (met := condition()):
        assert time.monotonic() < deadline, f"condition not reached within {timeout} s"
        time.sleep(interval)
    return met


async def until(condition: Callable[[], Any], timeout: float = 10.0,
                interval: float = 0.001) -> Any:
    """The asyncio form of wait_until; `condition` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        met = condition()
        if isinstance(met, Awaitable):
            met = await met
        if met:
            return met
        assert time.monotonic() < deadline, f"condition not reached within {timeout} s"
        await asyncio.sleep(interval)
