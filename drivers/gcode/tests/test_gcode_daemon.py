"""End to end: simulated GRBL and Marlin machines on real ptys, the daemon with the gcode
driver, a private mosquitto and a real MQTT subscriber. Jobs enter through the job
folder (options.job_dir), the daemon's own way in until the command router exists."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cellctl_sim.grbl import GrblSim
from cellctl_sim.marlin import MarlinSim
from gcode_testutil import grbl_job, marlin_job

from cellctl.testing import Collector, Message, Mosquitto, root_topic, running_daemon, write_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def collector(broker: Mosquitto, unique: str) -> Iterator[Collector]:
    c = Collector(broker.port, f"{root_topic(unique)}/#")
    yield c
    c.close()


def gcode_device(device_id: str, profile: str, port: str, **options: Any) -> dict[str, Any]:
    return {
        "id": device_id,
        "driver": "gcode",
        "profile": profile,
        "connection": {"port": port},
        "options": {"status_interval": 0.2, **options},
        "timeout": 1.0,
    }


def drop_job(job_dir: Path, name: str, lines: list[str]) -> None:
    """As a user should: write elsewhere, then rename into the folder (atomic)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    tmp = job_dir.parent / f".{name}.part"
    tmp.write_text("; made by a test\n" + "\n".join(lines) + "\n", encoding="ascii")
    os.replace(tmp, job_dir / name)


def values_seen(c: Collector, device: str, point: str) -> list[Any]:
    out = []
    for m in c.on(f"/{device}/data"):
        body = m.json()
        if point in body["values"]:
            out.append(body["values"][point])
    return out


def latest_value(c: Collector, device: str, point: str) -> Any:
    seen = values_seen(c, device, point)
    return seen[-1] if seen else None


def machines(c: Collector, device: str) -> list[dict[str, Any]]:
    return [m.json()["machine"] for m in c.on(f"/{device}/data") if m.json().get("machine")]


def state(c: Collector, device: str) -> dict[str, Any] | None:
    body: dict[str, Any] | None = c.latest(f"/{device}/state")
    return body


async def test_grbl_status_and_a_job_from_the_folder_reach_the_backbone(
    broker: Mosquitto, collector: Collector, unique: str, tmp_path: Path
) -> None:
    job_dir = tmp_path / "jobs"
    lines = grbl_job(2000, seed=21)  # 2 mm segments at F3000: ~80 s of motion, 1.6 s at 50x
    async with GrblSim(speedup=50.0) as sim:
        config = write_config(
            tmp_path, broker.port, [gcode_device("mill", "grbl-cnc", sim.path, job_dir=str(job_dir))], cell=unique
        )
        async with running_daemon(config):
            await collector.until(lambda _m: latest_value(collector, "mill", "state") == "Idle", what="Idle published")
            first = state(collector, "mill") or {}
            await collector.until(lambda _m: (state(collector, "mill") or {}).get("available"), what="available")
            drop_job(job_dir, "part-1.nc", lines)
            await collector.until(
                lambda _m: latest_value(collector, "mill", "job_state") == "completed", timeout=30, what="job completed"
            )
            await collector.until(lambda _m: (job_dir / "done" / "part-1.nc.result.json").exists(), what="filed")
    assert first.get("driver") == "gcode"
    assert "running" in values_seen(collector, "mill", "job_state")
    progress = values_seen(collector, "mill", "job_progress")
    assert progress == sorted(progress)
    assert progress[-1] == 1.0
    assert len(progress) >= 3
    assert latest_value(collector, "mill", "job_lines_acked") == len(lines)
    assert latest_value(collector, "mill", "job_name") == "part-1.nc"
    executions = {(m["item_state"], m["execution"]) for m in machines(collector, "mill")}
    assert ("executing", "active") in executions  # Run, mapped by the profile
    assert ("not_executing", "ready") in executions  # Idle
    assert any(m["raw_state"] == "Run" for m in machines(collector, "mill"))
    assert sim.executed[-len(lines):] == lines
    result = orjson.loads((job_dir / "done" / "part-1.nc.result.json").read_bytes())
    assert result["state"] == "completed"
    assert result["lines_acked"] == len(lines)
    assert not (job_dir / "part-1.nc").exists()
    assert not list((job_dir / "running").iterdir())
    mpos = values_seen(collector, "mill", "mpos_x")
    assert len(set(mpos)) > 5  # the position moved on the backbone


async def test_grbl_alarm_mid_job_halts_it_and_is_published(
    broker: Mosquitto, collector: Collector, unique: str, tmp_path: Path
) -> None:
    job_dir = tmp_path / "jobs"
    lines = [*grbl_job(300, seed=22), "G0X400", *grbl_job(300, seed=23)]
    async with GrblSim(speedup=math.inf) as sim:
        config = write_config(
            tmp_path, broker.port, [gcode_device("mill", "grbl-cnc", sim.path, job_dir=str(job_dir))], cell=unique
        )
        async with running_daemon(config):
            await collector.until(lambda _m: latest_value(collector, "mill", "state") == "Idle", what="Idle")
            drop_job(job_dir, "bad.nc", lines)

            def alarmed(_m: list[Message]) -> Any:
                return any(
                    {"code": "2", "text": "soft limit: the target is outside the machine travel", "severity": "error"}
                    in m["alarms"] and m["item_state"] == "out_of_service"
                    for m in machines(collector, "mill")
                )

            await collector.until(alarmed, what="ALARM:2 in the machine state")
            await collector.until(lambda _m: latest_value(collector, "mill", "job_state") == "failed", what="job failed")
            await collector.until(lambda _m: (job_dir / "failed" / "bad.nc.result.json").exists(), what="filed")
    error = latest_value(collector, "mill", "job_error")
    assert error.startswith("ALARM:2 (soft limit")
    assert "G0X400" not in sim.executed
    assert len(sim.executed) < len(lines)
    result = orjson.loads((job_dir / "failed" / "bad.nc.result.json").read_bytes())
    assert result["state"] == "failed"
    assert result["error"] == error


async def test_marlin_job_with_progress_and_temperatures(
    broker: Mosquitto, collector: Collector, unique: str, tmp_path: Path
) -> None:
    job_dir = tmp_path / "jobs"
    lines = ["M104 S210", "M140 S60", "M190 S60", "M109 S210", *marlin_job(1500, seed=24)]
    # heating 25 -> 210 degC at 100 degC/s (~2 s); moves ~40 s of printing, 0.2 s at 200x
    async with MarlinSim(speedup=200.0, heat_rate=0.5, busy_interval=0.3) as sim:
        config = write_config(
            tmp_path, broker.port, [gcode_device("printer", "marlin-printer", sim.path, job_dir=str(job_dir))],
            cell=unique,
        )
        async with running_daemon(config):
            await collector.until(lambda _m: latest_value(collector, "printer", "state") == "Idle", what="Idle")
            drop_job(job_dir, "benchy.gcode", lines)
            await collector.until(
                lambda _m: latest_value(collector, "printer", "job_state") == "completed", timeout=30, what="completed"
            )
    assert "Heating" in values_seen(collector, "printer", "state")
    assert any(m["execution"] == "wait" for m in machines(collector, "printer"))  # Heating, mapped
    temps = values_seen(collector, "printer", "hotend_temp")
    assert max(temps) >= 209.0
    assert latest_value(collector, "printer", "job_lines_acked") == len(lines)
    assert [x for x in sim.executed if not x.startswith(("M110", "M115", "M155", "M154", "M105", "M27"))] == lines


async def test_unplug_gives_quality_bad_and_the_port_coming_back_reconnects(
    broker: Mosquitto, collector: Collector, unique: str, tmp_path: Path
) -> None:
    link = str(tmp_path / "ttyCNC")
    async with GrblSim(speedup=math.inf, link=link) as sim:
        config = write_config(tmp_path, broker.port, [gcode_device("mill", "grbl-cnc", link)], cell=unique)
        async with running_daemon(config):
            await collector.until(lambda _m: (state(collector, "mill") or {}).get("available"), what="online")
            mark = len(collector.messages)
            sim.unplug()

            def offline(_m: list[Message]) -> Any:
                s = state(collector, "mill") or {}
                return (
                    s.get("available") is False
                    and s["machine"]["item_state"] == "not_available"
                    and s["points"]["state"]["q"] == "bad"
                    and s["points"]["mpos_x"]["q"] == "bad"
                )

            await collector.until(offline, timeout=15, what="quality bad, not available")
            bad = state(collector, "mill") or {}
            assert "serial port" in (bad.get("reason") or "")
            sim.replug()

            def online(_m: list[Message]) -> Any:
                s = state(collector, "mill") or {}
                return s.get("available") and s["points"]["state"]["q"] == "good" and s["points"]["state"]["v"] == "Idle"

            await collector.until(online, timeout=20, what="reconnected")
            assert len(collector.messages) > mark


def point_state(c: Collector, device: str, point: str) -> dict[str, Any]:
    p: dict[str, Any] = ((state(c, device) or {}).get("points") or {}).get(point) or {}
    return p


async def test_a_status_field_wider_than_int64_makes_its_points_bad_and_the_daemon_runs_on(
    broker: Mosquitto, collector: Collector, unique: str, tmp_path: Path
) -> None:
    """Issue 16 item 1: this one line used to end the daemon (the JSON encoder failed)."""
    line = b"<Idle|MPos:0.000,0.000,0.000|Bf:15,99999999999999999999999|FS:0,0>\r\n"
    async with GrblSim(speedup=math.inf, report_buffer=True) as sim:
        config = write_config(tmp_path, broker.port, [gcode_device("mill", "grbl-cnc", sim.path)], cell=unique)
        async with running_daemon(config) as daemon:
            await collector.until(lambda _m: point_state(collector, "mill", "rx_free").get("v") == 128, what="Bf good")
            sim.stall()  # only the injected report answers now
            sim.inject(line)
            await collector.until(
                lambda _m: point_state(collector, "mill", "rx_free").get("q") == "bad", what="rx_free bad"
            )
            bad = state(collector, "mill") or {}
            assert "int64" in bad["points"]["rx_free"]["reason"]
            assert bad["points"]["planner_free"]["q"] == "bad"
            assert bad["points"]["state"] == {**bad["points"]["state"], "q": "good", "v": "Idle"}
            assert bad.get("available")
            sim.unstall()
            await collector.until(
                lambda _m: point_state(collector, "mill", "rx_free").get("q") == "good", what="recovered"
            )
            assert not daemon.stop.is_set()


async def test_grbl_with_the_default_status_mask_reports_buffer_points_as_not_provided(
    broker: Mosquitto, collector: Collector, unique: str, tmp_path: Path
) -> None:
    """Issue 9 item 18, end to end: GRBL's default $10=1 sends no Bf:."""
    async with GrblSim(speedup=math.inf) as sim:
        config = write_config(tmp_path, broker.port, [gcode_device("mill", "grbl-cnc", sim.path)], cell=unique)
        async with running_daemon(config):
            await collector.until(
                lambda _m: "$10" in (point_state(collector, "mill", "planner_free").get("reason") or ""),
                what="planner_free not provided",
            )
            s = state(collector, "mill") or {}
    assert "not reported by this machine" in s["points"]["rx_free"]["reason"]
    assert s["points"]["mpos_x"]["q"] == "good"
