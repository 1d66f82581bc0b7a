"""A material lot given per job in `job_start` (how an MES says "this job runs on lot
L-4711"): over MQTT and from `cellctl job start --lot`, on the Marlin simulator; the lot
reaches the job's `job_started` and `job_completed` events and its retained record, never
the next job; a bad lot is refused `invalid` and audited with nothing run; on the OPC UA
simulator (StartJob) the lot survives a daemon restart mid-job with the rest of the job
file; a profile's lot point comes first."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from cellctl_sim.marlin import MarlinSim
from cellctl_sim.opcua import SimOpcUaServer
from click.testing import CliRunner, Result

from cellctl.cli.main import cli
from cellctl.config.profile import MaterialDef
from cellctl.contract.payloads import CommandEventJson
from cellctl.daemon import Daemon
from cellctl.jobs.tracker import JobTracker
from cellctl.localbroker import Mosquitto
from cellctl.model import Execution, ItemState, MachineState, OperationMode
from cellctl.testing import Collector, root_topic, running_daemon, write_config
from cellctl.testing.commands import CommandClient
from cellctl.testing.waiting import async_wait_until

pytestmark = pytest.mark.timeout(120)

PROGRAM = "\n".join(["G21", "G90", "M82", "G92 E0", *[f"G1 X{10 + i} Y10 E{i + 1} F1200" for i in range(20)]])
POLICY = {"enabled": True, "devices": {"printer": {"commands": {"job_start": {}}}}}


def printer(port: str) -> dict[str, Any]:
    return {
        "id": "printer",
        "driver": "gcode",
        "profile": "marlin-printer",
        "connection": {"port": port},
        "options": {"status_interval": 0.2},
        "timeout": 1.0,
    }


def job_events(c: Collector) -> list[dict[str, Any]]:
    return [m.json() for m in c.on("/printer/events") if m.json().get("event", "").startswith("job_")]


def lot(job: dict[str, Any]) -> str | None:
    lot: str | None = job["materials"]["filament"].get("lot")
    return lot


async def invoke(*args: str) -> Result:
    """The CLI in a thread: the daemon runs on in this loop meanwhile."""
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


async def test_a_jobs_lot_from_mqtt_and_the_cli_reaches_its_events_and_record_and_a_bad_one_is_refused(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    program = tmp_path / "second.gcode"
    program.write_text(PROGRAM + "\n", encoding="ascii")
    audited: list[CommandEventJson] = []
    c = Collector(broker.port, f"{root_topic(unique)}/#")
    client = CommandClient(broker.port, root_topic(unique))

    def completed(n: int) -> Any:
        return lambda _m: len([e for e in job_events(c) if e["event"] == "job_completed"]) >= n

    try:
        async with MarlinSim(speedup=math.inf) as sim:
            config = write_config(tmp_path, broker.port, [printer(sim.path)], cell=unique, commands=POLICY)
            async with running_daemon(config) as daemon:
                daemon.audit.sinks.append(audited.append)
                await async_wait_until(lambda: daemon.cell.runner("printer").available, what="printer online")
                await client.async_probe("printer")  # the command subscription is in place
                answers = {}
                bad = {
                    "b-1": {"resin": "R-1"},  # a material the profile does not declare
                    "b-2": {"filament": "L\n4711"},  # not printable
                    "b-3": {"filament": "L" * 65},  # too long
                    "b-4": {"filament": 4711},  # not a string
                    "b-5": ["filament", "L-4711"],  # not an object
                }
                for rid, lots in bad.items():
                    args = {"name": "a.gcode", "program": PROGRAM, "lots": lots}
                    client.send("printer", {"id": rid, "command": "job_start", "args": args})
                    answers[rid] = await client.async_final(rid)
                executed_before = len(sim.executed)
                body = {"name": "first.gcode", "program": PROGRAM, "lots": {"filament": "L-4711"}}
                client.send("printer", {"id": "j-1", "command": "job_start", "args": body})
                answers["j-1"] = await client.async_final("j-1", timeout=30)
                await c.until(completed(1), timeout=60, what="the first job completed")
                cli_run = await invoke(
                    "job", "start", "printer", "second.gcode", "--file", str(program), "--lot", "filament=L-4712",
                    "--config", str(config), "--json", "--timeout", "30",
                )
                await c.until(completed(2), timeout=60, what="the second job completed")
                body = {"name": "third.gcode", "program": PROGRAM}  # no lots: none of the last job's
                client.send("printer", {"id": "j-3", "command": "job_start", "args": body})
                answers["j-3"] = await client.async_final("j-3", timeout=30)
                await c.until(completed(3), timeout=60, what="the third job completed")
                await c.until(
                    lambda _m: (j := c.latest("/printer/job")) is not None and j["state"] == "completed"
                    and j["job_id"] == job_events(c)[-1]["job"]["job_id"],
                    what="the retained record of the third job",
                )
                bad_cli = await invoke(
                    "job", "start", "printer", "x.gcode", "--file", str(program), "--lot", "filament",
                    "--config", str(config),
                )
    finally:
        client.close()
        c.close()
    for rid in bad:
        assert (answers[rid]["state"], answers[rid]["reason"]) == ("refused", "invalid"), answers[rid]
        assert "args.lots" in answers[rid]["message"], answers[rid]
    assert answers["b-1"]["message"] == (
        "args.lots.resin: device 'printer' has no job material 'resin' (declared: filament)"
    )
    assert answers["b-3"]["message"].startswith("args.lots.filament: a lot id is 1-64 printable characters")
    refused = {e["id"]: e for e in audited if e["decision"] == "refused" and e["id"] != "probe-1"}
    assert set(refused) == set(bad), "every bad lot is audited as refused"
    assert refused["b-1"]["reason"] == "invalid"
    assert refused["b-1"]["args"]["lots"] == {"resin": "R-1"}
    assert sum(1 for x in sim.executed[:executed_before] if x.startswith("G1 X")) == 0, "a refused job ran nothing"

    assert answers["j-1"]["state"] == "done"
    assert cli_run.exit_code == 0, cli_run.output
    assert orjson.loads(cli_run.stdout.strip().splitlines()[-1])["state"] == "done"
    assert answers["j-3"]["state"] == "done"
    events = job_events(c)
    assert [e["event"] for e in events] == ["job_started", "job_completed"] * 3
    jobs = [e["job"] for e in events]
    assert [j["program"] for j in jobs] == ["first.gcode"] * 2 + ["second.gcode"] * 2 + ["third.gcode"] * 2
    assert [lot(j) for j in jobs] == ["L-4711", "L-4711", "L-4712", "L-4712", None, None], "each job its own lot"
    assert jobs[1]["materials"]["filament"]["amount"] == 20.0  # the lot rides on the job's real material figures
    records = [m.json() for m in c.on("/printer/job")]  # the retained current job, as it changed
    first_done = [j for j in records if j["job_id"] == jobs[0]["job_id"] and j["state"] == "completed"]
    assert first_done, "the first job's completed record"
    assert lot(first_done[-1]) == "L-4711", "the record of the job carries its lot"
    assert lot(records[-1]) is None, "the latest record (the third job) has no lot"
    assert bad_cli.exit_code != 0
    assert "is not MATERIAL=LOT" in bad_cli.output


RUN = MachineState(ItemState.EXECUTING, OperationMode.PROCESSING, Execution.ACTIVE)
MATERIALS = {
    "bar": MaterialDef.model_validate({"per_part": 0.5, "unit": "kg", "form": "bar", "lot_point": "bar_lot"}),
    "coolant": MaterialDef.model_validate({"per_part": 0.1, "unit": "l", "form": "liquid"}),
    "insert": MaterialDef.model_validate({"per_part": 1, "unit": "pieces"}),
}


def observe(t: JobTracker, s: float, job: str | None, good: int, bar_lot: str | None = None) -> list[str]:
    events = t.observe(
        now_ms=int(s * 1000), job_id=job, order_id=None, program=None, good=good, bad=0, machine=RUN,
        completed=False, stopped=False, materials={}, lots={"bar": bar_lot},
    )
    return [e.event for e in events]


def lots(t: JobTracker) -> dict[str, str | None]:
    assert t.current is not None
    return {m.name: m.lot for m in t.current.materials}


def test_lot_precedence_is_lot_point_then_job_then_device_config() -> None:
    t = JobTracker(materials=MATERIALS, default_lots={"coolant": "C-88", "insert": "I-1"})
    t.expect_lots("J1", {"bar": "B-job", "coolant": "C-job"})
    assert observe(t, 0, "J1", 0) == ["started"]
    assert lots(t) == {"bar": "B-job", "coolant": "C-job", "insert": "I-1"}
    observe(t, 1, "J1", 1, bar_lot="H-2291")  # the machine reads its bar's lot: that comes first
    assert lots(t) == {"bar": "H-2291", "coolant": "C-job", "insert": "I-1"}
    observe(t, 2, "J1", 2, bar_lot=None)  # unreadable: the last lot the machine gave
    assert lots(t)["bar"] == "H-2291"
    assert observe(t, 3, "J2", 3) == ["aborted", "started"]  # a job without lots of its own
    assert lots(t) == {"bar": "H-2291", "coolant": "C-88", "insert": "I-1"}


def test_a_commands_lots_go_to_the_job_it_names_only() -> None:
    t = JobTracker(materials=MATERIALS, default_lots={"coolant": "C-88"})
    t.expect_lots("J2", {"coolant": "C-job"})
    observe(t, 0, "J1", 0)  # the machine started another job by itself meanwhile
    assert lots(t)["coolant"] == "C-88"
    observe(t, 1, "J2", 0)
    assert lots(t)["coolant"] == "C-job"
    t.expect_lots("J3", {"coolant": "C-3"})
    t.forget_lots("J3")  # its start failed
    observe(t, 2, "J3", 0)
    assert lots(t)["coolant"] == "C-88"


def test_a_jobs_own_lot_survives_a_restart_and_stays_with_that_job() -> None:
    t = JobTracker(materials=MATERIALS, default_lots={"coolant": "C-88"})
    t.expect_lots("J1", {"coolant": "C-job", "insert": "I-job"})
    observe(t, 0, "J1", 0, bar_lot="H-1")
    observe(t, 1, "J1", 2)
    saved = t.dump()
    assert saved is not None
    saved = orjson.loads(orjson.dumps(saved))  # as the job file holds it
    again = JobTracker(materials=MATERIALS, default_lots={"coolant": "C-88"})
    assert [e.event for e in again.resume(saved, job_id="J1", now_ms=2000)] == ["resumed"]
    observe(again, 3, "J1", 4)
    assert lots(again) == {"bar": "H-1", "coolant": "C-job", "insert": "I-job"}
    assert again.current is not None
    assert again.current.produced == 4
    observe(again, 4, "J2", 4)  # the next job: the config's lot again, the machine's bar still H-1
    assert lots(again) == {"bar": "H-1", "coolant": "C-88", "insert": None}


@pytest.mark.parametrize("job_lots", ["absent", ["coolant", "C-job"]])
def test_a_job_file_without_usable_job_lots_resumes_with_the_config_lots(job_lots: Any) -> None:
    t = JobTracker(materials=MATERIALS, default_lots={"coolant": "C-88"})
    observe(t, 0, "J1", 0)
    saved = t.dump()
    assert saved is not None
    if job_lots == "absent":
        del saved["job_lots"]  # a file written before lots per job
    else:
        saved["job_lots"] = job_lots
    again = JobTracker(materials=MATERIALS, default_lots={"coolant": "C-88"})
    assert [e.event for e in again.resume(saved, job_id="J1", now_ms=1000)] == ["resumed"]
    observe(again, 2, "J1", 1)
    assert lots(again) == {"bar": None, "coolant": "C-88", "insert": None}


SIM_PROFILE = Path(__file__).parent.parent / "sim_devices" / "cellctl_sim" / "profiles" / "sim-opcua-machine.yaml"
SYNCED = {
    "state": "State/CurrentState",
    "good_parts": "Counters/GoodParts",
    "bad_parts": "Counters/BadParts",
    "job_id": "Job/JobId",
    "job_state": "Job/State",
}


async def tick(sim: SimOpcUaServer, daemon: Daemon) -> None:
    """One machine tick, then wait until the daemon has read what it changed."""
    await sim.step(1)
    runner = daemon.cell.runner("mill")
    assert runner is not None
    want = {point: sim.machine.values[node] for point, node in SYNCED.items()}
    await async_wait_until(
        lambda: all(runner.point_value(p) == (v, True) for p, v in want.items()), timeout=20, what=f"the daemon at {want}"
    )


async def test_an_opcua_job_started_with_a_lot_keeps_it_across_a_daemon_restart(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    """StartJob through the profile's method (OPC 40001-3 job id = the command's name); the
    daemon stops mid-job and starts again: the job resumes and completes with its lot."""
    profile = yaml.safe_load(SIM_PROFILE.read_text(encoding="utf-8"))
    profile["name"] = "opcua-with-stock"
    profile["job"]["materials"] = {"bar": {"per_part": 0.5, "unit": "kg", "form": "bar"}}
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "opcua-with-stock.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
    policy = {"enabled": True, "devices": {"mill": {"commands": {"job_start": {}}}}}
    c = Collector(broker.port, f"{root_topic(unique)}/mill/#")
    client = CommandClient(broker.port, root_topic(unique))

    def events() -> list[dict[str, Any]]:
        return [m.json() for m in c.on("/mill/events") if m.json()["event"].startswith("job_")]

    try:
        async with SimOpcUaServer(tick=2.0, seed=11, auto_tick=False, autonomous=False) as sim:
            device = {
                "id": "mill",
                "driver": "opcua",
                "profile": "opcua-with-stock",
                "connection": {"endpoint": sim.url},
                "options": {"publishing_interval": 0.05, "keepalive": 0.5},
                "timeout": 2.0,
            }
            config = write_config(
                tmp_path, broker.port, [device], cell=unique, commands=policy, profile_dirs=[str(profiles)]
            )
            async with running_daemon(config) as daemon:
                await async_wait_until(lambda: daemon.cell.runner("mill").available, timeout=30, what="mill online")
                await client.async_probe("mill")
                args = {"name": "J-LOT", "lots": {"bar": "H-4711"}}
                client.send("mill", {"id": "s-1", "command": "job_start", "args": args})
                answer = await client.async_final("s-1", timeout=20)
                await tick(sim, daemon)
                await c.until(lambda _m: [e for e in events() if e["event"] == "job_started"], timeout=30,
                              what="started")
            assert sim.machine.job_state == "Running", "the daemon stopped mid-job"
            async with running_daemon(config) as daemon:
                await c.until(lambda _m: [e for e in events() if e["event"] == "job_resumed"], timeout=30,
                              what="resumed after the restart")
                for _ in range(2):  # parts made after the restart
                    await tick(sim, daemon)
                sim.machine.force_state("Idle")  # the job ends (Ended): the test machine moves when told
                await sim.step(0)  # publish it
                await c.until(lambda _m: [e for e in events() if e["event"] == "job_completed"], timeout=30,
                              what="completed")
    finally:
        client.close()
        c.close()
    assert answer["state"] == "done"
    seen = events()
    assert [e["event"] for e in seen] == ["job_started", "job_resumed", "job_completed"]
    assert {e["job"]["job_id"] for e in seen} == {"J-LOT"}
    assert [e["job"]["materials"]["bar"]["lot"] for e in seen] == ["H-4711"] * 3
    done = seen[-1]["job"]
    assert done["produced"] > 0
    assert done["materials"]["bar"]["amount"] == 0.5 * done["produced"]
    assert c.on("/mill/job")[-1].json()["materials"]["bar"]["lot"] == "H-4711"
