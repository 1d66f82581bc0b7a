"""The shared test kit itself: each helper does what drivers' tests rely on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from cellctl.testing import PtyBridge, async_wait_until, device_context, free_port, wait_until


def test_wait_until_returns_the_value_that_held() -> None:
    start = time.monotonic()
    assert wait_until(lambda: time.monotonic() - start > 0.05 and "done", timeout=5) == "done"


def test_wait_until_fails_saying_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0.05 s waiting for the moon"):
        wait_until(lambda: False, 0.05, "the moon")


async def test_async_wait_until_awaits_a_coroutine_predicate() -> None:
    calls = []

    async def ready() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert await async_wait_until(ready, timeout=5, what="three calls") is True
    assert len(calls) == 3
    with pytest.raises(AssertionError, match="never"):
        await async_wait_until(lambda: 0, 0.05, "never")


async def test_pty_bridge_carries_bytes_both_ways() -> None:
    with PtyBridge() as bridge:
        client = os.open(bridge.client_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        server = os.open(bridge.server_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            got: list[bytes] = []

            def read(fd: int) -> bytes:
                try:
                    return os.read(fd, 100)
                except BlockingIOError:
                    return b""

            os.write(client, b"?\n")
            await async_wait_until(lambda: got.append(read(server)) or b"".join(got) == b"?\n", 5, "request")
            os.write(server, b"ok\n")
            back: list[bytes] = []
            await async_wait_until(lambda: back.append(read(client)) or b"".join(back) == b"ok\n", 5, "answer")
            assert bridge.bytes_to_server == 2
        finally:
            os.close(client)
            os.close(server)


def test_device_context_validates_with_the_plugins_models() -> None:
    ctx = device_context(
        "modbus", "sim-energy-meter", {"transport": "tcp", "host": "127.0.0.1", "port": 1502}, poll_interval=0.2
    )
    assert ctx.points
    assert [p.index for p in ctx.points] == list(range(len(ctx.points)))
    assert ctx.poll_interval == 0.2
    assert type(ctx.connection).__name__ == "ModbusConnection"
    with pytest.raises(ValidationError):
        device_context("modbus", "sim-energy-meter", {"transport": "tcp", "host": "127.0.0.1", "port": 0})


def test_the_kit_needs_no_pytest_and_the_daemon_never_loads_it() -> None:
    code = (
        "import sys\n"
        "import cellctl.daemon, cellctl.cli.main\n"
        "assert 'cellctl.testing' not in sys.modules, 'daemon imported the kit'\n"
        "import cellctl.testing\n"
        "assert 'pytest' not in sys.modules, 'the kit imported pytest'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_free_ports_stay_out_of_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    """A broker a test stops for an outage must find its port free again: no outgoing
    connection, bind(0) or other xdist worker may take it in between."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert not [p for p in ports if low <= p <= high]

    def slice_of(worker: str) -> set[int]:
        code = "from cellctl.localbroker import free_port; print(*(free_port() for _ in range(30)))"
        env = {**os.environ, "PYTEST_XDIST_WORKER": worker}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return {int(p) for p in out.stdout.split()}

    gw0, gw1 = slice_of("gw0"), slice_of("gw1")
    assert max(gw0) < min(gw1) or max(gw1) < min(gw0), "each worker draws from a slice of its own"
