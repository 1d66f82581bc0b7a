"""Over real Modbus TCP on 127.0.0.1: what a plain pymodbus client decodes is what the
simulator says it serves, for every point of every device type."""

from __future__ import annotations

import asyncio
import time

import pytest
from cellctl_sim.modbus import SimModbusServer, WireType
from pymodbus.client import AsyncModbusTcpClient
from simref import exc_code, read_table, read_unit, ref_decode, ref_encode, wait_until


@pytest.mark.parametrize("unit", [1, 2, 3, 4])
async def test_every_point_decodes_to_the_sim_value(sim: SimModbusServer, tcp: AsyncModbusTcpClient, unit: int) -> None:
    u = sim.unit(unit)
    for _ in range(11):  # the type test's sequences are at most 10 long
        wire = await read_unit(tcp, u)
        assert wire == u.snapshot()
        sim.step()


async def test_tick_changes_what_is_served(sim: SimModbusServer, tcp: AsyncModbusTcpClient) -> None:
    before = await read_unit(tcp, sim.unit(1))
    sim.step()
    after = await read_unit(tcp, sim.unit(1))
    assert before["voltage_l1"] != after["voltage_l1"]
    assert after["energy_import"] >= before["energy_import"]
    assert after["serial_number"] == before["serial_number"]


async def test_bench_block_in_one_read(sim: SimModbusServer, tcp: AsyncModbusTcpClient) -> None:
    rr = await tcp.read_holding_registers(0, count=100, device_id=4)
    stamp = ref_decode(rr.registers[0:4], "uint64")
    assert stamp == sim.unit(4).value("stamp_us")
    assert abs(stamp - time.time_ns() // 1000) < 60_000_000
    assert rr.registers[4:] == [sim.unit(4).value(f"r{i:03d}") for i in range(4, 100)]
    sim.step()
    rr2 = await tcp.read_holding_registers(0, count=100, device_id=5)
    assert all(a != b for a, b in zip(rr.registers[4:], rr2.registers[4:], strict=True))


async def test_setpoint_and_run_enable_keep_what_is_written(sim: SimModbusServer, tcp: AsyncModbusTcpClient) -> None:
    plc = sim.unit(2)
    rr = await tcp.write_registers(18, ref_encode(12.5, "float32"), device_id=2)
    assert not rr.isError()
    assert plc.value("setpoint") == 12.5
    sim.step(5)
    rr = await tcp.read_holding_registers(18, count=2, device_id=2)
    assert ref_decode(rr.registers, "float32") == 12.5
    assert not (await tcp.write_coil(0, False, device_id=2)).isError()
    assert plc.value("run_enable") is False
    sim.step()
    assert (await tcp.read_coils(0, count=1, device_id=2)).bits[0] is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("w_i16_badc", -12345),
        ("w_u16_abcd", 65535),
        ("w_i32_cdab", -2_000_000_000),
        ("w_u32_dcba", 0xDEADBEEF),
        ("w_f32_badc", -0.25),
        ("w_i64_dcba", -(2**63)),
        ("w_u64_cdab", 2**64 - 1),
        ("w_f64_badc", 1e-300),
        ("w_str_badc", "written!"),
        ("w_str_abcd", "ABCDEFGHIJKLMNOP"),
    ],
)
async def test_type_test_twins_decode_what_clients_write(
    sim: SimModbusServer, tcp: AsyncModbusTcpClient, name: str, value: object
) -> None:
    p = sim.unit(3).point(name)
    regs = ref_encode(value, p.type.value, p.order.value, length=p.length)
    assert not (await tcp.write_registers(p.start, regs, device_id=3)).isError()
    assert sim.unit(3).value(name) == value
    sim.step(3)
    rr = await tcp.read_holding_registers(p.start, count=p.width, device_id=3)
    assert ref_decode(rr.registers, p.type.value, p.order.value) == value


async def test_writes_to_read_only_points_are_refused(sim: SimModbusServer, tcp: AsyncModbusTcpClient) -> None:
    before = sim.unit(2).value("state_code")
    rr = await tcp.write_register(0, 4, device_id=2)
    assert exc_code(rr) == 2
    assert sim.unit(2).value("state_code") == before
    # one read-only register in a multi-register write refuses the whole write
    rr = await tcp.write_registers(17, [1, 2, 3], device_id=2)
    assert exc_code(rr) == 2
    assert sim.unit(2).value("setpoint") == 100.0
    # a string twin refuses bytes that are not ASCII, and keeps its value
    rr = await tcp.write_registers(sim.unit(3).point("w_str_abcd").start, [0xC3A9], device_id=3)
    assert exc_code(rr) == 3


async def test_addresses_past_the_map_are_illegal(sim: SimModbusServer, tcp: AsyncModbusTcpClient) -> None:
    size = sim.unit(1).register_map.size(sim.unit(1).point("voltage_l1").table)
    rr = await tcp.read_input_registers(size - 1, count=2, device_id=1)
    assert exc_code(rr) == 2
    rr = await tcp.read_holding_registers(0, count=1, device_id=1)  # the meter has no holding registers
    assert exc_code(rr) == 2
    assert not (await tcp.read_holding_registers(9, count=1, device_id=2)).isError()  # a gap reads as 0


async def test_unknown_unit_gets_gateway_exception(tcp: AsyncModbusTcpClient) -> None:
    rr = await tcp.read_holding_registers(0, count=1, device_id=99)
    assert exc_code(rr) == 0x0B


async def test_bits_and_discretes_over_the_wire(sim: SimModbusServer, tcp: AsyncModbusTcpClient) -> None:
    u = sim.unit(3)
    for _ in range(8):
        coils = await read_table(tcp, 3, "coil", 33)
        dis = await read_table(tcp, 3, "discrete", 18)
        assert (coils[0], coils[13], dis[0], dis[17]) == tuple(
            u.value(n) for n in ("coil_0", "coil_13", "discrete_0", "discrete_17")
        )
        regs = (await tcp.read_holding_registers(u.point("bits_abcd").start, count=2, device_id=3)).registers
        for p in u.points:
            if p.type is WireType.BIT:
                word = regs[p.start - u.point("bits_abcd").start]
                assert ref_decode([word], "bit", p.order.value, p.bit) == u.value(p.name), p.name
        sim.step()


async def test_auto_tick_runs_on_its_own() -> None:
    async with SimModbusServer({1: "energy-meter", 4: "bench"}, tick=0.01, seed=1) as sim:
        port = await sim.serve_tcp()
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0)
        assert await client.connect()
        try:
            first = (await client.read_holding_registers(4, count=1, device_id=4)).registers[0]

            async def moved() -> bool:
                rr = await client.read_holding_registers(4, count=1, device_id=4)
                return bool((rr.registers[0] - first) % 65536 >= 10)

            t0 = time.monotonic()
            await wait_until(moved, timeout=5.0)
            assert time.monotonic() - t0 >= 0.05  # ten ticks of 10 ms cannot come sooner
        finally:
            client.close()
    assert sim.ticks >= 10


async def test_listener_report_and_port_zero(sim: SimModbusServer, tcp_port: int) -> None:
    assert tcp_port > 0
    assert [(lst.kind, lst.address) for lst in sim.listeners] == [("tcp", f"127.0.0.1:{tcp_port}")]
    assert sim.describe_units() == "1=energy-meter,2=machine-plc,3=type-test,4=bench,5=bench"
    with pytest.raises(OSError, match="cannot listen"):
        await sim.serve_tcp("127.0.0.1", tcp_port)


async def test_concurrent_clients(sim: SimModbusServer, tcp_port: int) -> None:
    clients = [AsyncModbusTcpClient("127.0.0.1", port=tcp_port, timeout=1.0, retries=0) for _ in range(4)]
    try:
        assert all(await asyncio.gather(*(c.connect() for c in clients)))
        results = await asyncio.gather(*(read_unit(c, sim.unit(2)) for c in clients))
        assert all(r == sim.unit(2).snapshot() for r in results)
    finally:
        for c in clients:
            c.close()
