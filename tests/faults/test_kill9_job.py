"""kill -9 of a real `cellctl run` in the middle of a job (issue 11, Tests): the PLC keeps
making parts while no cellctl watches it; a new daemon on the same state dir continues the
job (same job id, one `job_started`, counts never back to zero) and counts every part the
simulator's counters made exactly once. When the machine runs another program by the time
cellctl is back, the job is closed as aborted with the documented reason (docs/jobs.md)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, modbus_device, root_topic, write_config
from cellctl.testing.registers import text_registers as text
from cellctl.testing.registers import words32

from .test_kill9 import spawn

pytestmark = pytest.mark.timeout(150)
GOOD0, BAD0 = 100, 10  # the PLC's counters when the job starts


@pytest.fixture
async def plc() -> AsyncIterator[tuple[SimModbusServer, int]]:
    async with SimModbusServer({2: "blank"}, tick=0.05, seed=1) as sim:  # the test is the machine
        yield sim, await sim.serve_tcp()


def saved_good(store: Path) -> int:
    """The job's good count in the daemon's durable job file (what a restart continues from)."""
    try:
        return int(orjson.loads(store.read_bytes())["job"]["good"])
    except (FileNotFoundError, orjson.JSONDecodeError, KeyError):
        return -1


def kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


async def test_kill_9_mid_job_then_restart_continues_the_job_and_counts_each_part_once(
    plc: tuple[SimModbusServer, int], broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    sim, port = plc
    unit = sim.unit(2)
    good, bad = GOOD0, BAD0

    def make(g: int = 0, b: int = 0) -> None:
        nonlocal good, bad
        good, bad = good + g, bad + b
        unit.load("holding", 4, words32(good))
        unit.load("holding", 6, words32(bad))

    unit.load("holding", 0, [2])  # running
    make()
    config = write_config(
        tmp_path, broker.port, [modbus_device("plc", "sim-machine-plc", port, 2, poll_interval=0.05)], cell=unique
    )
    store = tmp_path / "state" / "jobs" / "plc.json"
    log = tmp_path / "daemon.log"
    c = Collector(broker.port, f"{root_topic(unique)}/plc/#")

    def events(kind: str) -> list[dict[str, Any]]:
        """Each event once: one taken before a kill may be replayed after the restart
        (at least once, marked historical, same `ts`)."""
        seen: dict[tuple[Any, ...], dict[str, Any]] = {}
        for m in c.on("/plc/events"):
            e = m.json()
            if e["event"] == kind:
                seen.setdefault((e["event"], e["ts"], e["job"]["job_id"]), e)
        return list(seen.values())

    def jobs() -> list[dict[str, Any]]:
        """The job records in the order they were taken (`ts`): one taken while offline is
        replayed as historical and may arrive after a newer live one."""
        return sorted((m.json() for m in c.on("/plc/job")), key=lambda j: j["ts"])

    procs: list[subprocess.Popen[bytes]] = []
    try:
        unit.load("holding", 10, text("BRACKET"))  # the machine's own program: the job
        procs.append(spawn(config, log))
        await c.until(lambda _m: events("job_started"), timeout=40, what="the job started")
        for _ in range(4):  # parts made one by one, each seen counted
            make(g=1, b=1 if good % 2 == 0 else 0)
            await c.until(lambda _m, g=good: (j := jobs()) and j[-1]["good"] == g - GOOD0, what="the part counted")
        counted_before_kill = jobs()[-1]
        # the job file is written whenever the counts change, before they are published
        assert saved_good(store) == counted_before_kill["good"]
        await asyncio.to_thread(kill9, procs[-1])

        make(g=4, b=2)  # made while no cellctl runs
        procs.append(spawn(config, log))
        await c.until(lambda _m: events("job_resumed"), timeout=40, what="the job resumed")
        await c.until(
            lambda _m: jobs()[-1]["good"] == good - GOOD0 and jobs()[-1]["scrap"] == bad - BAD0,
            what="the parts made while down, counted once",
        )
        make(g=3, b=1)  # and after
        await c.until(lambda _m: jobs()[-1]["produced"] == good - GOOD0 + bad - BAD0, what="parts after the restart")
        await asyncio.to_thread(kill9, procs[-1])

        unit.load("holding", 10, text("FLANGE"))  # another program by the time cellctl is back
        make(g=5)  # parts of FLANGE, none of them BRACKET's
        procs.append(spawn(config, log))
        await c.until(lambda _m: events("job_aborted"), timeout=40, what="BRACKET closed")
        await c.until(
            lambda _m: [e for e in events("job_started") if e["job"]["job_id"] == "FLANGE"], what="FLANGE started"
        )
        procs[-1].send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(procs[-1].wait, 20) == 0
    finally:
        c.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    resumed = events("job_resumed")[0]["job"]
    assert resumed["job_id"] == "BRACKET"
    assert (resumed["good"], resumed["scrap"]) == (counted_before_kill["good"], counted_before_kill["scrap"]), (
        "the resumed job starts from the counts of before the kill, never from zero"
    )
    started = [e["job"]["job_id"] for e in events("job_started")]
    assert started == ["BRACKET", "FLANGE"], "one job_started per job: the restart continued BRACKET"
    closed = events("job_aborted")[0]["job"]
    assert closed["job_id"] == "BRACKET"
    assert closed["reason"] == "interrupted: cellctl restarted and the machine no longer runs it"
    # BRACKET's counts are exactly the simulator's counter advance during it (FLANGE's 5
    # parts, made while cellctl was down, are not BRACKET's: they are not known to be)
    assert (closed["good"], closed["scrap"]) == (good - 5 - GOOD0, bad - BAD0)
    bracket = [j for j in jobs() if j["job_id"] == "BRACKET"]
    assert max(j["good"] for j in bracket) == closed["good"], "never more than the machine made"
    assert "Traceback" not in log.read_text(encoding="utf-8")
