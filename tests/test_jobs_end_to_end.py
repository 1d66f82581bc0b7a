"""A job record and its events over MQTT from a scripted PLC (issue 11, first slice): the
profile's `job:` and `counters:` points drive it; counts survive a uint32 wrap; the record
is retained at `<root>/<device>/job`, the events go to `<root>/<device>/events` through the
outbox, and the device's state carries the current hour's OEE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, modbus_device, root_topic, running_daemon, write_config
from cellctl.testing.registers import text_registers as text
from cellctl.testing.registers import words32

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def plc() -> AsyncIterator[tuple[SimModbusServer, int]]:
    async with SimModbusServer({2: "blank"}, tick=0.05, seed=1) as sim:  # nothing moves by itself
        yield sim, await sim.serve_tcp()


async def test_a_job_with_a_counter_wrap_is_published_with_its_events(
    plc: tuple[SimModbusServer, int], broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    sim, port = plc
    unit = sim.unit(2)
    unit.load("holding", 0, [1])  # idle
    unit.load("holding", 4, words32(2**32 - 3))  # good parts, about to wrap
    unit.load("holding", 6, words32(10))  # scrap
    config = write_config(
        tmp_path,
        broker.port,
        [modbus_device("plc", "sim-machine-plc", port, 2, poll_interval=0.05)],
        cell=unique,
    )
    c = Collector(broker.port, f"{root_topic(unique)}/#")
    try:
        async with running_daemon(config):
            await c.until(lambda _m: c.on("/plc/state"), what="the PLC online")
            unit.load("holding", 10, text("BRACKET"))  # a program: the job starts
            unit.load("holding", 0, [2])  # running
            await c.until(
                lambda _m: [m for m in c.on("/plc/events") if m.json()["event"] == "job_started"],
                what="started",
            )
            unit.load("holding", 4, words32(4))  # +7 good across the wrap
            unit.load("holding", 6, words32(11))  # +1 scrap
            await c.until(
                lambda _m: (j := c.on("/plc/job")) and j[-1].json()["produced"] == 8,
                what="the counts in the job",
            )
            unit.load("holding", 0, [3])  # feed hold
            await c.until(
                lambda _m: [m for m in c.on("/plc/events") if m.json()["event"] == "job_paused"],
                what="paused",
            )
            unit.load("holding", 10, text("FLANGE"))  # the next program: this job ends
            await c.until(
                lambda _m: [m for m in c.on("/plc/events") if m.json()["event"] == "job_aborted"],
                what="ended",
            )
            state = await c.until(
                lambda _m: (s := c.on("/plc/state")) and "oee" in s[-1].json() and s[-1].json()
            )
    finally:
        c.close()
    events = [m.json() for m in c.on("/plc/events")]
    kinds = [e["event"] for e in events]
    assert kinds[:4] == ["job_started", "job_paused", "job_aborted", "job_started"]
    ended = events[2]["job"]
    assert ended["job_id"] == "BRACKET"
    assert (ended["produced"], ended["good"], ended["scrap"]) == (8, 7, 1)
    assert ended["reason"] == "next job"
    assert events[3]["job"]["job_id"] == "FLANGE"
    late = Collector(broker.port, f"{root_topic(unique)}/plc/job")  # a consumer that comes later
    try:
        job = await late.until(lambda m: m and m[-1].json(), what="the retained job record")
    finally:
        late.close()
    assert job["job_id"] == "FLANGE"
    assert set(state["oee"]) >= {"availability", "performance", "quality", "oee", "seconds"}


async def test_a_restart_mid_job_continues_the_job_or_closes_it_as_interrupted(
    plc: tuple[SimModbusServer, int], broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    """Issue 11 item 3: counts never restart at zero and nothing is counted twice."""
    sim, port = plc
    unit = sim.unit(2)
    unit.load("holding", 0, [2])
    unit.load("holding", 4, words32(100))
    unit.load("holding", 10, text("BRACKET"))
    config = write_config(
        tmp_path,
        broker.port,
        [modbus_device("plc", "sim-machine-plc", port, 2, poll_interval=0.05)],
        cell=unique,
    )
    c = Collector(broker.port, f"{root_topic(unique)}/#")

    def events() -> list[dict[str, object]]:
        return [m.json() for m in c.on("/plc/events")]

    try:
        async with running_daemon(config):
            await c.until(lambda _m: [e for e in events() if e["event"] == "job_started"], what="started")
            unit.load("holding", 4, words32(105))
            await c.until(lambda _m: (j := c.on("/plc/job")) and j[-1].json()["good"] == 5, what="5 good")
        unit.load("holding", 4, words32(108))  # 3 more parts while cellctl is down
        async with running_daemon(config):
            await c.until(lambda _m: [e for e in events() if e["event"] == "job_resumed"], what="resumed")
            await c.until(
                lambda _m: (j := c.on("/plc/job")) and j[-1].json()["good"] == 8, what="8 good, not 3 or 0"
            )
        unit.load("holding", 10, text("FLANGE"))  # another program while cellctl is down
        async with running_daemon(config):
            await c.until(lambda _m: [e for e in events() if e["event"] == "job_aborted"], what="closed")
            await c.until(
                lambda _m: [
                    e for e in events() if e["event"] == "job_started" and e["job"]["job_id"] == "FLANGE"
                ],
                what="the next job",
            )
    finally:
        c.close()
    closed = next(e for e in events() if e["event"] == "job_aborted")["job"]
    assert closed["job_id"] == "BRACKET"
    assert closed["good"] == 8
    assert "interrupted" in closed["reason"]
    assert [e["job"]["job_id"] for e in events() if e["event"] == "job_started"] == ["BRACKET", "FLANGE"]


async def test_job_events_taken_during_a_broker_outage_arrive_after_it_in_order_and_historical(
    plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    """Issue 11: job events go through the outbox like samples."""
    sim, port = plc
    unit = sim.unit(2)
    unit.load("holding", 0, [2])
    with Mosquitto(persistence=True) as broker:
        config = write_config(
            tmp_path,
            broker.port,
            [modbus_device("plc", "sim-machine-plc", port, 2, poll_interval=0.05)],
            cell=unique,
        )
        c = Collector(
            broker.port, f"{root_topic(unique)}/#", client_id=f"j-{unique}"[:23], clean_session=False
        )
        try:
            async with running_daemon(config) as daemon:
                await c.until(lambda _m: c.on("/plc/state"), what="the PLC online")
                await asyncio.to_thread(broker.stop)
                unit.load("holding", 10, text("ALPHA"))  # a job starts while the broker is away
                async with asyncio.timeout(10):
                    while not (r := daemon.cell.runner("plc")) or not r.jobs or not r.jobs.record:
                        await asyncio.sleep(0.05)
                unit.load("holding", 10, text("BETA"))  # ... and the next one
                async with asyncio.timeout(10):
                    while (
                        (r := daemon.cell.runner("plc"))
                        and r.jobs
                        and r.jobs.record
                        and r.jobs.record.job_id != "BETA"
                    ):
                        await asyncio.sleep(0.05)
                await asyncio.to_thread(broker.start)
                await c.until(
                    lambda _m: (
                        len([m for m in c.on("/plc/events") if m.json()["event"].startswith("job_")]) >= 3
                    ),
                    timeout=30,
                    what="the job events after the outage",
                )
        finally:
            c.close()
    events = [m.json() for m in c.on("/plc/events")]
    assert [(e["event"], e["job"]["job_id"]) for e in events[:3]] == [
        ("job_started", "ALPHA"),
        ("job_aborted", "ALPHA"),
        ("job_started", "BETA"),
    ]
    assert all(e.get("historical") is True for e in events[:3]), "taken while the broker was away"
