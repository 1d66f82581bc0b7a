"""Modbus RTU over the pty line: a pymodbus serial client opens the path like a tty."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from cellctl_sim.modbus import SimModbusServer
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusIOException
from simref import read_unit, ref_encode


async def test_path_is_a_character_device(rtu_path: str, sim: SimModbusServer) -> None:
    assert stat.S_ISCHR(os.stat(rtu_path).st_mode)
    assert [lst.kind for lst in sim.listeners] == ["rtu"]


@pytest.mark.parametrize("unit", [1, 2, 3])
async def test_every_point_decodes_to_the_sim_value(sim: SimModbusServer, rtu: AsyncModbusSerialClient, unit: int) -> None:
    for _ in range(3):
        assert await read_unit(rtu, sim.unit(unit)) == sim.unit(unit).snapshot()
        sim.step()


async def test_writes_over_rtu(sim: SimModbusServer, rtu: AsyncModbusSerialClient) -> None:
    assert not (await rtu.write_registers(18, ref_encode(-3.5, "float32"), device_id=2)).isError()
    assert sim.unit(2).value("setpoint") == -3.5
    assert not (await rtu.write_coil(0, False, device_id=2)).isError()
    assert sim.unit(2).value("run_enable") is False


async def test_absent_unit_stays_silent_like_on_a_real_bus(sim: SimModbusServer, rtu: AsyncModbusSerialClient) -> None:
    t0 = time.monotonic()
    with pytest.raises(ModbusIOException):
        await rtu.read_holding_registers(0, count=1, device_id=77)
    assert time.monotonic() - t0 >= 0.9  # the client waited out its 1 s timeout
    # and the line still works afterwards
    assert not (await rtu.read_holding_registers(0, count=1, device_id=2)).isError()


async def test_tcp_and_rtu_serve_the_same_units(sim: SimModbusServer, rtu: AsyncModbusSerialClient) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    port = await sim.serve_tcp()
    tcp = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0)
    assert await tcp.connect()
    try:
        await tcp.write_registers(18, ref_encode(7.25, "float32"), device_id=2)
        assert (await read_unit(rtu, sim.unit(2)))["setpoint"] == 7.25
    finally:
        tcp.close()


async def test_link_and_cleanup(tmp_path: Path) -> None:
    link = tmp_path / "ttySIM0"
    async with SimModbusServer({1: "bench"}, tick=0.1, auto_tick=False) as sim:
        path = await sim.serve_rtu_pty(link=str(link))
        assert link.resolve() == Path(path)
        client = AsyncModbusSerialClient(str(link), timeout=1.0, retries=0)
        assert await client.connect()
        try:
            assert not (await client.read_holding_registers(0, count=100, device_id=1)).isError()
        finally:
            client.close()
    assert not link.is_symlink()
