"""Integration: the driver against a real pymodbus TCP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import math
import socket
import time

import pytest
from cellctl_modbus import transport
from cellctl_modbus.config import ModbusConnection
from cellctl_modbus.plugin import ModbusDevice, plugin
from cellctl_sim.modbus import Table
from modbus_testutil import (
    ALL_POINTS,
    COILS,
    EXPECTED,
    UNIT1,
    UNIT2,
    ServeFactory,
    device_ctx,
    reg,
    spec,
    wait_until,
)
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import ModbusPDU

from cellctl.driver import DeviceUnavailable, Poller, Writer, WriteRejected

pytestmark = pytest.mark.timeout(30)

MARGIN = 0.5  # seconds of slack on top of a configured timeout


DEVICE_BUSY = 6
unit1 = {1: UNIT1}
two_units = {1: UNIT1, 2: UNIT2}


async def test_values_read_equal_what_the_server_holds(tcp_sim: ServeFactory) -> None:
    served = await tcp_sim(unit1)
    async with plugin.open(device_ctx(served.connection(), ALL_POINTS)) as dev:
        assert isinstance(dev, Poller)
        assert isinstance(dev, Writer)
        reading = await dev.poll()
    assert reading.errors is None
    assert reading.indexes is None
    assert reading.values == EXPECTED
    assert [type(v) for v in reading.values] == [type(v) for v in EXPECTED]
    # merged: holding 0..24, input 0..2, coil 0..3, discrete 1
    assert served.sim.traffic.requests == 4


async def test_per_point_mode_reads_the_same(tcp_sim: ServeFactory) -> None:
    served = await tcp_sim(unit1)
    async with plugin.open(device_ctx(served.connection(), ALL_POINTS, request_mode="per_point")) as dev:
        reading = await dev.poll()
    assert reading.values == EXPECTED
    assert served.sim.traffic.requests == len(ALL_POINTS)


async def test_exception_response_marks_only_those_points(tcp_sim: ServeFactory) -> None:
    served = await tcp_sim(unit1)
    points = [
        reg(0, "int16", start=0),
        reg(1, "int16", start=250),  # beyond the device's 200 registers
        spec(2, "bool", table="coil", start=0),
        reg(3, "uint16", start=40),
    ]
    served.sim.set_exception(DEVICE_BUSY, unit=1, table="holding", start=40, end=40, once=True)
    async with plugin.open(device_ctx(served.connection(), points)) as dev:
        first = await dev.poll()
        second = await dev.poll()
    assert first.errors == {
        1: "modbus exception 2 (illegal data address)",
        3: "modbus exception 6 (server device busy)",
    }
    assert (first.values[0], first.values[2]) == (-1234, True)
    assert second.errors == {1: "modbus exception 2 (illegal data address)"}
    assert second.values[3] == 0
    assert served.sim.traffic.connects == 1  # the connection stayed


async def test_silent_device_is_unavailable_within_timeout_and_reconnects(tcp_sim: ServeFactory) -> None:
    served = await tcp_sim(unit1)
    timeout = 0.3
    ctx = device_ctx(served.connection(), ALL_POINTS[:2], timeout=timeout)
    async with plugin.open(ctx) as dev:
        assert (await dev.poll()).values == EXPECTED[:2]
        served.sim.stall(unit=1)
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable, match=r"no response from unit 1 .* within 0.3 s"):
            await dev.poll()
        assert time.monotonic() - t0 < timeout + MARGIN
        # a direct connection is closed, so the engine's next open reconnects
        (link,) = transport.links().values()
        assert not link.connected
        with pytest.raises(DeviceUnavailable):
            await dev.poll()
    assert transport.links() == {}
    served.sim.release()
    async with plugin.open(ctx) as dev:
        assert (await dev.poll()).values == EXPECTED[:2]
    assert served.sim.traffic.connects == 2


async def test_refused_connection_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = s.getsockname()[1]
        ctx = device_ctx(ModbusConnection(transport="tcp", host="127.0.0.1", port=port), ALL_POINTS[:1])
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable, match=f"127.0.0.1:{port}"):
            async with plugin.open(ctx):
                pass
        assert time.monotonic() - t0 < ctx.timeout + MARGIN
    assert transport.links() == {}


async def test_server_going_away_is_unavailable_for_every_device(tcp_sim: ServeFactory) -> None:
    served = await tcp_sim(two_units)
    timeout = 2.0  # long, to show a disconnect is noticed without waiting for it
    pts = [reg(0, "uint16", start=0)]
    async with (
        plugin.open(device_ctx(served.connection(1), pts, timeout=timeout)) as d1,
        plugin.open(device_ctx(served.connection(2), pts, timeout=timeout)) as d2,
    ):
        assert (await d1.poll()).values == [0xFB2E]
        assert (await d2.poll()).values == [7]
        (link,) = transport.links().values()
        await served.sim.close()
        await wait_until(lambda: not link.connected, what="the client to see the disconnect")
        for dev in (d1, d2):
            t0 = time.monotonic()
            with pytest.raises(DeviceUnavailable, match=r"127\.0\.0\.1"):
                await dev.poll()
            assert time.monotonic() - t0 < 0.5


async def test_disconnect_during_a_request_does_not_wait_for_the_timeout(tcp_sim: ServeFactory) -> None:
    served = await tcp_sim(unit1)
    timeout = 5.0
    async with plugin.open(device_ctx(served.connection(), ALL_POINTS[:1], timeout=timeout)) as dev:
        served.sim.stall(unit=1)
        poll = asyncio.ensure_future(dev.poll())
        await wait_until(lambda: served.sim.traffic.in_flight == 1, what="the request to reach the server")
        t0 = time.monotonic()
        await served.sim.close()
        with pytest.raises(DeviceUnavailable, match="lost"):
            await poll
        assert time.monotonic() - t0 < 1.0


async def test_two_units_on_one_connection_never_overlap(tcp_sim: ServeFactory) -> None:
    served = await tcp_sim(two_units)
    served.sim.set_latency(0.002)  # device latency: any overlap would show
    pts = [reg(0, "uint16", start=0), reg(1, "uint16", start=100), spec(2, "bool", table="coil", start=0)]
    async with (
        plugin.open(device_ctx(served.connection(1), pts, device_id="a")) as d1,
        plugin.open(device_ctx(served.connection(2), pts, device_id="b")) as d2,
    ):
        assert len(transport.links()) == 1
        readings = await asyncio.gather(*(d.poll() for _ in range(10) for d in (d1, d2)))
    assert all(r.errors is None for r in readings)
    assert {r.values[0] for r in readings} == {0xFB2E, 7}
    assert served.sim.traffic.requests == 2 * 10 * 3
    assert served.sim.traffic.connects == 1
    assert served.sim.traffic.max_in_flight == 1
    # control: the instrument does see overlap when two connections are used
    served.sim.traffic.max_in_flight = 0
    clients = [
        AsyncModbusTcpClient("127.0.0.1", port=served.port, retries=0, reconnect_delay=0) for _ in range(2)
    ]
    for c in clients:
        assert await c.connect()
    try:
        served.sim.set_latency(0.05)
        await asyncio.gather(*(c.read_holding_registers(0, count=1, device_id=1) for c in clients))
    finally:
        for c in clients:
            c.close()
    assert served.sim.traffic.max_in_flight == 2


async def test_one_silent_unit_leaves_the_shared_link_up(tcp_sim: ServeFactory) -> None:
    served = await tcp_sim(two_units)
    timeout = 0.3
    pts = [reg(0, "uint16", start=0)]
    async with (
        plugin.open(device_ctx(served.connection(1), pts, timeout=timeout)) as d1,
        plugin.open(device_ctx(served.connection(2), pts, timeout=timeout)) as d2,
    ):
        served.sim.stall(unit=2)
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable, match="unit 2"):
            await d2.poll()
        assert time.monotonic() - t0 < timeout + MARGIN
        (link,) = transport.links().values()
        assert link.connected
        assert (await d1.poll()).values == [0xFB2E]
        with pytest.raises(DeviceUnavailable, match="unit 2"):
            await d2.poll()
        assert (await d1.poll()).values == [0xFB2E]
        assert link.connected
        assert served.sim.traffic.connects == 1
        # when every unit on the link is silent, the link itself is dropped
        served.sim.stall(unit=1)
        with pytest.raises(DeviceUnavailable):
            await d1.poll()
        assert link.connected  # unit 2 has not been silent since unit 1 last answered
        with pytest.raises(DeviceUnavailable):
            await d2.poll()
        assert not link.connected


async def test_shared_connection_is_reference_counted(tcp_sim: ServeFactory) -> None:
    served = await tcp_sim(two_units)
    pts = [reg(0, "uint16", start=0)]
    ctx1, ctx2 = device_ctx(served.connection(1), pts), device_ctx(served.connection(2), pts)
    async with plugin.open(ctx1):
        async with plugin.open(ctx2):
            (link,) = transport.links().values()
            assert len(link.leases) == 2
        assert len(link.leases) == 1
        assert link.connected
    assert transport.links() == {}
    assert not link.connected
    await wait_until(lambda: served.sim.traffic.connects == 1)


async def test_writes_land_in_the_server(tcp_sim: ServeFactory) -> None:
    served = await tcp_sim({1: {Table.HOLDING: [0] * 40 + [0x8001], Table.COIL: COILS}})
    points = [
        reg(0, "int16", start=30, access="rw"),
        reg(1, "uint32", start=32, order="CDAB", access="rw"),
        reg(2, "float32", start=34, access="w"),
        reg(3, "string", start=36, length=3, access="rw"),
        spec(4, "bool", "rw", table="coil", start=10),
        reg(5, "bit", start=40, bit=4, access="rw"),
        reg(6, "bit", start=40, bit=15, access="rw", order="ABCD"),
        reg(7, "int16", start=0),  # read-only
        reg(8, "uint16", table="input", start=0, access="rw"),  # check_point would refuse this
        reg(9, "int16", start=250, access="rw"),  # beyond the device
    ]
    async with plugin.open(device_ctx(served.connection(), points)) as dev:
        await dev.write(0, -5)
        await dev.write(1, 0x12345678)
        await dev.write(2, 1.5)
        await dev.write(3, "AB")
        await dev.write(4, True)
        await dev.write(5, True)
        assert served.read(1, Table.HOLDING, 40, 1) == [0x8011]  # read-modify-write kept bits 0 and 15
        await dev.write(6, False)
        assert served.read(1, Table.HOLDING, 30, 11) == [0xFFFB, 0, 0x5678, 0x1234, 0x3FC0, 0, 0x4142, 0, 0, 0, 0x0011]
        assert served.read(1, Table.COIL, 10, 1) == [True]
        with pytest.raises(ValueError, match="read-only"):
            await dev.write(7, 1)
        with pytest.raises(ValueError, match="input table"):
            await dev.write(8, 1)
        with pytest.raises(ValueError, match="out of range for int16"):
            await dev.write(0, 40000)
        with pytest.raises(ValueError, match="no point with index 99"):
            await dev.write(99, 1)
        with pytest.raises(WriteRejected, match="modbus exception 2"):
            await dev.write(9, 1)
        assert served.read(1, Table.HOLDING, 30, 1) == [0xFFFB]
        reading = await dev.poll()
    assert reading.values[:7] == [-5, 0x12345678, 1.5, "AB", True, True, False]


async def test_garbage_marks_points_not_the_device(tcp_sim: ServeFactory) -> None:
    served = await tcp_sim({1: {Table.HOLDING: [1, 2, 0, 0, 0xFFFE, 0x4142, 5], Table.COIL: COILS}})
    points = [
        reg(0, "uint16", start=0),
        reg(1, "uint16", start=1),
        spec(2, "bool", table="coil", start=0),
        reg(3, "string", start=4, length=2),  # 0xFF 0xFE is not UTF-8
        reg(4, "uint16", start=6),
    ]
    short_once = [True]

    def truncate(pdu: ModbusPDU) -> ModbusPDU:
        if pdu.function_code == 3 and short_once and short_once.pop():
            pdu.registers = list(pdu.registers)[:-1]
        return pdu

    served.sim.mangle = truncate
    async with plugin.open(device_ctx(served.connection(), points)) as dev:
        first = await dev.poll()
        second = await dev.poll()
    bad = "bad response: 6 registers for a read of 7"
    assert first.errors == {0: bad, 1: bad, 3: bad, 4: bad}
    assert first.values[2] is True
    assert second.errors is not None
    assert set(second.errors) == {3}
    assert second.errors[3].startswith("undecodable value:")
    assert (second.values[0], second.values[1], second.values[4]) == (1, 2, 5)


async def test_pause_between_requests(tcp_sim: ServeFactory) -> None:
    served = await tcp_sim(unit1)
    pause = 0.05
    points = [reg(0, "uint16", start=0), reg(1, "uint16", start=100), spec(2, "bool", table="coil", start=0)]
    async with plugin.open(device_ctx(served.connection(), points, pause_between_requests=pause)) as dev:
        await dev.poll()
        await dev.poll()
    times = [t for t, _, _ in served.sim.traffic.arrivals]
    assert len(times) == 6
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= pause * 0.9


async def test_nan_is_returned_as_is(tcp_sim: ServeFactory) -> None:
    served = await tcp_sim({1: {Table.HOLDING: [0x7FC0, 0, 0x7F80, 0]}})
    pts = [reg(0, "float32", start=0), reg(1, "float32", start=2)]
    async with plugin.open(device_ctx(served.connection(), pts)) as dev:
        reading = await dev.poll()
    assert math.isnan(reading.values[0])
    assert reading.values[1] == math.inf
    assert reading.errors is None


def test_device_plans_at_construction() -> None:
    """An oversized point fails before any I/O."""
    pts = [reg(0, "string", start=0, length=60)]
    ctx = device_ctx(ModbusConnection(transport="tcp", host="127.0.0.1"), pts, max_registers=50)
    with pytest.raises(ValueError, match="more than one request"):
        ModbusDevice(ctx)
