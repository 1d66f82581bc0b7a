"""The job folder as one more source of the command router (issue 10 §1, §4), end to end:
a simulated GRBL machine on a real pty, the daemon, a private mosquitto, the audit events
on `<root>/events` and an MQTT 5 client as the MES would be."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from cellctl_sim.grbl import GrblSim
from gcode_testutil import grbl_job
from test_gcode_daemon import drop_job, gcode_device

from cellctl.testing import Collector, Mosquitto, root_topic, running_daemon, write_config
from cellctl.testing.commands import CommandClient
from cellctl.testing.waiting import async_wait_until

pytestmark = pytest.mark.timeout(90)


def backbone(broker: Mosquitto) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": broker.port, "reconnect_min": 0.2, "reconnect_max": 1, "protocol": "5"}


def command_events(c: Collector) -> list[dict[str, Any]]:
    return [e for e in (m.json() for m in c.messages) if e.get("event") == "command"]


def result(job_dir: Path, sub: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads((job_dir / sub / f"{name}.result.json").read_bytes())
    return body


async def test_a_dropped_file_is_a_routed_audited_job_and_is_filed(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    """`commands.job_folders` alone: the folder's files run (the folder is its own consent)
    while MQTT commands stay off; every file is one audited command from the folder."""
    job_dir = tmp_path / "jobs"
    (job_dir / "running").mkdir(parents=True)
    (job_dir / "running" / "half.nc").write_text("G0X7\n")  # a job cellctl was streaming when it died
    (job_dir / "notes.txt").write_text("not a job")
    (job_dir / "bad.nc").write_text("G1X" + "1" * 90 + "\n")
    root = root_topic(unique)
    events = Collector(broker.port, f"{root}/events")
    client = CommandClient(broker.port, root)
    good = grbl_job(100, seed=43)
    try:
        async with GrblSim(speedup=math.inf) as sim:
            config = write_config(
                tmp_path, broker.port, [gcode_device("mill", "grbl-cnc", sim.path)], cell=unique,
                backbone=backbone(broker), commands={"job_folders": {"mill": {"path": "jobs"}}},
            )
            async with running_daemon(config):
                await async_wait_until((job_dir / "failed" / "half.nc.result.json").exists, what="interrupted job filed")
                await async_wait_until((job_dir / "failed" / "bad.nc.result.json").exists, what="bad job filed")
                drop_job(job_dir, "good.nc", good)
                await async_wait_until(
                    (job_dir / "done" / "good.nc.result.json").exists, timeout=30, what="good job done"
                )
                await client.async_probe("mill")  # the command subscription is in place
                client.send("mill", {"id": "mes-1", "command": "job_start", "args": {"name": "x.nc", "program": "G0X1\n"}})
                mqtt = await client.async_final("mes-1")
                await events.until(lambda _m: len(command_events(events)) >= 3, what="three audit events")
            executed = list(sim.executed)
    finally:
        client.close()
        events.close()
    half = result(job_dir, "failed", "half.nc")
    assert half["error"].startswith("interrupted")
    assert "G0X7" not in executed, "an interrupted job is never restarted"
    bad = result(job_dir, "failed", "bad.nc")
    assert bad["state"] == "failed"
    assert bad["error"] == "job 'bad.nc': line 1 is 93 characters long; GRBL's line buffer holds 80"
    assert bad["command"]["reason"] == "rejected"
    done = result(job_dir, "done", "good.nc")
    assert done["state"] == "completed"
    assert done["lines_acked"] == len(good)
    assert done["request_id"].startswith("folder-good.nc-")
    assert executed[-len(good):] == good
    assert (job_dir / "notes.txt").exists()  # not a job suffix: left alone
    assert not list((job_dir / "running").iterdir())
    assert mqtt["state"] == "refused"
    assert mqtt["reason"] == "disabled", "the folder's consent does not open the MQTT commands"
    by_id = {e["id"]: e for e in command_events(events)}
    ev = by_id[done["request_id"]]
    assert ev["source"] == {"channel": "folder", "topic": str(job_dir)}
    assert (ev["command"], ev["decision"], ev["args"], ev["device"]) == ("job_start", "done", {"name": "good.nc"}, "mill")
    ev_bad = by_id[bad["request_id"]]
    assert (ev_bad["decision"], ev_bad["reason"]) == ("failed", "rejected")
    assert by_id["mes-1"]["source"]["channel"] == "uns"


async def test_the_device_policy_and_its_interlocks_apply_to_folder_jobs(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    """An interlock on job_start refuses a folder job like an MES one: filed in failed/
    with the reason, audited as refused, nothing sent to the machine."""
    job_dir = tmp_path / "jobs"
    root = root_topic(unique)
    events = Collector(broker.port, f"{root}/events")
    policy = {"job_start": {"interlocks": [{"point": "mpos_x", "min": 1000}]}}  # the machine is at 0
    try:
        async with GrblSim(speedup=math.inf) as sim:
            config = write_config(
                tmp_path, broker.port, [gcode_device("mill", "grbl-cnc", sim.path)], cell=unique,
                commands={"job_folders": {"mill": {"path": str(job_dir)}}, "devices": {"mill": {"commands": policy}}},
            )
            async with running_daemon(config):
                drop_job(job_dir, "p.nc", grbl_job(20, seed=44))
                await async_wait_until((job_dir / "failed" / "p.nc.result.json").exists, timeout=30, what="filed")
                await events.until(lambda _m: command_events(events), what="the audit event")
            executed = list(sim.executed)
    finally:
        events.close()
    refused = result(job_dir, "failed", "p.nc")
    assert refused["command"]["reason"] == "interlock"
    assert refused["error"].startswith("interlock: ")
    assert not [x for x in executed if x.startswith("G1")], "nothing of the job reached the machine"
    (ev,) = command_events(events)
    assert (ev["decision"], ev["reason"], ev["source"]["channel"]) == ("refused", "interlock", "folder")


async def test_legacy_job_dir_runs_oldest_first_and_an_mqtt_cancel_files_the_job_as_cancelled(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    """The deprecated `options.job_dir` keeps working through the core's folder; with
    MQTT commands enabled for job_cancel, a folder job can be cancelled by the MES."""
    job_dir = tmp_path / "jobs"
    root = root_topic(unique)
    client = CommandClient(broker.port, root)
    try:
        async with GrblSim(speedup=50.0) as sim:
            drop_job(job_dir, "a.nc", grbl_job(20, seed=45))
            drop_job(job_dir, "b.nc", grbl_job(2000, seed=46))
            os.utime(job_dir / "b.nc", (1_000_000, 1_000_000))  # b is the oldest: it runs first
            config = write_config(
                tmp_path, broker.port, [gcode_device("mill", "grbl-cnc", sim.path, job_dir=str(job_dir))], cell=unique,
                backbone=backbone(broker),
                commands={"enabled": True, "devices": {"mill": {"commands": {"job_cancel": {}}}}},
            )
            async with running_daemon(config) as daemon:
                await async_wait_until((job_dir / "running" / "b.nc").exists, timeout=30, what="b.nc runs")
                await async_wait_until(lambda: daemon.audit.outcomes["done"] >= 1, what="b.nc started")
                await client.async_probe("mill")
                client.send("mill", {"id": "mes-cancel", "command": "job_cancel"})
                cancel = await client.async_final("mes-cancel")
                await async_wait_until((job_dir / "cancelled" / "b.nc.result.json").exists, what="b.nc cancelled")
                await async_wait_until((job_dir / "done" / "a.nc.result.json").exists, timeout=30, what="a.nc next")
    finally:
        client.close()
    assert cancel["state"] == "done"
    assert result(job_dir, "cancelled", "b.nc")["state"] == "cancelled"
    assert result(job_dir, "done", "a.nc")["state"] == "completed"


async def test_a_grbl_program_ending_in_m30_is_a_completed_job_record(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    """GRBL M2/M30 as a job source (issue 11 §2): the grbl-cnc profile's job section makes
    every streamed program a job record; its M30's ok (after the motion) completes it."""
    job_dir = tmp_path / "jobs"
    root = root_topic(unique)
    c = Collector(broker.port, f"{root}/#")
    try:
        async with GrblSim(speedup=20.0) as sim:
            config = write_config(
                tmp_path, broker.port, [gcode_device("mill", "grbl-cnc", sim.path)], cell=unique,
                commands={"job_folders": {"mill": {"path": "jobs"}}},
            )
            async with running_daemon(config):
                drop_job(job_dir, "p.nc", ["G21G90", "G1X100Y100F3000", "G1X150Y100F600", "M30", "G0X10"])
                await c.until(
                    lambda _m: (j := c.on("/mill/job")) and j[-1].json()["state"] == "completed",
                    timeout=30, what="the job record completed",
                )
                await c.until(
                    lambda _m: [e for e in c.on("/events") if e.json().get("event") == "job_completed"],
                    what="the job_completed event",
                )
            executed = list(sim.executed)
    finally:
        c.close()
    record = c.on("/mill/job")[-1].json()
    assert record["program"] == "p.nc"
    assert record["job_id"].startswith("p.nc@")
    kinds = [e.json()["event"] for e in c.on("/events") if e.json().get("event", "").startswith("job_")]
    assert kinds == ["job_started", "job_completed"]
    assert executed[-1] == "M30"
    assert "G0X10" not in executed
    filed = result(job_dir, "done", "p.nc")
    assert (filed["program_end"], filed["lines_after_end"]) == ("M30", 1)
