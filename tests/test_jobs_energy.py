"""Energy and material per job over Modbus (issue 11 item 4). Energy: the PLC's device
config relates the cell's energy meter (`energy: {meter: meter}`); the job's `energy_kwh`
is the meter's advance over the job window. Both devices are cellctl-sim units on one real
Modbus TCP server; the meter's `energy_import` grows by itself (integral of its simulated
power), and the test adds a known 12.5 kWh step during the job. Material: a PLC's wire
counter (uint16 metres) declared as a material, across a wrap and a reset mid-job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, modbus_device, root_topic, running_daemon, write_config
from tests.test_jobs_end_to_end import text

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def cell() -> AsyncIterator[tuple[SimModbusServer, int]]:
    async with SimModbusServer({1: "energy-meter", 2: "blank"}, tick=0.05, seed=3) as sim:
        yield sim, await sim.serve_tcp()


def meter_values(c: Collector) -> list[tuple[int, float]]:
    out = []
    for m in c.on("/meter/data"):
        body = m.json()
        if "energy_import" in body["values"]:
            out.append((body["ts"], body["values"]["energy_import"]))
    return out


def event(c: Collector, kind: str) -> dict[str, Any] | None:
    found = [m.json() for m in c.on("/plc/events") if m.json()["event"] == kind]
    return found[0] if found else None


async def test_energy_of_a_job_is_the_meter_advance_over_the_job_window(
    cell: tuple[SimModbusServer, int], broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    sim, port = cell
    meter, plc = sim.unit(1), sim.unit(2)
    plc.load("holding", 0, [1])  # idle
    config = write_config(
        tmp_path,
        broker.port,
        [
            modbus_device("meter", "sim-energy-meter", port, 1),
            modbus_device("plc", "sim-machine-plc", port, 2, energy={"meter": "meter"}),
        ],
        cell=unique,
        oee={"timezone": "UTC", "shifts": [{"name": "am", "start": "00:00", "end": "12:00"},
                                           {"name": "pm", "start": "12:00", "end": "00:00"}]},
    )
    c = Collector(broker.port, f"{root_topic(unique)}/#")
    try:
        async with running_daemon(config):
            await c.until(lambda _m: c.on("/plc/state") and meter_values(c), what="both devices online")
            meter.set_value("energy_import", 2000.0)
            await c.until(lambda _m: (v := meter_values(c)) and v[-1][1] < 2001, what="the meter at 2000 kWh")
            plc.load("holding", 10, text("BRACKET"))
            plc.load("holding", 0, [2])  # running: the job starts
            await c.until(lambda _m: event(c, "job_started"), what="started")
            meter.set_value("energy_import", 2012.5)  # the machine drew 12.5 kWh
            await c.until(lambda _m: meter_values(c)[-1][1] >= 2012.5, what="the meter at 2012.5 kWh")
            plc.load("holding", 10, text("FLANGE"))  # the next program ends the job
            await c.until(lambda _m: event(c, "job_aborted"), what="ended")
            state = await c.until(
                lambda _m: (s := c.on("/plc/state")) and "oee_shift" in s[-1].json() and s[-1].json(),
                what="the shift's OEE in the state",
            )
    finally:
        c.close()
    started, ended = event(c, "job_started"), event(c, "job_aborted")
    assert started is not None
    assert ended is not None
    assert started["job"]["energy_kwh"] == 0.0
    energy = ended["job"]["energy_kwh"]
    # The meter's own figures over the window: its last sample before the start and the end.
    values = meter_values(c)
    at_start = [v for ts, v in values if ts <= started["job"]["start_ts"]][-1]
    at_end = [v for ts, v in values if ts <= ended["job"]["end_ts"]][-1]
    assert energy == pytest.approx(at_end - at_start, abs=0.011)  # one deadband (0.01 kWh) of lag at most
    assert 12.5 - 0.011 <= energy <= 12.5 + 0.1  # the step, plus what the meter's own power added meanwhile
    # the cell's shift calendar gives a second OEE window beside the hour
    assert state["oee"]["window"] == "hour"
    assert state["oee_shift"]["window"] in ("am", "pm")
    assert state["oee_shift"]["start_ts"] % (12 * 3600 * 1000) == 0


def plc_with_wire(profile_dir: Path) -> None:
    """The sim PLC's profile plus a wire counter (holding 30, uint16 metres) as a material."""
    src = Path(__file__).parents[1] / "sim_devices" / "cellctl_sim" / "profiles" / "sim-machine-plc.yaml"
    profile = yaml.safe_load(src.read_text(encoding="utf-8"))
    profile["name"] = "plc-wire"
    profile["points"].append(
        {"id": "wire_m", "type": "int", "unit": "m", "address": {"table": "holding", "start": 30, "type": "uint16"}}
    )
    profile["job"]["materials"] = {"wire": {"point": "wire_m", "unit": "m", "modulus": 65536}}
    profile_dir.mkdir()
    (profile_dir / "plc-wire.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")


async def test_a_material_counter_survives_a_wrap_and_a_reset_mid_job(
    cell: tuple[SimModbusServer, int], broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    sim, port = cell
    plc = sim.unit(2)
    plc.load("holding", 0, [1])  # idle
    plc.load("holding", 30, [65500])  # the wire counter, near its uint16 end
    plc_with_wire(tmp_path / "profiles")
    config = write_config(
        tmp_path, broker.port, [modbus_device("plc", "plc-wire", port, 2)], cell=unique,
        profile_dirs=[str(tmp_path / "profiles")],
    )  # fmt: skip
    c = Collector(broker.port, f"{root_topic(unique)}/#")

    def wire() -> Any:
        jobs = c.on("/plc/job")
        return jobs[-1].json()["materials"]["wire"]["amount"] if jobs else None

    try:
        async with running_daemon(config):
            await c.until(lambda _m: c.on("/plc/state"), what="the PLC online")
            plc.load("holding", 10, text("COIL"))
            plc.load("holding", 0, [2])  # running: the job starts at 65500 m
            await c.until(lambda _m: event(c, "job_started"), what="started")
            plc.load("holding", 30, [20])  # wrapped: +56
            await c.until(lambda _m: wire() == 56, what="56 m across the wrap")
            plc.load("holding", 30, [3])  # the PLC reset its counter, then 3 m more: +3
            await c.until(lambda _m: wire() == 59, what="59 m after the reset")
            plc.load("holding", 30, [13])  # +10
            plc.load("holding", 10, text("NEXT"))  # the next program ends the job
            await c.until(lambda _m: event(c, "job_aborted"), what="ended")
    finally:
        c.close()
    ended = event(c, "job_aborted")
    assert ended is not None
    assert ended["job"]["materials"] == {"wire": {"amount": 69, "unit": "m", "volume_cm3": None, "mass_g": None}}
