"""Fault injection, switched at runtime, per unit or server-wide, and resume."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import pytest
from cellctl_sim.modbus import SimModbusServer
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from simref import exc_code, wait_until


async def _timed_read(client: AsyncModbusTcpClient | AsyncModbusSerialClient, unit: int) -> float:
    t0 = time.monotonic()
    rr = await client.read_holding_registers(0, count=2, device_id=unit)
    assert not rr.isError()
    return time.monotonic() - t0


async def test_latency_per_unit_and_server_wide_add_up(sim: SimModbusServer, tcp: AsyncModbusTcpClient) -> None:
    # upper bounds are loose: they only show the delay is the injected one, not a stall
    assert await _timed_read(tcp, 2) < 0.15
    sim.set_latency(0.2, unit=2)
    assert 0.2 <= await _timed_read(tcp, 2) < 0.7
    assert await _timed_read(tcp, 3) < 0.15  # other units unaffected
    sim.set_latency(0.1)
    assert 0.3 <= await _timed_read(tcp, 2) < 0.8
    assert 0.1 <= await _timed_read(tcp, 3) < 0.6
    sim.resume()
    assert await _timed_read(tcp, 2) < 0.15


async def test_slow_answer_keeps_its_own_transaction_id(sim: SimModbusServer, tcp_port: int) -> None:
    """A request arriving while an older one is delayed must not lend the older answer
    its transaction id (pymodbus's stock handler does; see server.py)."""
    sim.set_latency(0.3, unit=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)

    def request(tid: int, unit: int, fc: int, count: int) -> bytes:
        return struct.pack(">HHHBBHH", tid, 0, 6, unit, fc, 0, count)

    async def response() -> tuple[int, int, int]:
        tid, _pid, length = struct.unpack(">HHH", await reader.readexactly(6))
        body = await reader.readexactly(length)
        return tid, body[0], body[2] // 2  # tid, unit, registers

    try:
        seen = sim.unit(1).requests
        writer.write(request(7, 1, 4, 2))  # slow: unit 1, 2 input registers
        await wait_until(lambda: sim.unit(1).requests > seen)
        writer.write(request(8, 2, 3, 20))  # fast: unit 2, 20 holding registers
        first = await asyncio.wait_for(response(), timeout=3.0)
        second = await asyncio.wait_for(response(), timeout=3.0)
        assert first == (8, 2, 20)
        assert second == (7, 1, 2)
    finally:
        writer.close()


async def test_exception_for_all_requests(sim: SimModbusServer, tcp: AsyncModbusTcpClient) -> None:
    sim.set_exception(6, unit=2)
    for call in (tcp.read_holding_registers(0, count=1, device_id=2), tcp.read_coils(0, count=1, device_id=2),
                 tcp.write_register(18, 0, device_id=2)):
        rr = await call
        assert exc_code(rr) == 6
    assert not (await tcp.read_holding_registers(0, count=1, device_id=3)).isError()
    sim.resume(unit=2)
    assert not (await tcp.read_holding_registers(0, count=1, device_id=2)).isError()


async def test_exception_for_an_address_range_and_table(sim: SimModbusServer, tcp: AsyncModbusTcpClient) -> None:
    sim.set_exception(2, unit=2, table="holding", start=4, end=7)  # the part counters
    assert not (await tcp.read_holding_registers(0, count=4, device_id=2)).isError()
    assert not (await tcp.read_holding_registers(8, count=4, device_id=2)).isError()
    for start, count in ((0, 5), (7, 1), (4, 4), (6, 10)):
        rr = await tcp.read_holding_registers(start, count=count, device_id=2)
        assert exc_code(rr) == 2, (start, count)
    assert not (await tcp.read_coils(0, count=1, device_id=2)).isError()  # other table
    sim.set_exception(4, start=0, end=0)  # server-wide, any table
    rr = await tcp.read_coils(0, count=1, device_id=2)
    assert exc_code(rr) == 4
    rr = await tcp.read_input_registers(0, count=2, device_id=1)
    assert exc_code(rr) == 4
    sim.resume()
    assert not (await tcp.read_holding_registers(0, count=20, device_id=2)).isError()


async def test_stop_answering_times_out_but_keeps_the_connection(sim: SimModbusServer, tcp: AsyncModbusTcpClient) -> None:
    sim.stop_answering(unit=2)
    seen = sim.unit(2).requests
    t0 = time.monotonic()
    with pytest.raises(ModbusIOException):
        await tcp.read_holding_registers(0, count=1, device_id=2)
    assert time.monotonic() - t0 >= 0.9
    assert sim.unit(2).requests == seen + 1  # it arrived, and was dropped
    assert tcp.connected
    assert not (await tcp.read_holding_registers(0, count=1, device_id=3)).isError()
    sim.resume(unit=2)
    assert not (await tcp.read_holding_registers(0, count=1, device_id=2)).isError()


async def test_stop_answering_server_wide_over_rtu(sim: SimModbusServer, rtu: AsyncModbusSerialClient) -> None:
    sim.stop_answering()
    with pytest.raises(ModbusIOException):
        await rtu.read_holding_registers(0, count=1, device_id=2)
    sim.resume()
    assert await _timed_read(rtu, 2) < 0.5


async def test_latency_over_rtu(sim: SimModbusServer, rtu: AsyncModbusSerialClient) -> None:
    sim.set_latency(0.15, unit=3)
    assert 0.15 <= await _timed_read(rtu, 3) < 0.8
    sim.resume()


async def test_drop_connections_disconnects_clients(sim: SimModbusServer, tcp_port: int) -> None:
    events: list[bool] = []
    client = AsyncModbusTcpClient(
        "127.0.0.1", port=tcp_port, timeout=1.0, retries=0, reconnect_delay=0, trace_connect=events.append
    )
    assert await client.connect()
    raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", tcp_port)
    try:
        assert not (await client.read_holding_registers(0, count=1, device_id=2)).isError()
        await wait_until(lambda: len(sim.listeners[0].server.active_connections) == 2)
        assert sim.drop_connections() == 2
        await wait_until(lambda: events[-1:] == [False])
        assert not client.connected
        assert await asyncio.wait_for(raw_reader.read(), timeout=2.0) == b""  # EOF
        # the server still listens: a new connection is served
        assert await client.connect()
        assert not (await client.read_holding_registers(0, count=1, device_id=2)).isError()
    finally:
        client.close()
        raw_writer.close()


async def test_fault_arguments_are_checked(sim: SimModbusServer) -> None:
    with pytest.raises(ValueError, match="byte"):
        sim.set_exception(0)
    with pytest.raises(ValueError, match="range"):
        sim.set_exception(2, start=10, end=5)
    with pytest.raises(ValueError, match="negative"):
        sim.set_latency(-1)
    with pytest.raises(KeyError):
        sim.stop_answering(unit=99)
    assert not sim.faults.active


async def test_server_wide_silence_covers_absent_units_too(sim: SimModbusServer, tcp: AsyncModbusTcpClient) -> None:
    assert exc_code(await tcp.read_holding_registers(0, count=1, device_id=99)) == 0x0B
    sim.stop_answering()
    with pytest.raises(ModbusIOException):
        await tcp.read_holding_registers(0, count=1, device_id=99)
    sim.resume()
    sim.set_latency(0.2)
    t0 = time.monotonic()
    assert exc_code(await tcp.read_holding_registers(0, count=1, device_id=99)) == 0x0B
    assert time.monotonic() - t0 >= 0.2


async def test_stall_holds_requests_in_flight_until_released() -> None:
    async with SimModbusServer({1: "blank", 2: "blank"}, auto_tick=False) as sim:
        sim.unit(1).load("holding", 0, [11, 12])
        port = await sim.serve_tcp()
        async with AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0) as c:
            sim.stall(unit=1)
            held = asyncio.ensure_future(c.read_holding_registers(0, count=2, device_id=1))
            await wait_until(lambda: sim.traffic.in_flight == 1)
            assert not held.done()
            sim.release(unit=2)  # another unit's release leaves this stall alone
            assert sim.traffic.in_flight == 1
            sim.release()
            rr = await asyncio.wait_for(held, 3)
            assert rr.registers == [11, 12]  # answered late, as a device that recovers
            assert sim.traffic.in_flight == 0
            assert sim.traffic.max_in_flight == 1
            assert sim.traffic.requests == 1
            assert sim.traffic.connects == 1
            assert [(u, fc) for _, u, fc in sim.traffic.arrivals] == [(1, 3)]


async def test_a_once_exception_hits_the_first_matching_request_only() -> None:
    async with SimModbusServer({1: "blank"}, auto_tick=False) as sim:
        port = await sim.serve_tcp()
        sim.set_exception(6, unit=1, table="holding", start=40, end=40, once=True)
        async with AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0) as c:
            assert not (await c.read_holding_registers(0, count=2, device_id=1)).isError()  # not a match
            assert exc_code(await c.read_holding_registers(40, count=1, device_id=1)) == 6
            assert not (await c.read_holding_registers(40, count=1, device_id=1)).isError()


async def test_mangle_rewrites_answers_and_blank_units_keep_what_is_loaded() -> None:
    async with SimModbusServer({1: "blank"}, tick=0.01) as sim:  # ticking changes nothing on a blank unit
        sim.unit(1).load("input", 5, [1, 2, 3])
        with pytest.raises(ValueError, match=r"unit 1: cannot load 2 value\(s\) at holding 199"):
            sim.unit(1).load("holding", 199, [1, 2])
        port = await sim.serve_tcp()

        def truncate(pdu: Any) -> Any:
            pdu.registers = list(pdu.registers)[:-1]
            return pdu

        async with AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0) as c:
            await wait_until(lambda: sim.ticks >= 2)
            assert (await c.read_input_registers(5, count=3, device_id=1)).registers == [1, 2, 3]
            sim.mangle = truncate
            assert (await c.read_input_registers(5, count=3, device_id=1)).registers == [1, 2]
