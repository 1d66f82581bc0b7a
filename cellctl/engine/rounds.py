"""Poll rounds: when polls start, and which polls the outbox may wait for.

Aligned polling (`poll_phase: aligned`, the default): a device polls at the multiples of
its `poll_interval` on one clock shared by the whole process (like Telegraf's
`round_interval`), so devices with the same interval (or intervals that divide each
other) poll in the same moment, and their scans can share one outbox commit instead of
one each (decision 0020).

`PollRounds` counts the polls in flight by generation. The outbox writer, before a
commit, calls `settled()`: it waits (bounded) until every poll that had started by then
has delivered its reading, so one round's scans go into one transaction; polls that
start later do not hold it.
"""

from __future__ import annotations

import asyncio
import math

# After connecting, the first poll runs at once; the next one is the first slot at least
# this share of the interval later (no two polls closer than that).
MIN_GAP_SHARE = 0.5


def first_slot(now: float, interval: float) -> int:
    """The index of the first aligned slot (`slot * interval`) at least half an interval
    after `now` (a poll just ran at `now`)."""
    return math.ceil((now + MIN_GAP_SHARE * interval) / interval)


def next_slot(slot: int, now: float, interval: float) -> int:
    """The slot after `slot`, or the first one not already past when a poll overran
    (missed slots are skipped, never made up in a burst)."""
    slot += 1
    if slot * interval < now:
        slot = math.ceil(now / interval)
    return slot


class PollRounds:
    """Polls in flight, counted by generation; one per event loop (the daemon's)."""

    def __init__(self) -> None:
        self._gen = 0
        self._open: dict[int, int] = {}  # generation -> polls in flight; keys ascend
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_for = -1  # the generation the waiter waits out
        self.waits = 0  # settled() calls that had polls to wait for
        self.waits_timed_out = 0

    def begin(self) -> int:
        """A poll starts; returns its token for `end`."""
        gen = self._gen
        self._open[gen] = self._open.get(gen, 0) + 1
        return gen

    def end(self, gen: int) -> None:
        """The poll of token `gen` is over (its reading taken, or it failed)."""
        left = self._open[gen] - 1
        if left:
            self._open[gen] = left
            return
        del self._open[gen]
        waiter = self._waiter
        if waiter is not None and not self._older_open(self._waiting_for) and not waiter.done():
            waiter.set_result(None)

    def _older_open(self, gen: int) -> bool:
        for g in self._open:  # ascending: the first key is the oldest
            return g <= gen
        return False

    @property
    def in_flight(self) -> int:
        return sum(self._open.values())

    async def settled(self, timeout: float) -> None:
        """Return once every poll started before this call has ended, or after `timeout`
        seconds (a slow device must not hold the others' commit)."""
        gen = self._gen
        self._gen += 1
        if not self._older_open(gen):
            return
        self.waits += 1
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._waiting_for = gen
        timer = loop.call_later(timeout, self._expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self.waits_timed_out += 1
            waiter.set_result(None)
