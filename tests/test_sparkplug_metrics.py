"""A device as Sparkplug metrics: lasting aliases, BIRTH with every metric, DATA with only
what changed, and a value that does not fit its datatype sent as null/BAD instead of
losing the message."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cellctl.config.loader import CompiledDevice, load_cell
from cellctl.driver import Reading
from cellctl.encode.sparkplug import DataBuilder, birth_metrics, device_model, encode_safely
from cellctl.engine.runner import DeviceRunner
from cellctl.model import DeviceUpdate, ItemState, Quality, QualityChange
from cellctl.sparkplug.codec import (
    QUALITY_KEY,
    QUALITY_REASON_KEY,
    DataType,
    Metric,
    decode_payload,
    encode_data,
)
from cellctl.sparkplug.state import AliasBook
from cellctl.testing import modbus_device, write_config


class Sink:
    def device_update(self, *a: Any) -> None: ...
    def device_state(self, *a: Any) -> None: ...
    def device_available(self, *a: Any) -> None: ...


@pytest.fixture
def plc(tmp_path: Path) -> CompiledDevice:
    config = write_config(tmp_path, 1883, [modbus_device("plc", "sim-machine-plc", 5020, 2)], cell="c")
    return load_cell(config).devices[0]


def test_model_has_every_point_and_the_machine_state_with_lasting_aliases(
    plc: CompiledDevice, tmp_path: Path
) -> None:
    book = AliasBook(tmp_path / "aliases.json")
    model = device_model(plc, book)
    book.save()
    names = set(model.table.by_name)
    assert {p.id for p in plc.points} <= names
    assert {"Machine/item_state", "Machine/alarms", "Machine/counters/good", "Machine/counters/bad"} <= names
    assert model.table.by_name["Machine/counters/good"].datatype == DataType.Int64
    assert model.table.by_name["setpoint"].datatype == DataType.Double
    assert model.writable == {"setpoint": (0.0, 1000.0), "run_enable": (None, None)}
    again = device_model(plc, AliasBook(tmp_path / "aliases.json"))
    assert {d.name: d.alias for d in again.table} == {d.name: d.alias for d in model.table}


def test_data_carries_only_changes_and_quality_with_the_last_value(
    plc: CompiledDevice, tmp_path: Path
) -> None:
    model = device_model(plc, AliasBook(None))
    runner = DeviceRunner(plc, Sink())
    b = DataBuilder(model)
    n = len(plc.points)
    values = [0] * n
    values[plc.points.index(next(p for p in plc.points if p.id == "program_name"))] = "O1"
    runner.on_reading(Reading(values=values))
    snap = runner.snapshot()
    b.reset(snap)  # as a BIRTH does
    birth = {m.name: m for m in birth_metrics(model, snap, 1)}
    assert birth["temperature"].properties is not None
    assert birth["temperature"].properties[QUALITY_KEY].value == 192
    temp = model.by_point["temperature"][1]
    # a quality change alone: the point's last value with Quality BAD and the reason
    ms = b.metrics(DeviceUpdate("plc", 2, {}, {"temperature": QualityChange(Quality.BAD, "timeout")}))
    assert [(m.alias, m.value) for m in ms] == [(temp.alias, 0.0)]
    assert ms[0].properties is not None
    assert ms[0].properties[QUALITY_KEY].value == 0
    assert ms[0].properties[QUALITY_REASON_KEY].value == "timeout"
    # machine: only the fields that changed since the last DATA or BIRTH
    machine = runner.machine
    assert b.metrics(DeviceUpdate("plc", 3, {}, {}, machine)) == []
    changed = dataclasses.replace(machine, item_state=ItemState.EXECUTING)
    ms = b.metrics(DeviceUpdate("plc", 4, {}, {}, changed))
    assert [m.alias for m in ms] == [model.machine["item_state"].alias]
    assert ms[0].value == "executing"


def test_a_value_that_does_not_fit_is_sent_as_null_and_bad() -> None:
    ms = [
        Metric(alias=1, datatype=DataType.Int64, value=2**64, timestamp=5),  # a uint64 register
        Metric(alias=2, datatype=DataType.Double, value=1.5, timestamp=5),
    ]
    payload, bad = encode_safely(lambda x: encode_data(timestamp=5, metrics=x), ms)
    assert bad == 1
    got = decode_payload(payload).metrics
    assert got[0].value is None
    assert got[0].properties is not None
    assert got[0].properties[QUALITY_KEY].value == 0
    assert "out of range" in str(got[0].properties[QUALITY_REASON_KEY].value)
    assert got[1].value == 1.5
