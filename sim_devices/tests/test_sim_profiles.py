"""The shipped sim-* profiles agree with the simulator's register maps, point for point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cellctl_sim.modbus.devices import DEVICE_TYPES
from cellctl_sim.modbus.registers import WireType

PROFILES = Path(__file__).resolve().parents[1] / "cellctl_sim" / "profiles"
PROFILE_OF = {
    "energy-meter": "sim-energy-meter",
    "machine-plc": "sim-machine-plc",
    "type-test": "sim-types",
    "bench": "sim-bench",
}


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((PROFILES / f"{name}.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize(("device_type", "profile"), sorted(PROFILE_OF.items()))
def test_profile_matches_register_map(device_type: str, profile: str) -> None:
    data = _load(profile)
    assert data["name"] == profile
    assert data["driver"] == "modbus"
    reg_map = DEVICE_TYPES[device_type].MAP
    by_id = {p["id"]: p for p in data["points"]}
    assert set(by_id) == {p.name for p in reg_map.points}, "same point ids"
    for point in reg_map.points:
        prof = by_id[point.name]
        addr = prof["address"]
        assert addr["table"] == point.table.value, point.name
        assert addr["start"] == point.start, point.name
        assert addr.get("type", "bool") == point.type.value, point.name
        assert addr.get("order", "ABCD") == point.order.value, point.name
        assert addr.get("bit") == point.bit, point.name
        assert addr.get("length") == point.length, point.name
        assert set(addr) <= {"table", "start", "type", "order", "bit", "length"}, point.name
        allowed = {point.type.value_type}
        if point.type.value_type == "int" and ("scale" in prof or "offset" in prof):
            allowed.add("float")  # a scaled integer register, e.g. degC x 10
        assert prof["type"] in allowed, point.name
        assert (prof.get("access", "r") != "r") == point.writable, point.name


def test_profile_details_the_brief_asks_for() -> None:
    plc = {p["id"]: p for p in _load("sim-machine-plc")["points"]}
    assert plc["temperature"]["type"] == "float"
    assert plc["temperature"]["scale"] == 0.1
    assert plc["temperature"]["unit"] == "°C"
    assert plc["setpoint"]["access"] == "rw"
    assert plc["setpoint"]["min"] < plc["setpoint"]["max"]
    assert plc["run_enable"]["access"] == "rw"
    assert plc["run_enable"]["type"] == "bool"
    states = _load("sim-machine-plc")["state"]["map"]
    assert set(states) == {"0", "1", "2", "3", "4", "5"}
    bench = _load("sim-bench")["points"]
    assert all(p["type"] == "int" for p in bench)
    assert not any("deadband" in p for p in bench)
    types = {p["id"] for p in _load("sim-types")["points"]}
    assert {"f32_cdab", "i64_dcba", "u16_badc", "str_badc", "bit3_badc", "coil_0", "discrete_17"} <= types


@pytest.mark.parametrize("profile", sorted(PROFILE_OF.values()))
def test_profile_validates_against_cellctl_schema(profile: str) -> None:
    schema = pytest.importorskip("cellctl.config.profile")
    parsed = schema.Profile.model_validate(_load(profile))
    assert parsed.name == profile


def test_every_map_point_has_a_value_type() -> None:
    for cls in DEVICE_TYPES.values():
        for p in cls.MAP.points:
            assert p.type.value_type in ("bool", "int", "float", "string")
            if p.type is WireType.BOOL:
                assert p.table.is_bits
