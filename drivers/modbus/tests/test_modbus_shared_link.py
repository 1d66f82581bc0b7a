"""One slow or stalled unit must not starve the others on a shared gateway (issue 16
item 5): pipelining on TCP, and a circuit breaker for a unit that keeps timing out.

Against the cellctl_sim simulator over TCP. The assertions are functional (a healthy
unit's polls finish within their deadline), with generous bounds for a loaded machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cellctl_modbus import transport
from cellctl_modbus.config import ModbusConnection
from cellctl_modbus.plugin import plugin
from cellctl_modbus.tcpmux import HEADER, MAX_LENGTH, FrameError, MbapReader
from cellctl_sim.modbus import SimModbusServer
from hypothesis import given, settings
from hypothesis import strategies as st
from modbus_testutil import device_ctx, spec, wait_until

from cellctl.driver import DeviceUnavailable, PointSpec

pytestmark = pytest.mark.timeout(60)

POINTS: list[PointSpec] = [spec(0, "int", table="holding", start=4, type="uint16")]


@pytest.fixture
async def sim() -> AsyncIterator[SimModbusServer]:
    async with SimModbusServer({1: "bench", 2: "bench", 3: "bench"}, tick=0.05, seed=1) as s:
        yield s


def conn(port: int, unit: int, pipelining: str = "off") -> ModbusConnection:
    return ModbusConnection(transport="tcp", host="127.0.0.1", port=port, unit=unit, pipelining=pipelining)  # type: ignore[arg-type]


async def healthy_polls(dev: Any, seconds: float, deadline: float) -> tuple[int, int]:
    """Poll back to back for `seconds`; (polls, polls that finished within `deadline`)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    total = on_time = 0
    while loop.time() < end:
        t0 = loop.time()
        reading = await dev.poll()
        assert reading.errors is None
        total += 1
        on_time += loop.time() - t0 <= deadline
    return total, on_time


async def keep_polling(dev: Any, stop: asyncio.Event) -> int:
    """The slow or stalled neighbour, polled as the runner would (failures swallowed)."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            await dev.poll()
        except DeviceUnavailable:
            await asyncio.sleep(0.01)  # the runner's backoff, shortened
    return n


async def test_pipelining_keeps_healthy_units_on_time_beside_a_slow_one(sim: SimModbusServer) -> None:
    port = await sim.serve_tcp()
    sim.set_latency(0.3, unit=3)
    async with (
        plugin.open(device_ctx(conn(port, 1, "on"), POINTS, timeout=1.0)) as d1,
        plugin.open(device_ctx(conn(port, 2, "on"), POINTS, timeout=1.0)) as d2,
        plugin.open(device_ctx(conn(port, 3, "on"), POINTS, timeout=1.0)) as slow,
    ):
        stop = asyncio.Event()
        neighbour = asyncio.ensure_future(keep_polling(slow, stop))
        try:
            results = await asyncio.gather(healthy_polls(d1, 1.5, 0.1), healthy_polls(d2, 1.5, 0.1))
        finally:
            stop.set()
            await neighbour
        (link,) = transport.links().values()
        assert link.pipelining
        assert link._client.max_in_flight >= 2
    for total, on_time in results:
        assert total >= 20  # without pipelining: about 5 in 1.5 s (one slow read per round)
        assert on_time >= 0.9 * total


async def test_without_pipelining_one_request_at_a_time(sim: SimModbusServer) -> None:
    port = await sim.serve_tcp()
    sim.set_latency(0.2, unit=3)
    async with (
        plugin.open(device_ctx(conn(port, 1), POINTS, timeout=1.0)) as d1,
        plugin.open(device_ctx(conn(port, 3), POINTS, timeout=1.0)) as slow,
    ):
        t0 = time.monotonic()
        await asyncio.gather(slow.poll(), d1.poll(), slow.poll())
        assert time.monotonic() - t0 >= 0.4  # the two slow reads did not overlap


async def test_breaker_stops_a_stalled_unit_holding_the_link(sim: SimModbusServer) -> None:
    port = await sim.serve_tcp()
    sim.stop_answering(unit=3)
    timeout = 0.2
    async with (
        plugin.open(device_ctx(conn(port, 1), POINTS, timeout=timeout)) as d1,
        plugin.open(device_ctx(conn(port, 3), POINTS, timeout=timeout, breaker_after=3)) as stalled,
    ):
        for _ in range(3):
            with pytest.raises(DeviceUnavailable, match="no response from unit 3"):
                await stalled.poll()
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable, match=r"unit 3 .* not answering \(3 timeouts in a row\); next probe"):
            await stalled.poll()
        assert time.monotonic() - t0 < 0.1  # refused at once, without waiting for the link
        asked = sim.unit(3).requests
        stop = asyncio.Event()
        neighbour = asyncio.ensure_future(keep_polling(stalled, stop))
        try:
            total, on_time = await healthy_polls(d1, 0.8, 0.1)
        finally:
            stop.set()
            await neighbour
        assert on_time >= 0.9 * total
        assert sim.unit(3).requests - asked <= 1  # at most the first probe (after 1 s)
        sim.resume(unit=3)

        async def answers() -> bool:
            try:
                await stalled.poll()
            except DeviceUnavailable:
                return False
            return True

        await wait_until(answers, 5, "the next probe to find unit 3 back", interval=0.05)
        assert (await d1.poll()).errors is None


async def test_pipelining_must_agree_on_one_connection(sim: SimModbusServer) -> None:
    port = await sim.serve_tcp()
    async with plugin.open(device_ctx(conn(port, 1, "on"), POINTS)):
        with pytest.raises(DeviceUnavailable, match="already open with pipelining on; this device wants pipelining off"):
            async with plugin.open(device_ctx(conn(port, 2, "off"), POINTS)):
                pass


async def test_pipelined_link_survives_garbage_and_disconnects(sim: SimModbusServer) -> None:
    port = await sim.serve_tcp()
    ctx = device_ctx(conn(port, 1, "on"), POINTS, timeout=0.5)
    async with plugin.open(ctx) as dev:
        assert (await dev.poll()).errors is None
        (link,) = transport.links().values()
        sim.drop_connections()
        await wait_until(lambda: not link.connected, what="the disconnect to be seen")
        with pytest.raises(DeviceUnavailable):
            await dev.poll()
    async with plugin.open(ctx) as dev:
        assert (await dev.poll()).errors is None


def test_rtu_has_no_pipelining() -> None:
    with pytest.raises(ValueError, match="pipelining: only for transport tcp"):
        ModbusConnection(transport="rtu", serial_port="/dev/ttyUSB0", pipelining="on")


@settings(max_examples=300)
@given(chunks=st.lists(st.binary(max_size=300), max_size=6))
def test_mbap_reader_raises_only_frame_errors(chunks: list[bytes]) -> None:
    reader = MbapReader()
    for chunk in chunks:
        try:
            answers = reader.feed(chunk)
        except FrameError:
            assert reader.buffer == b""
            continue
        for tid, unit, pdu in answers:
            assert 0 <= tid <= 0xFFFF
            assert 0 <= unit <= 0xFF
            assert pdu.transaction_id == tid
        assert len(reader.buffer) < 6 + MAX_LENGTH + HEADER
