"""How soon data flows again once a server is back: the driver's own part (connect,
session, NamespaceArray, resolve, subscription, first publish) and the whole daemon's
(plus the engine's reconnect backoff). The bounds are generous, for a loaded 2-core
machine; the figures are printed (`pytest -s`) for the driver README."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from cellctl_sim.opcua import SimOpcUaServer
from opcua_testutil import all_good, device_ctx, latest_state, opcua_device

from cellctl.driver import DeviceUnavailable, Reading
from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, running_daemon, write_config

pytestmark = [pytest.mark.timeout(90), pytest.mark.asyncio]

RETRY_EVERY = 0.1  # how often the stand-in for the engine's loop reopens the device


async def reopen_until_data(sim: SimOpcUaServer, got: asyncio.Event, deadline: float) -> None:
    """The engine's loop with a fixed short delay: open, subscribe, on failure retry."""
    from cellctl_opcua.plugin import plugin

    def sink(_reading: Reading) -> None:
        got.set()

    while time.monotonic() < deadline:
        try:
            async with plugin.open(device_ctx(sim.url)) as device:
                await device.subscribe(sink)
        except DeviceUnavailable:
            await asyncio.sleep(RETRY_EVERY)


async def test_the_driver_delivers_data_soon_after_the_server_is_back() -> None:
    figures: list[float] = []
    async with SimOpcUaServer(tick=0.05, seed=3, auto_tick=False, autonomous=False) as sim:
        for _ in range(3):
            got = asyncio.Event()
            await sim.stop_listening()
            task = asyncio.create_task(reopen_until_data(sim, got, time.monotonic() + 30), name="reopen")
            try:
                await asyncio.sleep(0.5)  # the outage: it fails against the closed port a few times
                assert not got.is_set()
                await sim.start_listening()
                back = time.monotonic()
                async with asyncio.timeout(10):
                    await got.wait()
                figures.append(time.monotonic() - back)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    print(f"\nserver listening -> first reading (driver, retry every {RETRY_EVERY:g} s): "
          + ", ".join(f"{f * 1000:.0f} ms" for f in figures))
    assert max(figures) < 3.0


@pytest.mark.parametrize("outage", [0.0, 3.0])
async def test_the_daemon_publishes_again_soon_after_an_outage(
    collector: Collector, broker: Mosquitto, unique: str, tmp_path: Path, outage: float
) -> None:
    async with SimOpcUaServer(tick=0.05, seed=4, auto_tick=False, autonomous=False) as sim:
        config = write_config(tmp_path, broker.port, [opcua_device("mill", sim.url)], cell=unique)
        async with running_daemon(config):
            await collector.until(lambda _m: all_good(collector, "mill"), what="online, every point good")
            await sim.stop_listening()
            await collector.until(
                lambda _m: (s := latest_state(collector, "mill")) and not s["available"], what="the outage published"
            )
            await asyncio.sleep(outage)  # the fault's length (the engine retries meanwhile), not a wait
            await sim.start_listening()
            back = time.time()
            state = await collector.until(
                lambda _m: (s := all_good(collector, "mill")) and s["ts"] / 1000 > back and s,
                timeout=30,
                what="available again with every point good",
            )
    resumed = state["ts"] / 1000 - back
    print(f"\nserver listening after a {outage:g} s outage -> device good again on MQTT (daemon): "
          f"{resumed * 1000:.0f} ms")
    assert resumed < 15.0
