"""Jobs of the OPC UA machine simulator, end to end with the daemon and a real broker
(issue 11 §2, §6): a job the machine starts by itself and one started over MQTT
(`job_start` -> the profile's StartJob method) each get their events and a record whose
produced / good / scrap are the machine's own per-job quantities (OPC 40001-3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cellctl_sim.opcua import SimOpcUaServer

from cellctl.daemon import Daemon
from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, root_topic, running_daemon, write_config
from cellctl.testing.commands import CommandClient
from cellctl.testing.waiting import async_wait_until

pytestmark = pytest.mark.timeout(180)
# the machine's values the daemon must have seen before the next tick (nothing skipped)
SYNCED = {
    "state": "State/CurrentState",
    "good_parts": "Counters/GoodParts",
    "bad_parts": "Counters/BadParts",
    "job_id": "Job/JobId",
    "job_state": "Job/State",
}
MAX_TICKS = 150  # a job runs 20-60 s of machine time: 10-30 ticks of 2 s


async def tick(sim: SimOpcUaServer, daemon: Daemon) -> None:
    """One machine tick, then wait until the daemon has read what it changed."""
    await sim.step(1)
    runner = daemon.cell.runner("mill")
    want = {point: sim.machine.values[node] for point, node in SYNCED.items()}
    await async_wait_until(
        lambda: all(runner.point_value(p) == (v, True) for p, v in want.items()), timeout=20, what=f"the daemon at {want}"
    )


async def run_job(sim: SimOpcUaServer, daemon: Daemon) -> dict[str, Any]:
    """Tick until the running job has ended; the machine's own figures for it."""
    m = sim.machine
    for _ in range(MAX_TICKS):
        if m.job_state in ("Ended", "Aborted"):
            break
        await tick(sim, daemon)
    assert m.job_state == "Ended", "the seed's jobs run to their end"
    return {"job_id": m.job, "produced": m.job_good + m.job_scrap, "good": m.job_good, "scrap": m.job_scrap}


async def test_a_job_the_machine_starts_itself_and_one_started_over_mqtt_are_recorded(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    policy = {"enabled": True, "devices": {"mill": {"commands": {"job_start": {}}}}}
    # seed 11: the machine's first job has a hold and a scrap part, and ends; time moves
    # only when the test ticks it, so the daemon sees every step
    async with SimOpcUaServer(tick=2.0, seed=11, auto_tick=False, autonomous=True) as sim:
        device = {
            "id": "mill",
            "driver": "opcua",
            "profile": "sim-opcua-machine",
            "connection": {"endpoint": sim.url},
            "options": {"publishing_interval": 0.05, "keepalive": 0.5},
            "timeout": 2.0,
        }
        config = write_config(tmp_path, broker.port, [device], cell=unique, commands=policy)
        root = root_topic(unique)
        c = Collector(broker.port, f"{root}/mill/#")
        client = CommandClient(broker.port, root)
        try:
            async with running_daemon(config) as daemon:
                await async_wait_until(lambda: daemon.cell.runner("mill").available, timeout=30, what="mill online")
                await client.async_probe("mill")  # before the machine's own job: its events stay in order
                for _ in range(MAX_TICKS):  # idle until the machine starts a job by itself
                    if sim.machine.job_state == "Running":
                        break
                    await tick(sim, daemon)
                auto = await run_job(sim, daemon)
                auto |= {"order_id": sim.machine.order, "program": sim.machine.program}
                assert sim.machine.state == "Idle"
                client.send("mill", {"id": "s-1", "command": "job_start", "args": {"name": "J-CMD"}})
                answer = await client.async_final("s-1")
                await tick(sim, daemon)
                commanded = await run_job(sim, daemon)
                await c.until(
                    lambda _m: [m for m in c.on("/mill/events") if m.json()["job"]["job_id"] == "J-CMD"
                                and m.json()["event"] == "job_completed"],
                    timeout=30,
                    what="the commanded job completed",
                )
        finally:
            client.close()
            c.close()
    assert answer["state"] == "done"
    events = [m.json() for m in c.on("/mill/events") if m.json()["event"].startswith("job_")]
    by_job: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_job.setdefault(e["job"]["job_id"], []).append(e)
    assert list(by_job) == [auto["job_id"], "J-CMD"]
    kinds = [e["event"] for e in by_job[auto["job_id"]]]
    assert kinds == ["job_started", "job_paused", "job_resumed", "job_completed"]
    done = by_job[auto["job_id"]][-1]["job"]
    assert {k: done[k] for k in auto} == auto
    assert done["scrap"] >= 1
    assert done["state"] == "completed"
    assert done["reason"] is None
    cmd = by_job["J-CMD"]
    assert [e["event"] for e in cmd] == ["job_started", "job_completed"]
    assert {k: cmd[-1]["job"][k] for k in commanded} == commanded
    assert cmd[-1]["job"]["order_id"] is None, "StartJob gave no order number"
    retained = c.on("/mill/job")[-1].json()
    assert retained["job_id"] == "J-CMD"
    assert retained["state"] == "completed"
