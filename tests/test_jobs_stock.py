"""CNC stock consumed per part and material lots (issue 11 §1, §4): a `per_part` material
accumulates its figure for every part produced (good + scrap), from the profile or a
point giving the job's own figure; a material's lot comes from a point or the device
config (MTConnect RawMaterial lot) and is carried in the job record and its events, end
to end with a scripted PLC and a real broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from cellctl_sim.modbus.server import SimModbusServer
from pydantic import ValidationError

from cellctl.config.loader import load_cell
from cellctl.config.profile import MaterialDef
from cellctl.encode.sparkplug import device_model
from cellctl.jobs.tracker import JobTracker
from cellctl.localbroker import Mosquitto
from cellctl.model import Execution, ItemState, MachineState, OperationMode
from cellctl.sparkplug.codec import DataType
from cellctl.sparkplug.state import AliasBook
from cellctl.testing import Collector, modbus_device, root_topic, running_daemon, write_config
from cellctl.testing.registers import text_registers as text
from cellctl.testing.registers import words32

RUN = MachineState(ItemState.EXECUTING, OperationMode.PROCESSING, Execution.ACTIVE)
STOCK = {
    "bar": MaterialDef.model_validate({"per_part": 0.35, "unit": "kg", "form": "bar"}),
    "blank": MaterialDef.model_validate({"per_part_point": "blank_kg", "unit": "kg", "lot_point": "blank_lot"}),
}


def observe(
    t: JobTracker, s: float, good: int, bad: int, *, blank_kg: float | None = None, lot: str | None = None
) -> list[str]:
    events = t.observe(
        now_ms=int(s * 1000), job_id="J1", order_id=None, program=None, good=good, bad=bad, machine=RUN,
        completed=False, stopped=False, materials={"bar": None, "blank": blank_kg}, lots={"blank": lot},
    )
    return [e.event for e in events]


def used(t: JobTracker) -> dict[str, tuple[float, str | None, str | None]]:
    assert t.current is not None
    return {m.name: (round(m.amount, 6), m.lot, m.form) for m in t.current.materials}


def test_stock_per_part_counts_good_and_scrap_with_the_jobs_figure() -> None:
    t = JobTracker(materials=STOCK)
    assert observe(t, 0, 100, 5, blank_kg=None, lot="L-7") == ["started"]
    observe(t, 1, 104, 5, blank_kg=None)  # 4 parts; the blank's figure is not known yet
    assert used(t) == {"bar": (1.4, None, "bar"), "blank": (0.0, "L-7", None)}
    observe(t, 2, 106, 6, blank_kg=2.0)  # +3 parts: the waiting 4 and these 3 at 2.0 kg
    assert used(t)["blank"] == (14.0, "L-7", None)
    observe(t, 3, 108, 6, blank_kg=1.5, lot="L-8")  # +2 parts, from a new lot of blanks
    assert used(t) == {"bar": (round(0.35 * 9, 6), None, "bar"), "blank": (17.0, "L-8", None)}
    record = t.current
    assert record is not None
    assert record.produced == 9
    assert record.as_dict()["materials"]["blank"] == {
        "amount": 17.0, "unit": "kg", "volume_cm3": None, "mass_g": None, "lot": "L-8"
    }
    assert record.as_dict()["materials"]["bar"]["form"] == "bar"


def test_stock_per_part_and_the_lot_continue_after_a_restart() -> None:
    t = JobTracker(materials=STOCK)
    observe(t, 0, 0, 0, blank_kg=2.0, lot="L-7")
    observe(t, 1, 3, 1, blank_kg=2.0)
    saved = t.dump()
    assert saved is not None
    again = JobTracker(materials=STOCK)
    assert [e.event for e in again.resume(saved, job_id="J1", now_ms=2000)] == ["resumed"]
    observe(again, 3, 5, 1, blank_kg=2.0)  # 2 more parts (made while down): counted once
    assert used(again) == {"bar": (round(0.35 * 6, 6), None, "bar"), "blank": (12.0, "L-7", None)}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"per_part": 0.35, "point": "p", "unit": "kg"}, "give 'per_part' or 'per_part_point', not 'point'"),
        ({"kind": "per_part", "unit": "kg"}, "needs 'per_part'"),
        ({"per_part": 0.35, "unit": "kg", "modulus": 10}, "'modulus' is for kind 'counter'"),
        ({"point": "p", "kind": "job_total", "per_part": 1, "unit": "kg"}, "'per_part' is for kind 'per_part'"),
        ({"unit": "kg"}, "kind 'counter' needs 'point'"),
        ({"per_part": -1, "unit": "kg"}, "greater than 0"),
        ({"per_part": 1, "unit": "kg", "form": "ingot"}, "'bar'"),
    ],
)
def test_stock_definitions_are_checked_at_load_time(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MaterialDef.model_validate(spec)


# -- end to end: a scripted PLC, the daemon, a real broker -------------------------------

PROFILE = {
    "name": "cnc-with-stock",
    "driver": "modbus",
    "points": [
        {"id": "state_code", "type": "int", "address": {"table": "holding", "start": 0, "type": "uint16"}},
        {"id": "good_parts", "type": "int", "address": {"table": "holding", "start": 4, "type": "uint32"}},
        {"id": "bad_parts", "type": "int", "address": {"table": "holding", "start": 6, "type": "uint32"}},
        {"id": "program", "type": "string", "address": {"table": "holding", "start": 10, "type": "string", "length": 8}},
        {"id": "bar_lot", "type": "string", "address": {"table": "holding", "start": 20, "type": "string", "length": 8}},
    ],
    "state": {
        "point": "state_code",
        "map": {
            "1": {"item_state": "not_executing", "operation_mode": "processing", "execution": "ready"},
            "2": {"item_state": "executing", "operation_mode": "processing", "execution": "active"},
        },
    },
    "counters": {"good": "good_parts", "bad": "bad_parts", "modulus": 4294967296},
    "job": {
        "id": "program",
        "materials": {
            "bar": {"per_part": 0.35, "unit": "kg", "form": "bar", "lot_point": "bar_lot",
                    "description": "aluminium 6061 bar"},
            "coolant": {"per_part": 0.02, "unit": "l", "form": "liquid"},
        },
    },
}


@pytest.fixture
async def plc() -> AsyncIterator[tuple[SimModbusServer, int]]:
    async with SimModbusServer({2: "blank"}, tick=0.05, seed=1) as sim:  # the test is the machine
        yield sim, await sim.serve_tcp()


@pytest.mark.timeout(60)
async def test_a_jobs_stock_and_lots_reach_its_record_and_events(
    plc: tuple[SimModbusServer, int], broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    sim, port = plc
    unit = sim.unit(2)
    unit.load("holding", 0, [2])
    unit.load("holding", 4, words32(50))
    unit.load("holding", 6, words32(3))
    unit.load("holding", 20, text("H-2291"))  # the bar's heat / lot number, from the machine
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "cnc-with-stock.yaml").write_text(yaml.safe_dump(PROFILE), encoding="utf-8")
    device = modbus_device("cnc", "cnc-with-stock", port, 2, lots={"bar": "ignored: the point says", "coolant": "C-88"})
    config = write_config(tmp_path, broker.port, [device], cell=unique, profile_dirs=[str(profiles)])
    c = Collector(broker.port, f"{root_topic(unique)}/cnc/#")
    try:
        async with running_daemon(config):
            await c.until(lambda _m: c.on("/cnc/state"), what="the machine online")
            unit.load("holding", 10, text("P-100"))
            await c.until(lambda _m: [m for m in c.on("/cnc/events") if m.json()["event"] == "job_started"], what="started")
            unit.load("holding", 4, words32(58))  # 8 good
            unit.load("holding", 6, words32(5))  # 2 scrap
            await c.until(lambda _m: (j := c.on("/cnc/job")) and j[-1].json()["produced"] == 10, what="10 parts")
            unit.load("holding", 10, text("P-200"))  # the next job ends this one
            await c.until(lambda _m: [m for m in c.on("/cnc/events") if m.json()["event"] == "job_aborted"], what="ended")
    finally:
        c.close()
    ended = next(m.json() for m in c.on("/cnc/events") if m.json()["event"] == "job_aborted")["job"]
    assert ended["job_id"] == "P-100"
    assert ended["materials"] == {
        "bar": {"amount": 3.5, "unit": "kg", "volume_cm3": None, "mass_g": None, "lot": "H-2291", "form": "bar"},
        "coolant": {"amount": 0.2, "unit": "l", "volume_cm3": None, "mass_g": None, "lot": "C-88", "form": "liquid"},
    }
    started = [m.json()["job"] for m in c.on("/cnc/events") if m.json()["event"] == "job_started"]
    assert [j["job_id"] for j in started] == ["P-100", "P-200"]
    assert started[1]["materials"]["bar"]["amount"] == 0, "the next job counts its own stock"
    assert started[1]["materials"]["bar"]["lot"] == "H-2291", "the bar in the machine is still that lot"


def test_sparkplug_has_a_lot_metric_for_every_job_material(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "cnc-with-stock.yaml").write_text(yaml.safe_dump(PROFILE), encoding="utf-8")
    device = modbus_device("cnc", "cnc-with-stock", 5020, 2)
    config = write_config(tmp_path, 1883, [device], cell="c", profile_dirs=[str(profiles)])
    model = device_model(load_cell(config).devices[0], AliasBook(tmp_path / "aliases.json"))
    lots = {d.name: d.datatype for d in model.table if d.name.endswith("/lot")}
    # coolant has no lot point nor a configured lot, but a job_start may name one
    assert lots == {"Job/materials/bar/lot": DataType.String, "Job/materials/coolant/lot": DataType.String}
    assert model.table.by_name["Job/materials/coolant/amount"].datatype == DataType.Double
