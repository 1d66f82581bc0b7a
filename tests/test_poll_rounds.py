"""Aligned polling and one commit per poll round (decision 0020): the slot arithmetic, the
round counter the outbox writer waits on, and the whole path with real simulators, a real
broker and the daemon's own writer counters."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.engine.rounds import PollRounds, first_slot, next_slot
from cellctl.localbroker import Mosquitto, free_port
from cellctl.outbox.store import Record
from cellctl.testing import async_wait_until, modbus_device, running_daemon, write_config

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("now", "interval", "slot"),
    [
        (10.0, 1.0, 11),  # just polled on a slot: the next one, a whole interval later
        (10.4, 1.0, 11),  # at least half an interval later
        (10.6, 1.0, 12),  # the next slot is too close: the one after
        (0.123, 0.01, 13),
    ],
)
def test_first_slot_is_at_least_half_an_interval_away(now: float, interval: float, slot: int) -> None:
    assert first_slot(now, interval) == slot
    assert slot * interval >= now + interval / 2 - 1e-9


@pytest.mark.parametrize(
    ("slot", "now", "interval", "expected"),
    [
        (11, 11.2, 1.0, 12),  # on time
        (11, 12.0, 1.0, 12),  # finished right on the next slot: not an overrun
        (11, 12.5, 1.0, 13),  # overran one slot: skipped, not made up
        (11, 15.2, 1.0, 16),
    ],
)
def test_next_slot_skips_what_an_overrun_missed(slot: int, now: float, interval: float, expected: int) -> None:
    assert next_slot(slot, now, interval) == expected


async def test_settled_waits_for_the_polls_in_flight_but_not_for_later_ones() -> None:
    rounds = PollRounds()
    a, b = rounds.begin(), rounds.begin()
    waiter = asyncio.create_task(rounds.settled(10.0), name="settled")
    await asyncio.sleep(0)  # let it start waiting
    late = rounds.begin()  # started after the wait began: does not hold it
    rounds.end(a)
    await asyncio.sleep(0)
    assert not waiter.done()
    rounds.end(b)
    async with asyncio.timeout(5):
        await waiter
    assert rounds.in_flight == 1
    rounds.end(late)
    assert (rounds.waits, rounds.waits_timed_out, rounds.in_flight) == (1, 0, 0)


async def test_settled_is_bounded_when_a_poll_hangs() -> None:
    rounds = PollRounds()
    stuck = rounds.begin()
    async with asyncio.timeout(5):
        await rounds.settled(0.01)
    assert rounds.waits_timed_out == 1
    rounds.end(stuck)
    async with asyncio.timeout(5):
        await rounds.settled(0.01)  # nothing in flight: returns at once
    assert rounds.waits == 1


UNITS = 3  # per simulator; two simulators, so two TCP links
ROUNDS = 8  # measured after the warm-up


async def test_aligned_devices_scans_share_one_commit_per_round(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    """Six devices on two links, polled every 200 ms; the second link's simulator starts
    listening only after the first three devices are polling, so its devices connect at
    another moment (after a jittered reconnect delay). Aligned, after each device's first
    poll (at connect), every round's six scans are committed in one transaction, counted
    by the writer's own commit counter. (With `poll_phase: connect` the two links keep
    the phase of their connects and this fails.)"""
    units = dict.fromkeys(range(1, UNITS + 1), "bench")
    late_port = free_port()
    async with (
        SimModbusServer(units, tick=0.01, seed=1) as sim_a,
        SimModbusServer(units, tick=0.01, seed=2) as sim_b,
    ):
        ports = [await sim_a.serve_tcp(), late_port]
        devices = [
            modbus_device(f"m{k}{u}", "sim-bench", port, u, poll_interval=0.2, timeout=1.0)
            for k, port in enumerate(ports)
            for u in units
        ]
        config = write_config(tmp_path, broker.port, devices, cell=unique)
        async with running_daemon(config) as daemon:
            runners = daemon.cell.runners
            await async_wait_until(lambda: all(r.polls >= 2 for r in runners[:UNITS]), what="link A polled")
            await sim_b.serve_tcp(port=late_port)
            writer = daemon.writer
            # the bound is for loaded machines, not what this test is about: a round that
            # took longer would show as a split commit, not as a failure of the feature
            writer.gather_max_s = 2.0
            by_commit: dict[int, set[str]] = defaultdict(set)
            handed = writer.on_stored
            assert handed is not None

            def spy(batch: Sequence[Record], ids: range) -> None:
                for r in batch:
                    if r.topic.endswith("/data"):
                        by_commit[writer.cycles].add(r.stream)
                handed(batch, ids)

            writer.on_stored = spy
            ids = {d["id"] for d in devices}
            await async_wait_until(
                lambda: all(r.polls >= 2 for r in runners), what="every device polled twice"
            )
            by_commit.clear()
            start = min(r.polls for r in runners)
            await async_wait_until(
                lambda: min(r.polls for r in runners) >= start + ROUNDS,
                timeout=30,
                what=f"{ROUNDS} more rounds",
            )
            writer.on_stored = handed
            complete = [c for c, seen in by_commit.items() if seen == ids]
            assert len(complete) >= ROUNDS - 1, dict(by_commit)
            # every data message of those rounds went into one of them (the first and the
            # last round may be cut by the window)
            partial = [seen for c, seen in by_commit.items() if seen != ids]
            assert len(partial) <= 2, partial
            assert daemon.cell.rounds.waits >= ROUNDS - 1


@pytest.mark.parametrize(("gather", "waits_for_rounds"), [("round", True), ("turn", False)])
def test_commit_gather_decides_whether_the_writer_waits_for_rounds(
    gather: str, waits_for_rounds: bool, tmp_path: Path
) -> None:
    from cellctl.config.loader import load_cell
    from cellctl.daemon import Daemon

    devices = [modbus_device("m1", "sim-bench", 1502, 1)]
    config = write_config(tmp_path, 1883, devices, cell="c1", outbox={"fsync": "off", "commit_gather": gather})
    daemon = Daemon(load_cell(config))  # built, not run: no network
    try:
        assert (daemon.writer.rounds is daemon.cell.rounds) is waits_for_rounds
        assert daemon.writer.rounds is None or waits_for_rounds
    finally:
        daemon.outbox.close()


def test_the_state_refresher_sleeps_until_a_state_is_due(tmp_path: Path) -> None:
    """Defaults: a changed state at most every 5 s, every state at least every 60 s; the
    refresher wakes when one is due, and at least once a second to notice changes."""
    from cellctl.config.loader import load_cell
    from cellctl.encode.fanout import FanOut
    from cellctl.engine.cell import REFRESH_MAX, REFRESH_MIN, Cell

    devices = [modbus_device("m1", "sim-bench", 1502, 1)]
    config = write_config(tmp_path, 1883, devices, cell="c1", publish={"state_min_interval": 5})
    now = [100.0]
    cell = Cell(load_cell(config), FanOut(), clock=lambda: now[0])
    (runner,) = cell.runners
    assert runner.state_dirty
    assert cell._refresh_delay() == REFRESH_MIN  # never published: due at once
    runner.state_published_at, runner.state_dirty = 100.0, False
    assert cell._refresh_delay() == REFRESH_MAX  # nothing due for 60 s: wake to notice changes
    runner.state_dirty = True
    now[0] = 104.5
    assert cell._refresh_delay() == pytest.approx(0.5)  # the changed state is due at 105
