"""Jobs over MQTT, end to end: G-code programs inline and from the job store on the GRBL
and Marlin simulators (pause, resume, cancel), and OPC UA StartJob through the profile's
declared method, refused by an interlock while the machine is busy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from cellctl_sim.grbl import GrblSim
from cellctl_sim.marlin import MarlinSim
from cellctl_sim.opcua import SimOpcUaServer

from cellctl.localbroker import Mosquitto
from cellctl.model import ItemState
from cellctl.testing import root_topic, running_daemon, write_config
from cellctl.testing.commands import CommandClient
from cellctl.testing.waiting import async_wait_until

pytestmark = pytest.mark.timeout(90)
JOBS = {name: {} for name in ("job_start", "job_pause", "job_resume", "job_cancel")}


def gcode_device(device_id: str, profile: str, port: str) -> dict[str, Any]:
    return {
        "id": device_id,
        "driver": "gcode",
        "profile": profile,
        "connection": {"port": port},
        "options": {"status_interval": 0.2},
        "timeout": 1.0,
    }


def program(n: int) -> list[str]:
    """A square walked in 1 mm steps, canonical GRBL form."""
    lines = ["G21G90", "G1X10Y10F3000"]
    for i in range(n - 2):
        lines.append(f"G1X{10 + (i % 50):.3f}Y{10 + (i // 50) % 50:.3f}")
    return lines


def job_state(daemon: Any, device: str) -> Any:
    value, _good = daemon.cell.runner(device).point_value("job_state")
    return value


async def test_a_grbl_job_inline_runs_to_the_end_and_pause_resume_cancel_act(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    lines = program(200)
    policy = {"enabled": True, "max_program_bytes": 200_000, "devices": {"mill": {"commands": JOBS}}}
    async with GrblSim(speedup=math.inf) as sim:
        config = write_config(
            tmp_path, broker.port, [gcode_device("mill", "grbl-cnc", sim.path)], cell=unique, commands=policy
        )
        client = CommandClient(broker.port, root_topic(unique))
        try:
            async with running_daemon(config) as daemon:
                await async_wait_until(lambda: daemon.cell.runner("mill").available, what="mill online")
                await client.async_probe("mill")  # the command subscription is in place
                body = {"id": "j-1", "command": "job_start", "args": {"name": "part-1.nc", "program": "\n".join(lines)}}
                client.send("mill", body)
                started = await client.async_final("j-1")
                await async_wait_until(lambda: job_state(daemon, "mill") == "completed", timeout=30, what="completed")
                too_big = {"id": "j-2", "command": "job_start", "args": {"name": "big.nc", "program": "G0X1\n" * 50_000}}
                client.send("mill", too_big)
                refused = await client.async_final("j-2")
        finally:
            client.close()
    assert started["state"] == "done"
    assert sim.executed[-len(lines) :] == lines
    assert refused["reason"] == "too_large"
    assert refused["message"] == "job 'big.nc': program of 250000 bytes (at most 200000)"


async def test_a_marlin_job_by_name_from_the_job_store_can_be_paused_resumed_and_cancelled(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    store = tmp_path / "jobs"
    store.mkdir()
    lines = ["G21", "G90", *[f"G1 X{10 + i % 100} Y{10 + i // 100} F1200" for i in range(3000)]]
    (store / "long.gcode").write_text("\n".join(lines) + "\n", encoding="ascii")
    policy = {"enabled": True, "job_store": str(store), "devices": {"printer": {"commands": JOBS}}}
    async with MarlinSim(speedup=20.0) as sim:
        config = write_config(
            tmp_path, broker.port, [gcode_device("printer", "marlin-printer", sim.path)], cell=unique, commands=policy
        )
        client = CommandClient(broker.port, root_topic(unique))
        try:
            async with running_daemon(config) as daemon:
                await async_wait_until(lambda: daemon.cell.runner("printer").available, what="printer online")
                await client.async_probe("printer")  # the command subscription is in place
                results = {}
                client.send("printer", {"id": "s", "command": "job_start", "args": {"name": "long.gcode"}})
                results["s"] = await client.async_final("s")
                await async_wait_until(lambda: job_state(daemon, "printer") == "running", what="running")
                for rid, kind, want in (("p", "job_pause", "paused"), ("r", "job_resume", "running")):
                    client.send("printer", {"id": rid, "command": kind})
                    results[rid] = await client.async_final(rid)
                    await async_wait_until(lambda w=want: job_state(daemon, "printer") == w, what=want)
                client.send("printer", {"id": "c", "command": "job_cancel"})
                results["c"] = await client.async_final("c")
                await async_wait_until(lambda: job_state(daemon, "printer") == "cancelled", what="cancelled")
        finally:
            client.close()
    assert {rid: r["state"] for rid, r in results.items()} == {"s": "done", "p": "done", "r": "done", "c": "done"}
    assert 0 < len([x for x in sim.executed if x.startswith("G1 X")]) < 3000


async def test_opcua_start_job_is_refused_while_busy_and_done_when_idle(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    policy = {
        "enabled": True,
        "devices": {
            "mill": {
                "commands": {
                    "StartJob": {"interlocks": [{"item_state": ["not_executing"]}, {"alarms": "none"}]},
                    "job_start": {"interlocks": [{"item_state": ["not_executing"]}]},
                }
            }
        },
    }
    async with SimOpcUaServer(tick=0.1, seed=7, auto_tick=False, autonomous=False) as sim:
        device = {
            "id": "mill",
            "driver": "opcua",
            "profile": "sim-opcua-machine",
            "connection": {"endpoint": sim.url},
            "options": {"publishing_interval": 0.05, "keepalive": 0.5},
            "timeout": 1.0,
        }
        config = write_config(tmp_path, broker.port, [device], cell=unique, commands=policy)
        client = CommandClient(broker.port, root_topic(unique))
        try:
            async with running_daemon(config) as daemon:
                runner = daemon.cell.runner("mill")
                sim.machine.force_state("Running")
                await sim.step(1)
                await async_wait_until(lambda: runner.machine.item_state == ItemState.EXECUTING, what="busy")
                await client.async_probe("mill")  # the command subscription is in place
                call = {"id": "b-1", "command": "call", "args": {"method": "StartJob", "args": {"jobId": "J-1"}}}
                client.send("mill", call)
                busy = await client.async_final("b-1")
                sim.machine.force_state("Idle")
                await sim.step(1)
                await async_wait_until(lambda: runner.machine.item_state == ItemState.NOT_EXECUTING, what="idle")
                client.send("mill", {"id": "b-2", "command": "job_start", "args": {"name": "J-2"}})
                done = await client.async_final("b-2")
                bad = {"id": "b-3", "command": "call", "args": {"method": "StartJob", "args": {"jobId": 7}}}
                client.send("mill", bad)
                wrong = await client.async_final("b-3")
        finally:
            client.close()
    assert busy["state"] == "refused"
    assert busy["reason"] == "interlock"
    assert done["state"] == "done"
    assert sim.machine.job == "J-2"
    assert wrong["reason"] == "wrong_type"
