"""Raw values to the normalised machine state, as a profile declares it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from cellctl.config.profile import Profile
from cellctl.driver import Reading
from cellctl.engine.machine import MachineMapper
from cellctl.engine.points import PointTable

A = {"table": "holding", "start": 0, "type": "uint16"}


def profile(**extra: Any) -> Profile:
    return Profile.model_validate(
        {
            "name": "plc",
            "driver": "modbus",
            "points": [
                {"id": "state_code", "type": "int", "address": A},
                {"id": "good", "type": "int", "address": A},
                {"id": "alarm_code", "type": "int", "address": A},
                {"id": "estop", "type": "bool", "address": A},
            ],
            "state": {
                "point": "state_code",
                "map": {
                    "1": {"item_state": "not_executing", "operation_mode": "processing"},
                    "2": {"item_state": "executing", "operation_mode": "processing", "execution": "active"},
                    "3": {
                        "item_state": "not_executing",
                        "operation_mode": "processing",
                        "execution": "feed_hold",
                    },
                },
            },
            "counters": {"good": "good"},
            "alarms": [
                {"point": "alarm_code", "texts": {"17": "spindle overload"}},
                {"point": "estop", "code": "ESTOP", "text": "emergency stop", "severity": "fatal"},
            ],
            **extra,
        }
    )


def mapped(values: list[Any], available: bool = True) -> dict[str, Any]:
    p = profile()
    table = PointTable(p.points)
    table.apply(Reading(values))
    return MachineMapper(p, table).compute(available).as_dict()


def test_running_machine_maps_to_executing() -> None:
    m = mapped([2, 41, 0, False])
    assert (m["item_state"], m["operation_mode"], m["execution"]) == ("executing", "processing", "active")
    assert m["raw_state"] == "2"
    assert m["counters"] == {"good": 41}
    assert m["alarms"] == []


def test_execution_defaults_from_item_state() -> None:
    assert mapped([1, 0, 0, False])["execution"] == "ready"


def test_unknown_raw_state_uses_default_and_keeps_raw() -> None:
    m = mapped([9, 0, 0, False])
    assert m["item_state"] == "not_executing"
    assert m["raw_state"] == "9"


def test_alarms_from_code_and_bool() -> None:
    m = mapped([3, 0, 17, True])
    assert m["execution"] == "feed_hold"
    assert m["alarms"] == [
        {"code": "17", "text": "spindle overload", "severity": "error"},
        {"code": "ESTOP", "text": "emergency stop", "severity": "fatal"},
    ]


def test_unavailable_device_is_not_available_whatever_the_values() -> None:
    m = mapped([2, 5, 0, False], available=False)
    assert (m["item_state"], m["execution"]) == ("not_available", "unavailable")


def test_profile_reference_to_missing_point_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"counters\.bad: names point 'scrap'"):
        profile(counters={"good": "good", "bad": "scrap"})


def test_an_unreadable_state_point_gives_an_unknown_state_and_nothing_derived_from_bad_points() -> None:
    """Issue 9 item 3: a state that cannot be read is not known; counters only from good points."""
    p = profile()
    table = PointTable(p.points)
    errors = {0: "modbus exception 11 (gateway target device failed to respond)", 1: "same"}
    table.apply(Reading([None, None, 0, False], errors=errors))
    m = MachineMapper(p, table).compute(True).as_dict()
    assert m["item_state"] == "unknown"
    assert m["execution"] == "unavailable"
    assert m["operation_mode"] == "none"
    assert m["raw_state"] is None
    assert m["counters"] == {}
    assert "state_code" in m["reason"]
    assert "exception 11" in m["reason"]


def test_a_profile_that_maps_nothing_of_the_machine_has_no_machine_state() -> None:
    """Issue 9 item 15: an energy meter shows no `not_executing / ready` it does not have."""
    meter = Profile.model_validate(
        {"name": "meter", "driver": "modbus", "points": [{"id": "v", "type": "float", "address": A}]}
    )
    assert not MachineMapper(meter, PointTable(meter.points)).has_machine
    assert MachineMapper(profile(), PointTable(profile().points)).has_machine


def test_profiles_cannot_map_a_raw_state_to_unknown() -> None:
    with pytest.raises(ValidationError, match="item_state"):
        profile(state={"point": "state_code", "map": {"9": {"item_state": "unknown"}}})
