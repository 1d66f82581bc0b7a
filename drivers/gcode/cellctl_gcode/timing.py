"""Periodic work on monotonic deadlines, so that status polls and progress reports do not
drift: each tick is due `interval` after the previous one was due, not after it ran."""

from __future__ import annotations

import asyncio


class Ticker:
    """`await tick()` returns once per `interval`; a late tick starts the schedule over."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next_at: float | None = None

    def restart(self) -> None:
        """The next tick is one interval from now (after an idle pause)."""
        self._next_at = None

    async def tick(self) -> None:
        loop = asyncio.get_running_loop()
        if self._next_at is None:
            self._next_at = loop.time()
        self._next_at += self.interval
        delay = self._next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            self._next_at = loop.time()
