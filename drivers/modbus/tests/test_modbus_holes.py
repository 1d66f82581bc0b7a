"""A hole in a device's map makes only the points really there bad (issue 9 item 2).

Against the cellctl_sim Modbus simulator over TCP, with holes cut into its map: a read
touching a hole is refused whole with exception 2, as real devices do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from cellctl_modbus.config import ModbusConnection
from cellctl_modbus.plugin import plugin
from cellctl_sim.modbus import SimModbusServer, Table
from modbus_testutil import device_ctx, spec
from structlog.testing import capture_logs

from cellctl.driver import PointSpec

pytestmark = pytest.mark.timeout(30)

ILLEGAL_ADDRESS = "modbus exception 2 (illegal data address)"


@pytest.fixture
async def sim() -> AsyncIterator[SimModbusServer]:
    async with SimModbusServer({1: "type-test"}, auto_tick=False, seed=1) as s:
        yield s


def u16(i: int, start: int) -> PointSpec:
    return spec(i, "int", table="holding", start=start, type="uint16")


def coil(i: int, start: int) -> PointSpec:
    return spec(i, "bool", table="coil", start=start)


def image(sim: SimModbusServer, table: Table, address: int) -> Any:
    return sim.unit(1).image.table(table)[address]


def events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "modbus_unreadable_addresses"]


async def test_only_the_missing_addresses_go_bad(sim: SimModbusServer) -> None:
    port = await sim.serve_tcp()
    sim.add_hole("coil", 16, unit=1)
    sim.add_hole("holding", 100, unit=1)
    points = [coil(0, 15), coil(1, 16), u16(2, 95), u16(3, 100), u16(4, 102), u16(5, 0)]
    ctx = device_ctx(_tcp(port), points)
    unit = sim.unit(1)
    with capture_logs() as logs:
        async with plugin.open(ctx) as dev:
            first = await dev.poll()
            before = unit.requests
            second = await dev.poll()
            second_reads = unit.requests - before
            third = await dev.poll()
    for reading in (first, second, third):
        assert reading.errors == {1: ILLEGAL_ADDRESS, 3: ILLEGAL_ADDRESS}
        assert reading.values[0] == image(sim, Table.COIL, 15)
        assert reading.values[2] == image(sim, Table.HOLDING, 95)
        assert reading.values[4] == image(sim, Table.HOLDING, 102)
        assert reading.values[5] == image(sim, Table.HOLDING, 0)
    # learned once: the second poll reads coil 15, holding 0, 95 and 102, none refused
    assert second_reads == 4
    learned = events(logs)
    assert [(e["table"], e["unreadable"], e["points"]) for e in learned] == [
        ("holding", "100", ["p3"]),
        ("coil", "16", ["p1"]),
    ]
    assert learned[0]["reason"] == [ILLEGAL_ADDRESS]
    assert learned[0]["reads"] == [
        "holding 0..0 (1 register, 1 point)",
        "holding 95..95 (1 register, 1 point)",
        "holding 102..102 (1 register, 1 point)",
    ]


async def test_a_hole_between_points_splits_the_read(sim: SimModbusServer) -> None:
    port = await sim.serve_tcp()
    sim.add_hole("holding", 100, unit=1)
    points = [u16(0, 95), u16(1, 96), u16(2, 102), u16(3, 103)]
    unit = sim.unit(1)
    with capture_logs() as logs:
        async with plugin.open(device_ctx(_tcp(port), points)) as dev:
            first = await dev.poll()
            before = unit.requests
            second = await dev.poll()
            second_reads = unit.requests - before
    expected = [image(sim, Table.HOLDING, a) for a in (95, 96, 102, 103)]
    assert first.errors is None
    assert second.errors is None
    assert first.values == second.values == expected
    assert second_reads == 2  # 95..96 and 102..103: the largest reads that work
    (learned,) = events(logs)
    assert (learned["unreadable"], learned["split_before"]) == ("", "102")


async def test_relearned_on_a_new_connection(sim: SimModbusServer) -> None:
    port = await sim.serve_tcp()
    hole = sim.add_hole("holding", 100, unit=1)
    points = [u16(0, 95), u16(1, 100)]
    ctx = device_ctx(_tcp(port), points)
    async with plugin.open(ctx) as dev:
        assert (await dev.poll()).errors == {1: ILLEGAL_ADDRESS}
    sim.unit(1).faults.exceptions.remove(hole)  # the device was reconfigured meanwhile
    async with plugin.open(ctx) as dev:
        reading = await dev.poll()
    assert reading.errors is None
    assert reading.values == [image(sim, Table.HOLDING, 95), image(sim, Table.HOLDING, 100)]


async def test_transient_exceptions_are_not_remembered(sim: SimModbusServer) -> None:
    port = await sim.serve_tcp()
    busy = sim.set_exception(6, unit=1, table="holding", start=100, end=100)
    points = [u16(0, 95), u16(1, 100)]
    async with plugin.open(device_ctx(_tcp(port), points)) as dev:
        first = await dev.poll()
        sim.unit(1).faults.exceptions.remove(busy)
        second = await dev.poll()
    busy_reason = "modbus exception 6 (server device busy)"
    assert first.errors == {0: busy_reason, 1: busy_reason}
    assert second.errors is None


def _tcp(port: int) -> ModbusConnection:
    return ModbusConnection(transport="tcp", host="127.0.0.1", port=port, unit=1)
