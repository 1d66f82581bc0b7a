"""Material per job, the pure parts (issue 11 item 4): material counters with wrap and
reset-safe deltas, a device's own per-job total, volume and mass from the profile's
filament diameter and density, the profile checks, and the counts surviving a restart."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from cellctl.config.profile import MaterialDef, Profile
from cellctl.jobs.counting import MaterialCount
from cellctl.jobs.tracker import JobTracker
from cellctl.model import Execution, ItemState, MachineState, OperationMode

RUN = MachineState(ItemState.EXECUTING, OperationMode.PROCESSING, Execution.ACTIVE)
MATERIALS = {
    "steel": MaterialDef(point="steel_kg", unit="kg", modulus=65536),
    "filament": MaterialDef(point="fil", unit="mm", kind="job_total", diameter_mm=1.75, density_g_cm3=1.24),
}


def observe(t: JobTracker, s: float, job: str | None, steel: float | None, fil: float | None) -> list[str]:
    events = t.observe(
        now_ms=int(s * 1000), job_id=job, order_id=None, program=None, good=None, bad=None, machine=RUN,
        completed=False, stopped=False, materials={"steel": steel, "filament": fil},
    )
    return [e.event for e in events]


def test_material_counter_survives_a_wrap_and_a_reset_and_a_job_total_is_taken_as_is() -> None:
    t = JobTracker(materials=MATERIALS)
    observe(t, 0, None, 65000, 0)  # before the job: not counted
    assert observe(t, 1, "J1", 65500, 0) == ["started"]
    observe(t, 2, "J1", 100, 250.0)  # uint16 wrap: +136
    observe(t, 3, "J1", 5, 480.5)  # a reset (small fall): +5
    observe(t, 4, "J1", None, None)  # unreadable now: keeps what was counted
    record = t.current
    assert record is not None
    used = {m.name: m for m in record.materials}
    assert used["steel"].amount == 136 + 5
    assert (used["steel"].unit, used["steel"].volume_cm3, used["steel"].mass_g) == ("kg", None, None)
    volume = math.pi * 0.875**2 * 480.5 / 1000
    assert used["filament"].amount == 480.5
    assert used["filament"].volume_cm3 == pytest.approx(volume)
    assert used["filament"].mass_g == pytest.approx(volume * 1.24)
    assert record.as_dict()["materials"]["steel"] == {"amount": 141, "unit": "kg", "volume_cm3": None, "mass_g": None}
    assert observe(t, 5, "J2", 7, 0.0) == ["aborted", "started"]  # the next job counts from zero
    assert t.current is not None
    assert {m.name: m.amount for m in t.current.materials} == {"steel": 0, "filament": 0.0}


def test_material_counts_continue_after_a_restart() -> None:
    t = JobTracker(materials=MATERIALS)
    observe(t, 1, "J1", 10, 0.0)
    observe(t, 2, "J1", 30, 100.0)
    saved = t.dump()
    assert saved is not None
    again = JobTracker(materials=MATERIALS)
    assert [e.event for e in again.resume(saved, job_id="J1", now_ms=3000)] == ["resumed"]
    observe(again, 4, "J1", 45, 150.0)  # made while down and after: counted once
    assert again.current is not None
    assert {m.name: m.amount for m in again.current.materials} == {"steel": 35, "filament": 150.0}


def test_float_material_counter_wraps_with_its_modulus() -> None:
    c = MaterialCount(modulus=1000)
    for raw in (990.5, 999.0, 2.5, 1.0, 3.0):  # wrap +12, then a reset to 1.0 (+1.0), +2
        c.update(raw)
    assert c.total == pytest.approx(8.5 + 3.5 + 1.0 + 2.0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"point": "p", "unit": "kg", "diameter_mm": 1.75}, "a diameter needs a length unit"),
        ({"point": "p", "unit": "mm", "density_g_cm3": 1.2}, "a density needs 'diameter_mm' or 'diameter_point'"),
        ({"point": "p", "unit": "mm", "kind": "job_total", "modulus": 10}, "'modulus' is for kind 'counter'"),
        ({"point": "p", "unit": "mm", "kind": "gauge"}, "counter"),
        ({"point": "p", "unit": "kg", "diameter_point": "d"}, "a diameter needs a length unit"),
        ({"point": "p", "unit": "mm", "density_point": "r"}, "a density needs"),
    ],
)
def test_material_definitions_are_checked_at_load_time(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MaterialDef.model_validate(spec)


def test_a_material_naming_an_unknown_point_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"job\.materials\.steel\.point: names point 'steel_kg'"):
        Profile.model_validate(
            {
                "name": "press",
                "driver": "modbus",
                "points": [{"id": "program", "type": "string", "address": {}}],
                "job": {"id": "program", "materials": {"steel": {"point": "steel_kg", "unit": "kg"}}},
            }
        )


def test_the_jobs_own_diameter_and_density_come_before_the_profiles() -> None:
    t = JobTracker(materials=MATERIALS)

    def fil(s: float, amount: float, params: tuple[float | None, float | None]) -> None:
        t.observe(
            now_ms=int(s * 1000), job_id="J1", order_id=None, program=None, good=None, bad=None, machine=RUN,
            completed=False, stopped=False, materials={"filament": amount}, material_params={"filament": params},
        )

    fil(1, 0.0, (None, None))
    fil(2, 1000.0, (2.85, 1.04))  # the slicer said 2.85 mm PETG
    assert t.current is not None
    used = {m.name: m for m in t.current.materials}["filament"]
    assert used.volume_cm3 == pytest.approx(math.pi * 1.425**2 * 1000 / 1000)
    assert used.mass_g == pytest.approx(math.pi * 1.425**2 * 1.04)
    fil(3, 1000.0, (0.0, None))  # nonsense from the job: the profile's 1.75 mm / 1.24 g/cm3
    used = {m.name: m for m in t.current.materials}["filament"]
    assert used.mass_g == pytest.approx(math.pi * 0.875**2 * 1.24)
