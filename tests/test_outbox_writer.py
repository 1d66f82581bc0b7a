"""The asyncio side of the outbox: group commit, acks from another thread, final commit
on cancellation, and a bounded backlog whose overflow is counted."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from cellctl.outbox import AppendResult, DropEvent, Fsync, Outbox, OutboxError, OutboxWriter, Record
from cellctl.outbox.writer import INLINE_MAX_BYTES, INLINE_MAX_RECORDS, DropLog
from cellctl.testing import async_wait_until

pytestmark = pytest.mark.timeout(60)


def rec(i: int) -> Record:
    return Record(f"dev{i % 4}", f"t/dev{i % 4}/data", f"{i}".encode(), qos=1)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 26, max_age_s=3600, fsync="off") as ob:
        yield ob


async def test_committed_records_are_handed_over_in_order_and_acks_from_a_thread_delete(outbox: Outbox) -> None:
    stored: list[tuple[Record, int]] = []

    def on_stored(batch: Sequence[Record], ids: range) -> None:
        stored.extend(zip(batch, ids, strict=True))

    writer = OutboxWriter(outbox, on_stored=on_stored)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(writer.run(), name="outbox-writer")
        for i in range(3000):
            assert writer.put(rec(i))
            if i % 500 == 0:
                await asyncio.sleep(0)  # let commits interleave with the intake
        await writer.flush()
        assert [r.payload for r, _ in stored] == [rec(i).payload for i in range(3000)]
        ids = [i for _, i in stored]
        assert ids == list(range(ids[0], ids[0] + 3000))
        assert writer.cycles < 3000  # batched, not one transaction per record
        t = threading.Thread(target=writer.ack, args=(ids[:2000],), name="fake-paho")
        t.start()
        t.join(timeout=5)
        await async_wait_until(lambda: len(outbox) == 1000, what="acks from another thread were applied")
        assert [m.id for m in outbox.pending(5)] == ids[2000:2005]
        task.cancel()


async def test_cancellation_commits_what_was_queued(outbox: Outbox) -> None:
    writer = OutboxWriter(outbox)
    task = asyncio.create_task(writer.run(), name="outbox-writer")
    await asyncio.sleep(0)
    for i in range(500):
        writer.put(rec(i))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(outbox) == 500
    assert [m.payload for m in outbox.pending(500)] == [rec(i).payload for i in range(500)]


async def test_backlog_overflow_is_counted_and_reported(outbox: Outbox) -> None:
    events: list[DropEvent] = []
    writer = OutboxWriter(outbox, on_drop=events.append, max_backlog=10)
    accepted = [writer.put(rec(i)) for i in range(15)]  # the task is not running yet: the backlog fills
    assert accepted == [True] * 10 + [False] * 5
    task = asyncio.create_task(writer.run(), name="outbox-writer")
    await writer.flush()
    await async_wait_until(lambda: bool(events), what="the backlog drop was reported")
    assert [(e.reason, e.count) for e in events] == [("backlog", 5)]
    assert outbox.stats().dropped_by_reason == {"backlog": 5}
    assert len(outbox) == 10
    assert writer.backlog_dropped == 5
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_call_runs_on_the_outbox_thread(outbox: Outbox) -> None:
    writer = OutboxWriter(outbox)
    task = asyncio.create_task(writer.run(), name="outbox-writer")
    writer.put(rec(1))
    await writer.flush()
    names = await writer.call(lambda ob: (threading.current_thread().name, len(ob.pending(10))))
    assert names[0].startswith("cellctl-outbox")
    assert names[1] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_disk_is_retried_without_losing_order(outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    real = outbox.commit
    failures = [2]

    def flaky(records: Sequence[Record], acks: Sequence[int], **kw: bool) -> AppendResult:
        if failures[0] > 0 and records:
            failures[0] -= 1
            raise OutboxError(outbox.path, "database or disk is full")
        return real(records, acks, **kw)

    monkeypatch.setattr(outbox, "commit", flaky)
    stored: list[bytes] = []
    writer = OutboxWriter(outbox, on_stored=lambda batch, ids: stored.extend(r.payload for r in batch))
    task = asyncio.create_task(writer.run(), name="outbox-writer")
    for i in range(50):
        writer.put(rec(i))
    async with asyncio.timeout(10):
        await writer.flush()
    assert writer.commit_failures == 2
    assert stored == [rec(i).payload for i in range(50)]
    assert [m.payload for m in outbox.pending(100)] == stored
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_markers_fire_at_their_place_in_the_record_stream(outbox: Outbox) -> None:
    """after_put places an event between records although records are handed over only
    after their commit, in batches: the publisher's births and going live rely on it."""
    seen: list[str] = []

    last: list[int] = []

    def on_stored(batch: Sequence[Record], ids: range) -> None:
        seen.extend(r.payload.decode() for r in batch)
        last.append(ids[-1])

    writer = OutboxWriter(outbox, on_stored=on_stored)
    writer.after_put(lambda: seen.append("M0"))  # nothing pending: at once
    assert seen == ["M0"]
    for i in range(300):  # one big batch once the task runs
        writer.put(rec(i))
        if i in (0, 99, 299):
            writer.after_put(lambda i=i: seen.append(f"M{i}"))
    writer.after_put(lambda: seen.append("end"))
    task = asyncio.create_task(writer.run(), name="outbox-writer")
    await writer.flush()
    await async_wait_until(lambda: seen[-1] == "end", what="the last marker fired")
    expected = ["M0", "0", "M0"] + [str(i) for i in range(1, 100)] + ["M99"]
    expected += [str(i) for i in range(100, 300)] + ["M299", "end"]
    assert seen == expected
    assert writer.cycles <= -(-300 // INLINE_MAX_RECORDS) + 1  # batched all the same (in slices on the loop)
    assert writer.handed_id == last[-1] == outbox.last_id()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_minimum_commit_interval_batches_a_trickle(outbox: Outbox) -> None:
    stored: list[bytes] = []
    writer = OutboxWriter(
        outbox, on_stored=lambda batch, ids: stored.extend(r.payload for r in batch), min_interval_s=0.05
    )
    task = asyncio.create_task(writer.run(), name="outbox-writer")
    for i in range(40):  # one record per loop turn: without the interval, about one commit each
        writer.put(rec(i))
        await asyncio.sleep(0.002)
    async with asyncio.timeout(5):
        await writer.flush()
    assert stored == [rec(i).payload for i in range(40)]
    assert writer.cycles < 10
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_drops_are_logged_as_a_transition_then_periodic_summaries(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16 item 7: about 16 warnings/s in a long outage, one per commit."""
    now = [0.0]
    drops = DropLog(interval=30.0, clock=lambda: now[0])
    for i in range(16 * 120):  # two minutes of a drop at every commit
        now[0] = i / 16
        drops.add(DropEvent("max_bytes", 10, 1000, {"m1": 10}, None, None))
    lines = [line for line in capsys.readouterr().out.splitlines() if "outbox_dropped" in line]
    assert drops.lines == len(lines) == 4  # at 0 s, then one summary per 30 s
    assert "first=True" in lines[0]
    assert "count=4800" in lines[1]  # everything since the line before, nothing lost from the count


@pytest.mark.parametrize(("fsync", "inline"), [("off", True), ("batch", True), ("always", False)])
async def test_commits_run_on_the_loop_unless_every_commit_syncs(tmp_path: Path, fsync: Fsync, inline: bool) -> None:
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 26, max_age_s=3600, fsync=fsync) as ob:
        stored: list[bytes] = []
        writer = OutboxWriter(ob, on_stored=lambda batch, ids: stored.extend(r.payload for r in batch))
        assert writer.inline is inline
        task = asyncio.create_task(writer.run(), name="outbox-writer")
        for i in range(20):
            writer.put(rec(i))
        async with asyncio.timeout(10):
            await writer.flush()
        assert stored == [rec(i).payload for i in range(20)]
        assert (writer.inline_commits > 0) is inline
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_foreign_write_lock_never_stalls_the_loop(tmp_path: Path) -> None:
    """An inline commit does not wait for a lock it cannot get: the commit goes to the
    thread (which waits, and retries), the loop keeps running, nothing is lost."""
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_bytes=1 << 26, max_age_s=3600, fsync="batch", busy_timeout_s=2.0) as ob:
        stored: list[bytes] = []
        writer = OutboxWriter(ob, on_stored=lambda batch, ids: stored.extend(r.payload for r in batch))
        task = asyncio.create_task(writer.run(), name="outbox-writer")
        foreign = sqlite3.connect(path, isolation_level=None)
        foreign.execute("BEGIN IMMEDIATE")  # holds the write lock
        ticks: list[float] = []
        loop = asyncio.get_running_loop()
        try:
            for i in range(10):
                writer.put(rec(i))
            until = loop.time() + 3.0
            while loop.time() < until:  # bounded: 3 s of 10 ms turns
                ticks.append(loop.time())
                await asyncio.sleep(0.01)
            assert stored == []  # nothing handed over uncommitted
        finally:
            foreign.execute("ROLLBACK")
            foreign.close()
        async with asyncio.timeout(20):
            await writer.flush()
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert max(gaps) < 1.0, f"the loop stalled {max(gaps):.2f} s"
        assert stored == [rec(i).payload for i in range(10)]
        assert [m.payload for m in ob.pending(100)] == stored
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_checkpoints_of_inline_commits_run_on_the_outbox_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 26, max_age_s=3600, fsync="batch", sync_interval_s=0.05) as ob:
        threads: list[str] = []
        real = ob.sync

        def sync() -> None:
            threads.append(threading.current_thread().name)
            real()

        monkeypatch.setattr(ob, "sync", sync)
        writer = OutboxWriter(ob)
        task = asyncio.create_task(writer.run(), name="outbox-writer")
        async with asyncio.timeout(30):
            while len(threads) < 3:  # bounded by the timeout
                writer.put(rec(len(threads)))
                await writer.flush()
                await asyncio.sleep(0.06)
        assert writer.inline_commits > 0
        assert all(name.startswith("cellctl-outbox") for name in threads), threads
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_burst_is_committed_on_the_loop_in_slices_one_per_loop_turn(outbox: Outbox) -> None:
    """Decision 0018: no commit on the loop takes more than INLINE_MAX_RECORDS, and the
    loop runs other work between the slices of a burst."""
    turns = 0

    def tick() -> None:
        nonlocal turns
        turns += 1
        if turns < 100_000:
            asyncio.get_running_loop().call_soon(tick)

    handed: list[tuple[int, int]] = []  # (records handed over, loop turns seen so far)
    stored: list[bytes] = []

    def on_stored(batch: Sequence[Record], ids: range) -> None:
        handed.append((len(batch), turns))
        stored.extend(r.payload for r in batch)

    writer = OutboxWriter(outbox, on_stored=on_stored, idle_interval_s=600)
    task = asyncio.create_task(writer.run(), name="outbox-writer")
    n = INLINE_MAX_RECORDS * 4 + 3
    for i in range(n):  # one loop turn: one burst
        writer.put(rec(i))
    asyncio.get_running_loop().call_soon(tick)
    async with asyncio.timeout(10):
        await writer.flush()
    assert stored == [rec(i).payload for i in range(n)]
    assert writer.inline_commits == 5
    assert [size for size, _ in handed] == [INLINE_MAX_RECORDS] * 4 + [3]
    seen = [t for _, t in handed]
    assert seen == sorted(set(seen)), f"slices in one loop turn: {handed}"
    big = Record("d", "t/big", b"x" * (INLINE_MAX_BYTES + 1), 1, False)
    writer.put(big)  # a single record beyond the inline bound: on the thread
    async with asyncio.timeout(10):
        await writer.flush()
    assert writer.inline_commits == 5
    assert stored[-1] == big.payload
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_checkpoint_neither_stops_commits_nor_repeats_its_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 26, max_age_s=3600, fsync="batch", sync_interval_s=0.02) as ob:
        real, failures = ob.sync, [3]

        def sync() -> None:
            if failures[0] > 0:
                failures[0] -= 1
                ob._last_sync = time.monotonic()  # as the real one does before it fails
                raise OutboxError(ob.path, "disk I/O error")
            real()

        monkeypatch.setattr(ob, "sync", sync)
        stored: list[bytes] = []
        writer = OutboxWriter(ob, on_stored=lambda batch, ids: stored.extend(r.payload for r in batch))
        task = asyncio.create_task(writer.run(), name="outbox-writer")
        async with asyncio.timeout(30):
            i = 0
            while failures[0] > 0 or writer.checkpoint_failures:  # bounded by the timeout
                writer.put(rec(i))
                i += 1
                await writer.flush()
                await asyncio.sleep(0.03)
        assert stored == [rec(j).payload for j in range(i)]
        out = capsys.readouterr().out
        assert out.count("outbox_checkpoint_failing") == 1
        assert "outbox_checkpoint_recovered" in out
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
