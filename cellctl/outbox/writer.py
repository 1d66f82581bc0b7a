"""Group commit between the asyncio event loop and the outbox.

`put()` is what the hot path calls (the engine's DeviceSink methods are synchronous): an
O(1) append to an in-memory backlog, never a disk wait. One task moves the backlog to
SQLite, one transaction per cycle, and hands the committed records with their ids to
`on_stored` (the publisher) on the event loop. Everything put in one loop turn goes into
one transaction, and while a commit runs the next batch gathers, so the batch size
follows the load by itself. There is no timer in the path.

Where the commit runs (decision 0015): with `fsync` batch or off, on the loop itself
(`inline`): a WAL commit without fsync is a write() into the page cache, about 35 us of
CPU for a scan's message, which is less than the two thread hand-offs it used to take.
No commit there is larger than INLINE_MAX_*: a burst (per_point mode, a reload) is
committed in such slices, one per loop turn (decision 0018). None waits for a lock (a
commit that finds the write lock taken goes to the thread), and none includes a
checkpoint (checkpoints, which sync the disk, run on the thread every `sync_interval_s`). With `fsync: always` every commit syncs, so
it runs on the dedicated thread.

Acks arrive from the publisher (`on_publish`); `ack()` only queues the ids, and they are
deleted in the next cycle's transaction together with new appends. Acks alone start a
cycle only after `ack_delay_s` (50 ms): under load they ride along with the records'
commits instead of doubling the transactions, and a crash can resend at most what was
acknowledged in that last moment (at-least-once allows it).

`min_interval_s` (`outbox.commit_interval`) trades latency for CPU: a commit starts at
most that often, so at high message rates each transaction carries more records. 0 (the
default) commits as soon as records arrive.

`rounds` (the engine's `PollRounds`) lets a commit gather a poll round: before a commit
the writer waits until every poll in flight at that moment has delivered its reading (at
most `gather_max_s`, 5 ms), so the scans of devices polled together (aligned polling,
decision 0020) share one transaction instead of one each. Nothing is published before
its commit either way; the wait only adds that much to a record's latency.

`after_put(fn)` runs `fn` once every record put before it has been handed to
`on_stored`: the publisher uses it to place session events (Sparkplug births and
deaths, going live after a reconnect) at an exact point of the record stream, although
records reach it only after their commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import structlog

from cellctl.outbox.store import AppendResult, DropEvent, Outbox, OutboxBusy, OutboxError, Record

log = structlog.get_logger("cellctl.outbox")

T = TypeVar("T")

# Inline commits (on the loop) at most this large; larger ones go to the thread.
INLINE_MAX_RECORDS = 64
INLINE_MAX_BYTES = 128 * 1024
INLINE_MAX_ACKS = 256
_RETRY_MIN_S = 0.1
_RETRY_MAX_S = 5.0

# What one queued record costs beyond its topic and payload (the Record, str and bytes
# headers, the deque slot), measured with tracemalloc; used for the bounds in bytes.
GATHER_MAX_S = 0.005  # the longest a commit waits for the polls of its round

RECORD_OVERHEAD = 200
MAX_BACKLOG_BYTES = 4 * 2**20


def record_size(record: Record) -> int:
    """Bytes one queued record holds, for the bounds in bytes (an estimate: payloads are
    assumed right-sized, see cellctl/encode/uns.py `compact`)."""
    return len(record.payload) + len(record.topic) + RECORD_OVERHEAD


class Rounds(Protocol):
    """What the writer needs of the engine's poll rounds (cellctl.engine.rounds)."""

    async def settled(self, timeout: float) -> None:
        """Return once the polls in flight now have ended, or after `timeout` s."""
        ...


class DropLog:
    """Drops are logged as a transition and then as periodic summaries, never once per
    commit (a long outage at the byte bound drops at every commit): the first drop of a
    reason at once (`outbox_dropped`), then at most one `outbox_dropped` line per reason
    and `interval` with everything dropped since the last line."""

    def __init__(self, interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.lines = 0
        self._last: dict[str, float] = {}
        self._pending: dict[str, tuple[int, int, Counter[str]]] = {}

    def add(self, event: DropEvent) -> None:
        count, size, streams = self._pending.get(event.reason, (0, 0, Counter()))
        streams.update(event.by_stream)
        count, size = count + event.count, size + event.bytes
        now = self.clock()
        last = self._last.get(event.reason)
        if last is not None and now - last < self.interval:
            self._pending[event.reason] = (count, size, streams)
            return
        self._pending.pop(event.reason, None)
        self._last[event.reason] = now
        self.lines += 1
        log.warning(
            "outbox_dropped",
            reason=event.reason,
            count=count,
            bytes=size,
            streams=dict(streams.most_common(20)),
            first=last is None,
            over_s=None if last is None else round(now - last, 1),
        )


class OutboxWriter:
    """Owns the outbox's thread. Run `run()` as a named task in the daemon's TaskGroup.

    `max_backlog` (records) and `max_backlog_bytes` bound memory while the disk is slower
    than the intake; beyond either, new records are refused and counted as drops with
    reason "backlog" (reported through `on_drop` like every other drop)."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        on_stored: Callable[[Sequence[Record], range], None] | None = None,
        on_drop: Callable[[DropEvent], None] | None = None,
        max_batch: int = 1000,
        max_backlog: int = 200_000,
        max_backlog_bytes: int = MAX_BACKLOG_BYTES,
        idle_interval_s: float = 1.0,
        ack_delay_s: float = 0.05,
        min_interval_s: float = 0.0,
        inline: bool | None = None,
        rounds: Rounds | None = None,
        gather_max_s: float = GATHER_MAX_S,
    ) -> None:
        self.outbox = outbox
        self.on_stored = on_stored
        self.on_drop = on_drop
        self.drop_log = DropLog()
        self.max_batch = max_batch
        self.max_backlog = max_backlog
        self.max_backlog_bytes = max_backlog_bytes
        self.backlog_bytes = 0  # record_size() of what is in _backlog
        self.idle_interval_s = idle_interval_s
        self.ack_delay_s = ack_delay_s
        self.min_interval_s = min_interval_s
        self.rounds = rounds
        self.gather_max_s = gather_max_s
        # Commit on the loop itself unless every commit waits for the disk (fsync=always):
        # a WAL commit without fsync is a write() into the page cache (tens of us), far less
        # than the two thread hand-offs it would take. Checkpoints, which sync, stay on the
        # thread; a commit that would wait for a foreign lock goes to the thread too.
        self.inline = outbox.fsync != "always" if inline is None else inline
        self.inline_commits = 0
        self.checkpoint_failures = 0  # in a row
        self._sync_task: asyncio.Future[None] | None = None
        self._last_start = 0.0
        self._continuing = False  # the last cycle left work for the next one
        self._acks_left = False  # the last cycle took only INLINE_MAX_ACKS of the acks
        self.committed_total = 0
        self.cycles = 0
        self.backlog_dropped = 0
        self.commit_failures = 0
        self._backlog: deque[Record] = deque()
        self._acks: deque[int] = deque()  # appended from any thread
        self._refused = 0  # backlog drops not yet reported
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake = asyncio.Event()
        self._ack_wake_pending = threading.Event()
        self._ack_timer: asyncio.TimerHandle | None = None
        self._progress = asyncio.Condition()
        self._flushers = 0
        self._idle_due = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellctl-outbox")
        self._put_total = 0
        self._done_total = 0
        self._markers: deque[tuple[int, Callable[[], None]]] = deque()  # (put count, callback)
        # the id of the last record handed to on_stored (or the newest stored at start)
        self.handed_id = outbox.last_id()
        self._inflight: tuple[asyncio.Future[AppendResult], list[Record], int] | None = None

    # -- called from the event loop (hot path) ------------------------------------------

    def put(self, record: Record) -> bool:
        """Queue one record for the next commit. False if refused (backlog full)."""
        size = len(record.payload) + len(record.topic) + RECORD_OVERHEAD  # record_size(), inlined
        if len(self._backlog) >= self.max_backlog or self.backlog_bytes + size > self.max_backlog_bytes:
            self._refused += 1
            self.backlog_dropped += 1
            if self._refused == 1:
                self._wake.set()  # make the next cycle report it
            return False
        self._backlog.append(record)
        self.backlog_bytes += size
        self._put_total += 1
        self._wake.set()
        return True

    def after_put(self, fn: Callable[[], None]) -> None:
        """Call `fn` (on the loop) right after every record put so far was handed to
        `on_stored`; at once if none is waiting. Markers keep the order they were set in."""
        if self._done_total >= self._put_total and not self._markers:
            fn()
            return
        self._markers.append((self._put_total, fn))

    # -- called from any thread ---------------------------------------------------------------

    def ack(self, ids: Iterable[int]) -> None:
        """Queue acknowledged ids (any thread); deleted in the next cycle, which they
        start themselves after `ack_delay_s` if no record starts one before."""
        self._acks.extend(ids)
        loop = self._loop
        if loop is not None and not self._ack_wake_pending.is_set():
            self._ack_wake_pending.set()
            if threading.get_ident() == self._loop_thread:
                loop.call_soon(self._wake_for_acks)  # the usual case: no self-pipe wake-up
                return
            with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                loop.call_soon_threadsafe(self._wake_for_acks)

    def _wake_for_acks(self) -> None:
        if self.ack_delay_s <= 0:
            self._wake.set()
        elif self._ack_timer is None:  # one timer at a time, whatever the ack rate
            self._ack_timer = asyncio.get_running_loop().call_later(self.ack_delay_s, self._ack_time)

    def _ack_time(self) -> None:
        self._ack_timer = None
        if self._acks:
            self._wake.set()

    # -- the task ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Commit until cancelled; then one last bounded commit of what is queued."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        try:
            failing_since: float | None = None
            delay = _RETRY_MIN_S
            self._idle_tick()
            while True:
                await self._wake.wait()
                if (
                    self.rounds is not None
                    and not self._continuing  # the next slice of a burst goes at once
                    and self._backlog
                    and len(self._backlog) < self.max_batch
                ):
                    # one poll round, one commit: wait (bounded) for the scans still coming
                    await self.rounds.settled(self.gather_max_s)
                idle, self._idle_due = self._idle_due, False
                self._wake.clear()
                if not (idle or self._backlog or self._acks or self._refused):
                    continue
                continuing, self._continuing = self._continuing, False
                if self.min_interval_s > 0 and not continuing and len(self._backlog) < self.max_batch:
                    # at most one commit per interval: under load, more records per
                    # transaction (less CPU) for at most that much latency
                    wait = self._last_start + self.min_interval_s - self._loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                self._last_start = self._loop.time()
                failure: OutboxError | None = None
                try:
                    await self._cycle()
                except OutboxError as exc:
                    failure = exc
                if failure is not None:
                    # disk full, a foreign lock, I/O errors: keep the work (the backlog bound
                    # turns a long failure into counted drops) and retry, never kill the daemon
                    if failing_since is None:
                        failing_since = time.monotonic()
                        log.error("outbox_commit_failing", error=str(failure), backlog=len(self._backlog))
                    self.commit_failures += 1
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_S)
                    self._wake.set()
                    continue
                if failing_since is not None:
                    log.warning(
                        "outbox_commit_recovered", failed_for_s=round(time.monotonic() - failing_since, 1)
                    )
                    failing_since, delay = None, _RETRY_MIN_S
                if self._backlog or self._acks_left:
                    # more than one slice: the next one in the next loop turn, at once
                    self._continuing = True
                    self._wake.set()
                    await asyncio.sleep(0)
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            try:
                async with asyncio.timeout(2.0):
                    if self._inflight is not None:  # a commit the cancellation interrupted
                        fut, batch, refused = self._inflight
                        self._inflight = None
                        self._after(batch, refused, await fut)
                    while self._backlog or self._acks:  # bounded by the queue and the timeout
                        await self._cycle()
            except (TimeoutError, asyncio.CancelledError, OutboxError) as exc:
                log.warning(
                    "outbox_final_commit_incomplete",
                    backlog=len(self._backlog),
                    acks=len(self._acks),
                    error=repr(exc),
                )
            self._executor.shutdown(wait=False)

    def _idle_tick(self) -> None:
        """A cycle every `idle_interval_s` whatever happens (one timer, not one timeout per
        wait): the age bound applies to an idle outbox too."""
        assert self._loop is not None
        self._idle_due = True
        self._wake.set()
        self._idle_timer = self._loop.call_later(self.idle_interval_s, self._idle_tick)

    async def _notify_progress(self) -> None:
        if self._flushers:  # only flush() waits on it
            async with self._progress:
                self._progress.notify_all()

    async def _cycle(self) -> None:
        self._ack_wake_pending.clear()
        n = self._inline_count() if self.inline else 0
        inline = n > 0 or (self.inline and not self._backlog)
        if not inline:
            n = min(len(self._backlog), self.max_batch)
        batch = [self._backlog.popleft() for _ in range(n)]
        self.backlog_bytes -= sum(map(record_size, batch))
        n_acks = min(len(self._acks), INLINE_MAX_ACKS) if inline else len(self._acks)
        acks = [self._acks.popleft() for _ in range(n_acks)]
        self._acks_left = n_acks == INLINE_MAX_ACKS and bool(self._acks)
        refused, self._refused = self._refused, 0
        loop = asyncio.get_running_loop()
        if inline:
            try:
                result = self.outbox.commit(batch, acks, nowait=True, sync=False)
            except OutboxBusy:
                pass  # someone else holds the write lock: wait for it on the thread below
            except Exception:
                self._put_back(batch, acks, refused)
                raise
            else:
                self.inline_commits += 1
                self._after(batch, refused, result)
                self._checkpoint_if_due(loop)
                await self._notify_progress()
                return
        fut = loop.run_in_executor(self._executor, self.outbox.commit, batch, acks)
        try:
            result = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # the commit goes on in its thread: keep it, so run() finishes it and neither
            # loses nor commits twice what it holds
            self._inflight = (fut, batch, refused)
            raise
        except Exception:
            self._put_back(batch, acks, refused)
            raise
        self._after(batch, refused, result)
        await self._notify_progress()

    def _put_back(self, batch: list[Record], acks: list[int], refused: int) -> None:
        """A commit failed, so nothing of it was committed (one transaction): put the
        work back in front, in order, for the next cycle (both commit paths use this)."""
        self._backlog.extendleft(reversed(batch))
        self.backlog_bytes += sum(map(record_size, batch))
        self._acks.extendleft(reversed(acks))
        self._refused += refused

    def _inline_count(self) -> int:
        """How many records from the front of the backlog the next commit on the loop
        takes: at most INLINE_MAX_RECORDS and INLINE_MAX_BYTES of payload, so no commit
        holds the loop for more than about a millisecond. A burst (per_point mode, a
        reload) is committed in such slices, one per loop turn (decision 0018): on the
        thread, each row's GIL hand-back queued behind the loop (the convoy effect) and
        per_point commits lagged the intake. 0 when the first record alone is larger
        (it goes to the thread)."""
        n = total = 0
        for rec in itertools.islice(self._backlog, INLINE_MAX_RECORDS):
            total += len(rec.payload)
            if total > INLINE_MAX_BYTES:
                break
            n += 1
        return n

    def _checkpoint_if_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Inline commits leave checkpoints (which sync the disk) to the thread: at most
        one at a time, every `sync_interval_s`."""
        if self._sync_task is not None or not self.outbox.sync_due():
            return
        self._sync_task = loop.run_in_executor(self._executor, self.outbox.sync)
        self._sync_task.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, fut: asyncio.Future[None]) -> None:
        """Logged as a transition (failing, recovered), not once a second."""
        self._sync_task = None
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            self.checkpoint_failures += 1
            if self.checkpoint_failures == 1:
                log.warning("outbox_checkpoint_failing", error=str(exc))
        elif self.checkpoint_failures:
            log.info("outbox_checkpoint_recovered", failures=self.checkpoint_failures)
            self.checkpoint_failures = 0

    def _after(self, batch: list[Record], refused: int, result: AppendResult) -> None:
        self.cycles += 1
        self.committed_total += len(batch)
        if refused:
            self.outbox.note_drop("backlog", refused)
            self._report(DropEvent("backlog", refused, 0, {}, None, None))
        for d in result.drops:
            self._report(d)
        self._hand_over(batch, result.ids)

    def _hand_over(self, batch: list[Record], ids: range) -> None:
        """Pass committed records on, firing the markers that fall between them."""
        start, markers = 0, self._markers
        while start < len(batch) or (markers and markers[0][0] <= self._done_total):
            if markers and markers[0][0] <= self._done_total:
                markers.popleft()[1]()
                continue
            end = len(batch)
            if markers:
                end = min(end, start + markers[0][0] - self._done_total)
            if self.on_stored is not None:
                self.on_stored(batch[start:end], ids[start:end])
            self.handed_id = ids[end - 1]
            self._done_total += end - start
            start = end

    def _report(self, event: DropEvent) -> None:
        self.drop_log.add(event)
        if self.on_drop is not None:
            self.on_drop(event)

    # -- helpers for the loop -----------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until every record put before this call is committed (and handed over).
        While the disk fails this waits too: bound it with `asyncio.timeout`."""
        target = self._put_total
        self._wake.set()
        self._flushers += 1
        try:
            async with self._progress:
                await self._progress.wait_for(lambda: self._done_total >= target)
        finally:
            self._flushers -= 1

    async def call(self, fn: Callable[[Outbox], T]) -> T:
        """Run `fn(outbox)` (pending, stats, ...) on the outbox's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self.outbox)

    @property
    def backlog(self) -> int:
        return len(self._backlog)
