"""Fixtures: a stepped (deterministic) Modbus simulator with every device type, and
clients; a raw serial client for the G-code simulators (whose modules define `sim`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from cellctl_sim.modbus import SimModbusServer
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from test_sim_grbl_support import RawPort

ALL_UNITS = {1: "energy-meter", 2: "machine-plc", 3: "type-test", 4: "bench", 5: "bench"}


@pytest.fixture
async def sim() -> AsyncIterator[SimModbusServer]:
    async with SimModbusServer(ALL_UNITS, tick=0.1, seed=1, auto_tick=False) as s:
        yield s


@pytest.fixture
async def tcp_port(sim: SimModbusServer) -> int:
    return await sim.serve_tcp("127.0.0.1", 0)


@pytest.fixture
async def tcp(tcp_port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient("127.0.0.1", port=tcp_port, timeout=1.0, retries=0, reconnect_delay=0)
    assert await client.connect()
    yield client
    client.close()


@pytest.fixture
async def rtu_path(sim: SimModbusServer) -> str:
    return await sim.serve_rtu_pty()


@pytest.fixture
async def rtu(rtu_path: str) -> AsyncIterator[AsyncModbusSerialClient]:
    client = AsyncModbusSerialClient(rtu_path, baudrate=19200, timeout=1.0, retries=0, reconnect_delay=0)
    assert await client.connect()
    yield client
    client.close()


@pytest.fixture
async def port(sim: Any) -> AsyncIterator[RawPort]:
    """A raw client on the pty of the module's G-code simulator (its `sim` fixture)."""
    p = RawPort(sim.path)
    yield p
    p.close()
