"""Integration: the driver over Modbus RTU on real pseudo-terminals, against the
cellctl_sim simulator's RTU server (an RS-485 bus with two units)."""

from __future__ import annotations

import asyncio
import os
import time
import tty

import pytest
from cellctl_modbus import transport
from cellctl_modbus.config import ModbusConnection
from cellctl_modbus.plugin import plugin
from cellctl_sim.modbus import Table
from modbus_testutil import ALL_POINTS, EXPECTED, UNIT1, UNIT2, ServeFactory, device_ctx, reg, spec

from cellctl.driver import DeviceUnavailable

pytestmark = pytest.mark.timeout(30)
MARGIN = 0.5


DEVICE_FAILURE = 4
bus = {1: UNIT1, 2: UNIT2}


async def test_values_read_equal_what_the_server_holds(rtu_sim: ServeFactory) -> None:
    served = await rtu_sim(bus)
    async with plugin.open(device_ctx(served.connection(1), ALL_POINTS)) as dev:
        reading = await dev.poll()
        again = await dev.poll()
    assert reading.errors is None
    assert reading.values == EXPECTED
    assert again.values == EXPECTED


async def test_exception_response_marks_only_those_points(rtu_sim: ServeFactory) -> None:
    served = await rtu_sim(bus)
    points = [reg(0, "int16", start=0), reg(1, "int16", start=250), reg(2, "uint16", start=40)]
    served.sim.set_exception(DEVICE_FAILURE, unit=1, table="holding", start=40, end=40, once=True)  # transient
    async with plugin.open(device_ctx(served.connection(1), points)) as dev:
        first = await dev.poll()
        second = await dev.poll()
    assert first.errors == {
        1: "modbus exception 2 (illegal data address)",
        2: "modbus exception 4 (server device failure)",
    }
    assert first.values[0] == -1234
    assert second.errors == {1: "modbus exception 2 (illegal data address)"}


async def test_silent_unit_does_not_take_the_bus_down(rtu_sim: ServeFactory) -> None:
    served = await rtu_sim(bus)
    timeout = 0.3
    pts = [reg(0, "uint16", start=0)]
    async with (
        plugin.open(device_ctx(served.connection(1), pts, timeout=timeout)) as d1,
        plugin.open(device_ctx(served.connection(2), pts, timeout=timeout)) as d2,
    ):
        (link,) = transport.links().values()
        served.sim.stall(unit=2)
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable, match="no response from unit 2"):
            await d2.poll()
        assert time.monotonic() - t0 < timeout + MARGIN
        assert link.connected
        assert (await d1.poll()).values == [0xFB2E]
        assert link.connects == 1


async def test_silent_single_device_closes_the_port_and_reopens(rtu_sim: ServeFactory) -> None:
    served = await rtu_sim(bus)
    timeout = 0.3
    ctx = device_ctx(served.connection(1), [reg(0, "uint16", start=0)], timeout=timeout)
    async with plugin.open(ctx) as dev:
        served.sim.stall(unit=1)
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable, match="no response from unit 1"):
            await dev.poll()
        assert time.monotonic() - t0 < timeout + MARGIN
        (link,) = transport.links().values()
        assert not link.connected
    served.sim.release()
    async with plugin.open(ctx) as dev:
        assert (await dev.poll()).values == [0xFB2E]


async def test_two_units_on_the_bus_never_overlap(rtu_sim: ServeFactory) -> None:
    served = await rtu_sim(bus)
    served.sim.set_latency(0.002)
    pts = [reg(0, "uint16", start=0), spec(1, "bool", table="coil", start=0)]
    async with (
        plugin.open(device_ctx(served.connection(1), pts, device_id="a")) as d1,
        plugin.open(device_ctx(served.connection(2), pts, device_id="b")) as d2,
    ):
        readings = await asyncio.gather(*(d.poll() for _ in range(8) for d in (d1, d2)))
    assert all(r.errors is None for r in readings)
    assert sorted({r.values[0] for r in readings}) == [7, 0xFB2E]
    assert served.sim.traffic.requests == 2 * 8 * 2
    assert served.sim.traffic.max_in_flight == 1


async def test_writes_land_in_the_server(rtu_sim: ServeFactory) -> None:
    served = await rtu_sim(bus)
    points = [
        reg(0, "int32", start=50, order="DCBA", access="rw"),
        spec(1, "bool", "rw", table="coil", start=1),
        reg(2, "bit", start=24, bit=1, access="rw", order="BADC"),
    ]
    async with plugin.open(device_ctx(served.connection(2), points)) as d2:
        await d2.write(0, -2)
        await d2.write(1, True)
    async with plugin.open(device_ctx(served.connection(1), points)) as d1:
        await d1.write(2, True)
    assert served.read(2, Table.HOLDING, 50, 2) == [0xFEFF, 0xFFFF]  # wire bytes FE FF FF FF: little endian -2
    assert served.read(2, Table.COIL, 0, 2) == [True, True]
    # BADC bit 1 is wire bit 9: 0b1000_0000_0000_0101 | 0x0200
    assert served.read(1, Table.HOLDING, 24, 1) == [0x8205]
    assert served.read(1, Table.HOLDING, 50, 2) == [0, 0]  # unit 1 untouched


async def test_conflicting_serial_settings_are_refused(rtu_sim: ServeFactory) -> None:
    served = await rtu_sim(bus)
    pts = [reg(0, "uint16", start=0)]
    other = ModbusConnection(transport="rtu", serial_port=served.serial_port, baudrate=9600, parity="N", unit=2)
    async with plugin.open(device_ctx(served.connection(1), pts)):
        with pytest.raises(DeviceUnavailable, match="already open at 115200 8N1; this device wants 9600 8N1"):
            async with plugin.open(device_ctx(other, pts)):
                pass
        (link,) = transport.links().values()
        assert len(link.leases) == 1


async def test_missing_serial_port_is_unavailable(tmp_path: object) -> None:
    conn = ModbusConnection(transport="rtu", serial_port="/dev/does-not-exist-cellctl", parity="N")
    with pytest.raises(DeviceUnavailable, match="cannot"):
        async with plugin.open(device_ctx(conn, [reg(0, "uint16", start=0)])):
            pass
    assert transport.links() == {}


async def test_parity_on_a_pty_says_what_works() -> None:
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        conn = ModbusConnection(transport="rtu", serial_port=os.ttyname(slave), parity="E")
        with pytest.raises(
            DeviceUnavailable,
            match=r"refused parity E; pseudo-terminals accept only parity N \(set 'parity: N'",
        ):
            async with plugin.open(device_ctx(conn, [reg(0, "uint16", start=0)])):
                pass
        assert transport.links() == {}
    finally:
        os.close(master)
        os.close(slave)
