"""Fixtures: real pymodbus servers in-process (TCP on 127.0.0.1 with a free port, RTU on a
pseudo-terminal), each stopped at teardown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from modbus_testutil import Behaviour, PtyBridge, Sim, SimFactory, Trace
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import SimDevice


@pytest.fixture
async def tcp_sim() -> AsyncIterator[SimFactory]:
    """Start a ModbusTcpServer on 127.0.0.1 with a kernel-chosen free port."""
    sims: list[Sim] = []

    async def start(devices: Callable[[Behaviour], list[SimDevice]]) -> Sim:
        trace, behaviour = Trace(), Behaviour()
        server = ModbusTcpServer(
            devices(behaviour),
            address=("127.0.0.1", 0),
            trace_pdu=trace.pdu,
            trace_connect=trace.connect,
        )
        await server.serve_forever(background=True)
        port = server.transport.sockets[0].getsockname()[1]
        sim = Sim(server, trace, behaviour, port=port)
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.behaviour.release.set()
        await sim.server.shutdown()


@pytest.fixture
async def rtu_sim() -> AsyncIterator[SimFactory]:
    """Start a ModbusSerialServer (RTU) on a pseudo-terminal; clients use the other pty."""
    sims: list[Sim] = []
    bridges: list[PtyBridge] = []

    async def start(devices: Callable[[Behaviour], list[SimDevice]]) -> Sim:
        bridge = PtyBridge(asyncio.get_running_loop())
        bridges.append(bridge)
        trace, behaviour = Trace(), Behaviour()
        # Parity N: this kernel's pty driver rejects PARENB (tcsetattr EINVAL).
        server = ModbusSerialServer(
            devices(behaviour),
            port=bridge.server_path,
            baudrate=115200,
            parity="N",
            trace_pdu=trace.pdu,
        )
        await server.serve_forever(background=True)
        sim = Sim(server, trace, behaviour, serial_port=bridge.client_path)
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.behaviour.release.set()
        await sim.server.shutdown()
    for bridge in bridges:
        bridge.close()
