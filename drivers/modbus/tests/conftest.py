"""Fixtures: the cellctl_sim Modbus simulator in-process with blank units loaded by the
test, served over TCP on 127.0.0.1 (a free port) or RTU on a pseudo-terminal; closed at
teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import pytest
from modbus_testutil import Image, Served, ServeFactory, blank_sim


@pytest.fixture
async def tcp_sim() -> AsyncIterator[ServeFactory]:
    """Serve blank units over Modbus TCP on 127.0.0.1 with a kernel-chosen free port."""
    served: list[Served] = []

    async def start(units: Mapping[int, Image]) -> Served:
        sim = blank_sim(units)
        served.append(s := Served(sim))
        s.port = await sim.serve_tcp()
        return s

    yield start
    for s in served:
        await s.sim.close()


@pytest.fixture
async def rtu_sim() -> AsyncIterator[ServeFactory]:
    """Serve blank units over Modbus RTU on a pseudo-terminal; clients open `serial_port`."""
    served: list[Served] = []

    async def start(units: Mapping[int, Image]) -> Served:
        sim = blank_sim(units)
        served.append(s := Served(sim))
        s.serial_port = await sim.serve_rtu_pty(baudrate=115200)
        return s

    yield start
    for s in served:
        await s.sim.close()
