"""sd_notify as systemd sees it: READY once running, WATCHDOG while alive, STOPPING at the end."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import modbus_device, running_daemon, write_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def sim_port() -> AsyncIterator[int]:
    async with SimModbusServer({1: "energy-meter"}, tick=0.05, seed=6) as sim:
        yield await sim.serve_tcp()


async def test_notify_ready_watchdog_and_stopping(
    broker: Mosquitto, sim_port: int, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    config = write_config(
        tmp_path, broker.port, [modbus_device("m", "sim-energy-meter", sim_port, 1)], cell=unique
    )
    received: list[str] = []

    def drain() -> None:
        while True:
            try:
                received.append(listener.recv(256).decode())
            except BlockingIOError:
                return

    async with running_daemon(config):
        deadline = time.monotonic() + 30  # bounded; generous for a loaded 2-core box
        while time.monotonic() < deadline:
            drain()
            if received.count("WATCHDOG=1") >= 2:
                break
            await asyncio.sleep(0.01)
    drain()
    listener.close()
    assert received[0] in ("READY=1", "WATCHDOG=1")
    assert "READY=1" in received
    assert received.count("WATCHDOG=1") >= 2
    assert received[-1] == "STOPPING=1"
