"""Filament per job, end to end: the Marlin simulator on a real pty prints a file whose
extrusion (absolute and relative, `G92 E0` resets, retractions) is known; the daemon's
job record on MQTT gives exactly that length and the mass derived from the profile's
filament diameter and density."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cellctl_sim.marlin import MarlinSim
from test_gcode_daemon import drop_job, gcode_device, latest_value

from cellctl.testing import Collector, Mosquitto, root_topic, running_daemon, write_config

pytestmark = pytest.mark.timeout(60)

BLOCKS = 200


def known_job() -> tuple[list[str], float]:
    """The job's lines and its net extrusion, worked out by hand per block."""
    head = [
        "G21", "G90", "M82", "G92 E0",
        "G1 X10 Y10 E5 F1200",  # +5
        "G1 X20 E10",  # +5 -> 10
        "G1 E8 F2400",  # retract 2 -> 8
        "G1 X30 F3000",
        "G1 E10 F2400",  # prime 2 -> 10
        "G1 X40 E12.5",  # +2.5 -> 12.5
        "G92 E0",
        "M83",
        "G1 X50 E3",  # +3 -> 15.5
        "G1 E-1.5",  # retract -> 14
        "G1 E1.5",  # prime -> 15.5
        "G1 X60 E4.25",  # +4.25 -> 19.75
        "M82",
        "G92 E0",
        "G1 X70 E0.25",  # +0.25 -> 20
    ]
    body: list[str] = []
    for i in range(BLOCKS):  # each block: +5, -2, +2, +2.5 = 7.5 net
        x = 20 + (i % 100)
        body += ["G92 E0", f"G1 X{x} Y20 E5 F3000", "G1 E3 F2400", "G1 E5", f"G1 X{x} Y30 E7.5 F3000"]
    return head + body + ["G1 E6.5 F2400"], 20.0 + 7.5 * BLOCKS - 1.0  # ends with a 1 mm retraction


@pytest.fixture
def collector(broker: Mosquitto, unique: str) -> Iterator[Collector]:
    c = Collector(broker.port, f"{root_topic(unique)}/#")
    yield c
    c.close()


async def test_filament_of_a_job_with_resets_and_retractions_reaches_the_job_record(
    broker: Mosquitto, collector: Collector, unique: str, tmp_path: Path
) -> None:
    """The same moves printed twice: two job records, each with exactly the file's filament;
    the second file's slicer comments say 2.85 mm PETG, so its volume and mass follow them."""
    lines, length = known_job()
    assert length == 1519.0
    job_dir = tmp_path / "jobs"

    def completed(n: int) -> Any:
        return lambda _m: len([e for e in job_events(collector) if e["event"] == "job_completed"]) >= n

    async with MarlinSim(speedup=500.0) as sim:
        config = write_config(
            tmp_path, broker.port, [gcode_device("printer", "marlin-printer", sim.path, job_dir=str(job_dir))],
            cell=unique,
        )
        async with running_daemon(config):
            await collector.until(lambda _m: latest_value(collector, "printer", "state") == "Idle", what="Idle")
            drop_job(job_dir, "part.gcode", lines)
            await collector.until(completed(1), timeout=40, what="the first print completed")
            assert sim.filament_mm == pytest.approx(length)  # the firmware moved exactly that much
            petg = [*lines, "; filament_diameter = 2.85", "; filament_density = 1.27"]  # as PrusaSlicer ends a file
            drop_job(job_dir, "part.gcode", petg)  # the same moves again
            await collector.until(completed(2), timeout=40, what="the second print completed")
            await collector.until(
                lambda _m: (j := collector.latest("/printer/job")) is not None and j["state"] == "completed"
                and j["job_id"] == job_events(collector)[-1]["job"]["job_id"],
                what="the retained record of the second print",
            )
    events = job_events(collector)
    assert [e["event"] for e in events] == ["job_started", "job_completed"] * 2
    first, second = events[1]["job"], events[3]["job"]
    assert first["job_id"] != second["job_id"]
    assert first["job_id"].startswith("part.gcode@")
    assert first["program"] == second["program"] == "part.gcode"
    for job, radius, density in ((first, 0.875, 1.24), (second, 1.425, 1.27)):
        volume = math.pi * radius**2 * length / 1000.0
        assert job["materials"]["filament"] == {
            "amount": length,
            "unit": "mm",
            "volume_cm3": round(volume, 4),
            "mass_g": round(volume * density, 4),
        }
    assert collector.latest("/printer/job") == {**second, "ts": collector.latest("/printer/job")["ts"]}
    assert latest_value(collector, "printer", "job_filament_mm") == length


def job_events(c: Collector) -> list[dict[str, Any]]:
    return [m.json() for m in c.on("/printer/events") if m.json().get("event", "").startswith("job_")]
