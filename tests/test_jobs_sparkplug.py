"""The job record and OEE as Sparkplug metrics (issue 11 item 1): a PLC job from the
simulator, captured as a host sees it and decoded with the generated protobuf classes
(cellctl.testing.sparkplug), never with cellctl's own codec."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import modbus_device, running_daemon, write_config
from cellctl.testing.sparkplug import Capture, SpMessage, metric_value
from tests.test_jobs_end_to_end import text, words32

pytestmark = pytest.mark.timeout(60)

DATETIME, INT64, DOUBLE, STRING = 13, 4, 10, 12


@pytest.fixture
async def cell() -> AsyncIterator[tuple[SimModbusServer, int]]:
    async with SimModbusServer({1: "energy-meter", 2: "blank"}, tick=0.05, seed=5) as sim:
        yield sim, await sim.serve_tcp()


def births(msgs: list[SpMessage]) -> list[Any]:
    return [m.decode() for m in msgs if m.kind == "DBIRTH" and m.device == "plc"]


def job_datas(msgs: list[SpMessage], names: dict[int, str]) -> list[dict[str, Any]]:
    """Each DDATA of the PLC that carries job metrics, as {name: value}."""
    out = []
    for m in msgs:
        if m.kind == "DDATA" and m.device == "plc":
            fields = {names[x.alias]: metric_value(x) for x in m.decode().metrics if x.alias in names}
            if any(k.startswith("Job/") for k in fields):
                out.append(fields)
    return out


def oee_values(msgs: list[SpMessage], names: dict[int, str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for m in msgs:
        if m.kind == "DDATA" and m.device == "plc":
            for x in m.decode().metrics:
                name = names.get(x.alias, "")
                if name.startswith("OEE/"):
                    seen[name] = metric_value(x)
    return seen


async def test_job_record_and_oee_in_dbirth_and_ddata(
    cell: tuple[SimModbusServer, int], broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    sim, port = cell
    plc = sim.unit(2)
    plc.load("holding", 0, [1])  # idle
    plc.load("holding", 4, words32(100))  # good parts
    plc.load("holding", 6, words32(5))  # scrap
    config = write_config(
        tmp_path,
        broker.port,
        [
            modbus_device("meter", "sim-energy-meter", port, 1),
            modbus_device("plc", "sim-machine-plc", port, 2, energy={"meter": "meter"}),
        ],
        cell=unique,
        publish={"formats": ["sparkplug"]},
        oee={"timezone": "UTC", "shifts": [{"name": "am", "start": "00:00", "end": "12:00"},
                                           {"name": "pm", "start": "12:00", "end": "00:00"}]},
    )
    cap = Capture(broker.port, "spBv1.0/test-lab-a1/#")
    try:
        async with running_daemon(config):
            await cap.until(births, what="DBIRTH of the PLC")
            birth = births(cap.snapshot())[-1]
            names = {x.alias: x.name for x in birth.metrics if x.HasField("alias")}
            plc.load("holding", 10, text("BRACKET"))
            plc.load("holding", 0, [2])  # running: the job starts
            await cap.until(
                lambda m: any(d.get("Job/state") == "running" for d in job_datas(m, names)), what="job running"
            )
            plc.load("holding", 4, words32(106))  # +6 good
            plc.load("holding", 6, words32(7))  # +2 scrap
            await cap.until(lambda m: any(d.get("Job/produced") == 8 for d in job_datas(m, names)), what="8 parts")
            plc.load("holding", 10, text("FLANGE"))  # the next program ends this job
            await cap.until(
                lambda m: any(d.get("Job/id") == "FLANGE" for d in job_datas(m, names)), what="the next job"
            )
            await cap.until(
                lambda m: oee_values(m, names).get("OEE/produced") == 8
                and oee_values(m, names).get("OEE/shift/produced") == 8,
                what="the hour's and the shift's OEE in DDATA",
            )
            msgs = cap.snapshot()
    finally:
        cap.close()
    by_name = {x.name: x for x in birth.metrics}
    for name, datatype in {
        "Job/id": STRING, "Job/state": STRING, "Job/event": STRING, "Job/start_ts": DATETIME,
        "Job/produced": INT64, "Job/good": INT64, "Job/scrap": INT64, "Job/running_s": DOUBLE,
        "Job/energy_kwh": DOUBLE, "OEE/availability": DOUBLE, "OEE/oee": DOUBLE,
        "OEE/seconds/executing": DOUBLE, "OEE/shift/name": STRING, "OEE/shift/start_ts": DATETIME,
        "OEE/shift/oee": DOUBLE,
    }.items():
        assert by_name[name].datatype == datatype, name
    assert by_name["Job/id"].is_null  # no job yet when the PLC was birthed
    datas = job_datas(msgs, names)  # each DATA carries what changed: a host folds them
    views, view = [], {x.name: metric_value(x) for x in birth.metrics}
    for d in datas:
        view = {**view, **d}
        views.append(view)
    i = next(i for i, d in enumerate(datas) if d.get("Job/state") == "aborted")
    ended = views[i]
    assert ended["Job/id"] == "BRACKET"
    assert ended["Job/event"] == "aborted"
    assert ended["Job/reason"] == "next job"
    assert ended["Job/produced"] == 8
    assert ended["Job/scrap"] == 2
    assert ended["Job/end_ts"] > 0
    assert ended["Job/energy_kwh"] >= 0.0
    after = views[i + 1]  # the next job, in a DATA of its own
    assert after["Job/id"] == "FLANGE"
    assert after["Job/event"] == "started"
    assert after["Job/state"] == "running"
    assert after["Job/produced"] == 0
    assert after["Job/start_ts"] == ended["Job/end_ts"]
    oee = {x.name: metric_value(x) for x in birth.metrics if x.name.startswith("OEE/")}
    oee.update(oee_values(msgs, names))  # a host folds the DDATA into what the DBIRTH said
    assert oee["OEE/produced"] == 8
    assert oee["OEE/good"] == 6
    assert oee["OEE/shift/good"] == 6
    assert oee["OEE/shift/name"] in ("am", "pm")
    assert oee["OEE/shift/start_ts"] % (12 * 3600 * 1000) == 0
