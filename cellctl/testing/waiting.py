"""Wait for a condition with a deadline, never for a fixed time: the happy path returns as
soon as the condition holds; a miss fails loudly, saying what was awaited."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEFAULT_TIMEOUT = 10.0  # generous: the machine is shared and loaded


def wait_until(
    predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, what: str = "", *, interval: float = 0.01
) -> Any:
    """Poll `predicate` until it returns something truthy and return that, or raise
    AssertionError after `timeout` seconds. For tests without an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], Any | Awaitable[Any]],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "",
    *,
    interval: float = 0.01,
) -> Any:
    """`wait_until` for async tests: checks between event-loop turns and never blocks the
    loop. `predicate` may be a coroutine function (its result is awaited)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(interval)
