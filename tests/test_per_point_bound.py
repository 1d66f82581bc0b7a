"""per_point mode's queues are bounded in bytes (issue 15), against a real broker and a
simulated bench device whose every value changes every scan:

- the writer's backlog (records not committed yet): past its bound new records are refused,
  counted as `backlog` drops, and announced like every outbox drop (an `outbox_dropped`
  event on `<root>/events`, the figures on `<root>/outbox`);
- the live records waiting for the in-flight window: with the broker frozen (SIGSTOP), they
  stay under their bound and the delivery falls back to replay from the outbox, so when
  the broker is back every data message arrives, none lost.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.outbox import OutboxWriter, Record
from cellctl.outbox.store import Outbox
from cellctl.outbox.writer import RECORD_OVERHEAD, record_size
from cellctl.testing import (
    Collector,
    async_wait_until,
    modbus_device,
    root_topic,
    running_daemon,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

POINTS = 20  # value registers read per scan (of 96); the rest are disabled


@pytest.fixture
async def bench_device() -> AsyncIterator[int]:
    async with SimModbusServer({1: "bench"}, tick=0.005, seed=11) as sim:
        yield await sim.serve_tcp()


def per_point_config(tmp_path: Path, broker: Mosquitto, port: int, unique: str) -> Path:
    disabled = [f"r{i:03d}" for i in range(4 + POINTS, 100)]
    device = modbus_device("b1", "sim-bench", port, 1, poll_interval=0.02, disabled_points=disabled)
    return write_config(
        tmp_path, broker.port, [device], cell=unique, publish={"prefix": "uns/v1", "mode": "per_point"}
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 26, max_age_s=3600, fsync="off") as ob:
        yield ob


async def test_the_writer_backlog_is_bounded_in_bytes(outbox: Outbox) -> None:
    rec = Record("d", "uns/v1/x/d/points/p", b"x" * 300, 1, True)
    size = record_size(rec)
    assert size == len(rec.topic) + 300 + RECORD_OVERHEAD
    events: list[Any] = []
    writer = OutboxWriter(outbox, on_drop=events.append, max_backlog_bytes=10 * size)
    accepted = [writer.put(rec) for _ in range(15)]  # the task is not running: the backlog fills
    assert accepted == [True] * 10 + [False] * 5
    assert writer.backlog_bytes == 10 * size
    task = asyncio.create_task(writer.run(), name="outbox-writer")
    await writer.flush()
    await async_wait_until(lambda: bool(events), what="the backlog drop was reported")
    assert [(e.reason, e.count) for e in events] == [("backlog", 5)]
    assert outbox.stats().dropped_by_reason == {"backlog": 5}
    assert len(outbox) == 10
    assert writer.backlog_bytes == 0
    assert writer.put(rec)  # room again
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_records_over_the_writer_bound_are_counted_and_announced(
    tmp_path: Path, broker: Mosquitto, bench_device: int, unique: str
) -> None:
    root = root_topic(unique)
    collector = Collector(broker.port, f"{root}/#")
    try:
        async with running_daemon(per_point_config(tmp_path, broker, bench_device, unique)) as daemon:
            # a bound smaller than one scan's point messages: every scan overflows it
            daemon.writer.max_backlog_bytes = 3 * (RECORD_OVERHEAD + 150)
            event = await async_wait_until(
                lambda: [m.json() for m in collector.on(f"{root}/events") if m.json().get("reason") == "backlog"],
                timeout=30,
                what="an outbox_dropped event for the backlog",
            )
            assert event[0]["event"] == "outbox_dropped"
            assert event[0]["count"] > 0
            # the figures are read when due (every few seconds): a later one counts them all
            figures = await async_wait_until(
                lambda: [
                    m.json()
                    for m in collector.on(f"{root}/outbox")
                    if m.json()["dropped"].get("backlog", 0) >= event[0]["count"]
                ],
                timeout=30,
                what="the outbox figures counting the announced backlog drops",
            )
            assert figures[-1]["dropped_total"] >= event[0]["count"]
            assert daemon.writer.backlog_dropped >= event[0]["count"]
            assert daemon.writer.backlog_bytes <= daemon.writer.max_backlog_bytes
    finally:
        collector.close()


async def test_a_frozen_broker_keeps_the_waiting_line_bounded_and_loses_nothing(
    tmp_path: Path, broker_fresh: Mosquitto, bench_device: int, unique: str
) -> None:
    root = root_topic(unique)
    collector = Collector(broker_fresh.port, f"{root}/b1/data")
    pid = broker_fresh.pid
    assert pid is not None
    frozen = False
    try:
        async with running_daemon(per_point_config(tmp_path, broker_fresh, bench_device, unique)) as daemon:
            uns = daemon.uns
            assert uns is not None
            uns.max_waiting_bytes = 64 * 1024  # ~200 point messages: reached within a second
            await async_wait_until(lambda: len(collector.on("/data")) >= 5, timeout=30, what="data flowing")
            os.kill(pid, signal.SIGSTOP)  # no PUBACKs: the window fills, then the waiting line
            frozen = True
            peak = 0

            def fell_behind() -> bool:
                nonlocal peak
                peak = max(peak, uns._waiting_bytes)
                return uns.catch_ups > 0

            await async_wait_until(fell_behind, timeout=30, interval=0.005, what="the delivery falling behind")
            assert peak <= uns.max_waiting_bytes
            os.kill(pid, signal.SIGCONT)
            frozen = False
            last = daemon.publisher._seq["b1"] if daemon.publisher is not None else 0
            assert last > 0

            def seqs() -> set[int]:
                return {m.json()["seq"] for m in collector.on("/data")}

            first = min(seqs())
            await async_wait_until(
                lambda: set(range(first, last + 1)) <= seqs(),
                timeout=60,
                what=f"every data message {first}..{last} at the subscriber",
            )
            assert uns.replay_published > 0  # what fell behind came from the outbox
    finally:
        if frozen:
            os.kill(pid, signal.SIGCONT)
        collector.close()
