"""A short soak (issue 16 item 9): a real `cellctl run` with three simulated devices, one
of which has its connection dropped every second (the reconnect path is where sockets
leak), sampled once a second for ~8 s. After warm-up, resident memory and open file
descriptors must stay flat within generous bounds: a functional bound, not a speed.
bench/chaos.py runs the same for minutes."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, modbus_device, root_topic, write_config

from .streams import streams

pytestmark = pytest.mark.timeout(60)
CELLCTL = [sys.executable, "-m", "cellctl.cli.main", "--log-format", "json"]
WARMUP = 3.0
SOAK = 8.0
MAX_RSS_GROWTH = 16 * 1024 * 1024  # generous: allocator and caches settle for a while
MAX_FD_GROWTH = 4  # a reconnect in progress holds one socket more


@pytest.fixture
async def sims() -> AsyncIterator[list[SimModbusServer]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(SimModbusServer({1: "energy-meter"}, tick=0.01, seed=i))
            for i in range(3)
        ]


def spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([*CELLCTL, "run", str(config)], stdout=out, stderr=subprocess.STDOUT)


async def test_rss_and_fds_stay_flat_after_warm_up(
    broker: Mosquitto, sims: list[SimModbusServer], unique: str, tmp_path: Path
) -> None:
    ports = [await s.serve_tcp() for s in sims]
    config = write_config(
        tmp_path,
        broker.port,
        [modbus_device(f"m{i}", "sim-energy-meter", p, 1, poll_interval=0.02) for i, p in enumerate(ports)],
        cell=unique,
    )
    log = tmp_path / "daemon.log"
    c = Collector(broker.port, f"{root_topic(unique)}/+/data")
    proc = spawn(config, log)
    samples: list[tuple[float, int, int]] = []  # (t, rss, fds)
    drops = 0
    try:
        await c.until(lambda m: len(streams(m)) == 3, timeout=30, what="all three devices publishing")
        daemon = psutil.Process(proc.pid)
        start = time.monotonic()
        next_at = start
        while next_at - start <= SOAK:  # bounded: one sample per second
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            assert proc.poll() is None, "the daemon died"
            samples.append((time.monotonic() - start, daemon.memory_info().rss, daemon.num_fds()))
            drops += sims[2].drop_connections()
            next_at += 1.0
        delivered = sum(len(s.bodies) for s in streams(c.messages).values())
    finally:
        c.close()
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 0
    assert drops >= 3, "the reconnect path was exercised"
    assert delivered >= 3 * SOAK * 10, "the daemon kept working during the soak"
    settled = [s for s in samples if s[0] >= WARMUP]
    base_rss, base_fds = settled[0][1], settled[0][2]
    assert max(s[1] for s in settled) - base_rss <= MAX_RSS_GROWTH, samples
    assert max(s[2] for s in settled) - base_fds <= MAX_FD_GROWTH, samples
    assert "Traceback" not in log.read_text(encoding="utf-8")
