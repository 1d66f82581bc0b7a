"""What the driver puts in the log: asyncua's per-request traces stay out of a debug
log unless someone asks for them, and the driver itself writes one line per problem,
never a multi-line traceback (the JSON log is one event per line)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import cellctl_opcua.device as device_module
import pytest
import structlog
from cellctl_opcua.plugin import plugin
from cellctl_sim.opcua import SimOpcUaServer
from opcua_testutil import device_ctx, wait_until

from cellctl.driver import DeviceUnavailable, Reading

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def root_at_debug(asyncua_level: int = logging.NOTSET) -> Iterator[Keep]:
    """The root logger at DEBUG (as `--log-level debug` sets it), asyncua as given,
    everything restored afterwards."""
    root, asyncua_log = logging.getLogger(), logging.getLogger("asyncua")
    saved = (root.level, asyncua_log.level, getattr(device_module, "_asyncua_level_set", None))
    keep = Keep()
    root.addHandler(keep)
    root.setLevel(logging.DEBUG)
    asyncua_log.setLevel(asyncua_level)
    setattr(device_module, "_asyncua_level_set", None)  # noqa: B010  (forget what the driver set before)
    try:
        yield keep
    finally:
        root.removeHandler(keep)
        root.setLevel(saved[0])
        asyncua_log.setLevel(saved[1])
        setattr(device_module, "_asyncua_level_set", saved[2])  # noqa: B010


async def subscribe_for(sim: SimOpcUaServer, n: int) -> list[Reading]:
    readings: list[Reading] = []
    async with plugin.open(device_ctx(sim.url)) as device:
        task = asyncio.create_task(device.subscribe(readings.append), name="test-subscribe")
        try:
            for i in range(n):
                # A step alone may change nothing visible (the temperature's noise can round
                # to the same value): a new part count makes every step a change.
                sim.machine.good = 1000 + i
                await sim.step()
                count = len(readings)
                await wait_until(lambda c=count: len(readings) > c or task.done(), what="the next reading")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return readings


async def test_a_debug_log_does_not_carry_asyncuas_request_traces() -> None:
    async with SimOpcUaServer(auto_tick=False, autonomous=False) as sim:
        with root_at_debug() as keep:
            readings = await subscribe_for(sim, 20)
    client = [r for r in keep.records if r.name.startswith("asyncua.client")]
    assert len(readings) >= 20
    assert not [r for r in client if r.levelno < logging.INFO], "no per-request DEBUG traces"
    assert len(client) < 20, f"a few connect/close lines, not one per publish: {len(client)}"


async def test_asking_asyncua_for_debug_is_respected() -> None:
    async with SimOpcUaServer(auto_tick=False, autonomous=False) as sim:
        with root_at_debug(asyncua_level=logging.DEBUG) as keep:
            await subscribe_for(sim, 3)
    assert [r for r in keep.records if r.name.startswith("asyncua.client") and r.levelno == logging.DEBUG]


async def test_a_failing_consumer_is_one_log_line_without_traceback() -> None:
    def broken(_reading: Reading) -> None:
        raise ZeroDivisionError("consumer bug")

    async with SimOpcUaServer(auto_tick=False, autonomous=False) as sim, plugin.open(device_ctx(sim.url)) as device:
        with structlog.testing.capture_logs() as logs, pytest.raises(DeviceUnavailable) as ended:
            async with asyncio.timeout(20):
                await device.subscribe(broken)
    assert "internal error handling a notification: ZeroDivisionError('consumer bug')" in ended.value.reason
    (event,) = [e for e in logs if e["event"] == "opcua_notification_error"]
    assert event["log_level"] == "error"
    assert "exc_info" not in event
    assert event["at"].startswith("test_opcua_logging.py:")
