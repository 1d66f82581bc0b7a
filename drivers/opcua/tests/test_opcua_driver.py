"""The driver alone against the real simulated server over TCP: status codes and source
timestamps, polling, queued values, typed writes, method calls and browsing."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
from cellctl_opcua.config import OpcUaAddress
from cellctl_opcua.device import OpcUaDevice, OpcUaError
from cellctl_opcua.plugin import plugin
from cellctl_sim.opcua import NAMESPACE, SimOpcUaServer
from opcua_testutil import device_ctx, wait_until

from cellctl.driver import DeviceContext, Reading

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]

UNCERTAIN_LAST_USABLE = 0x4090_0000
BAD_SENSOR_FAILURE = 0x808C_0000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[SimOpcUaServer]:
    async with SimOpcUaServer(tick=0.1, seed=11, auto_tick=False, autonomous=False) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def device(sim: SimOpcUaServer) -> AsyncIterator[OpcUaDevice]:
    async with plugin.open(device_ctx(sim.url)) as d:
        yield d


class Feed:
    """A running subscription whose readings a test can wait on."""

    def __init__(self, device: OpcUaDevice) -> None:
        self.readings: list[Reading] = []
        self.task = asyncio.create_task(device.subscribe(self.readings.append), name="test-feed")

    def latest(self, index: int) -> tuple[Any, str | None, float | None] | None:
        """(value, error, source time) of the newest notification for point `index`."""
        for r in reversed(self.readings):
            indexes = r.indexes if r.indexes is not None else range(len(r.values))
            for k, i in enumerate(indexes):
                if i == index:
                    err = (r.errors or {}).get(i) or (getattr(r, "uncertain", None) or {}).get(i)
                    ts = r.source_ts_each[k] if r.source_ts_each else None
                    return r.values[k], err, ts
        return None

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest_asyncio.fixture(loop_scope="module")
async def feed(device: OpcUaDevice) -> AsyncIterator[Feed]:
    f = Feed(device)
    await wait_until(lambda: f.readings, what="the initial values")
    yield f
    await f.stop()


def index_of(ctx: DeviceContext, point_id: str) -> int:
    return next(p.index for p in ctx.points if p.id == point_id)


async def test_status_codes_map_to_quality_with_the_status_name(
    sim: SimOpcUaServer, device: OpcUaDevice, feed: Feed
) -> None:
    temp = index_of(device.ctx, "spindle_temperature")
    await sim.set_value("Temperatures/Spindle", 31.5, status=UNCERTAIN_LAST_USABLE)
    got = await wait_until(lambda: (x := feed.latest(temp)) and x[1] and x, what="the uncertain value")
    assert got[0] == 31.5  # uncertain keeps its value
    assert got[1] == "UncertainLastUsableValue"
    carried = [r for r in feed.readings if r.uncertain and temp in r.uncertain]
    assert carried, "in Reading.uncertain (quality=uncertain), not in errors"
    assert all(temp not in (r.errors or {}) for r in carried)
    await sim.set_value("Temperatures/Spindle", 0.0, status=BAD_SENSOR_FAILURE)
    got = await wait_until(
        lambda: (x := feed.latest(temp)) and x[1] == "BadSensorFailure" and x, what="the bad value"
    )
    await sim.set_value("Temperatures/Spindle", 32.25)
    got = await wait_until(lambda: (x := feed.latest(temp)) and x[1] is None and x, what="good again")
    assert got[0] == 32.25


async def test_source_timestamps_are_the_servers(sim: SimOpcUaServer, device: OpcUaDevice, feed: Feed) -> None:
    speed = index_of(device.ctx, "spindle_speed")
    await sim.set_value("Spindle/Speed", 1234.5)
    got = await wait_until(lambda: (x := feed.latest(speed)) and x[0] == 1234.5 and x, what="the new speed")
    assert sim.server is not None
    node = sim.server.read_attribute_value(device.node_ids[speed])
    assert got[2] == pytest.approx(node.SourceTimestamp.timestamp(), abs=1e-6)


async def test_polled_points_are_read_on_their_interval(sim: SimOpcUaServer) -> None:
    ctx = device_ctx(sim.url)
    k = index_of(ctx, "good_parts")
    points = list(ctx.points)
    address = OpcUaAddress.model_validate({"node": f"nsu={NAMESPACE};s=Machine.Counters.GoodParts", "mode": "poll",
                                           "poll_interval": 0.05})
    points[k] = replace(points[k], address=address)
    async with plugin.open(replace(ctx, points=points)) as device:
        f = Feed(device)
        try:
            sim.machine.good = 41
            sim.machine.force_state("Idle")
            await sim.step()
            await wait_until(lambda: (x := f.latest(k)) and x[0] == 41, what="polled value 41")
            sim.machine.good = 42
            await sim.step()
            await wait_until(lambda: (x := f.latest(k)) and x[0] == 42, what="polled value 42")
        finally:
            await f.stop()


async def test_queued_values_each_arrive_in_order(sim: SimOpcUaServer) -> None:
    ctx = device_ctx(sim.url, options={"queue_size": 10, "publishing_interval": 0.5, "keepalive": 1.0})
    k = index_of(ctx, "alarm_code")
    async with plugin.open(ctx) as device:
        f = Feed(device)
        try:
            await wait_until(lambda: f.latest(k), what="initial values")
            start = len(f.readings)

            def seen() -> list[Any]:
                return [
                    r.values[j] for r in f.readings[start:] for j, i in enumerate(r.indexes or []) if i == k
                ]

            for code in (17, 23, 99):
                sim.machine.force_state("Alarm", alarm=code)
                await sim.step()
            sim.machine.force_state("Idle")
            await sim.step()
            await wait_until(lambda: len(seen()) >= 4, what="four queued values")
            assert seen() == [17, 23, 99, 0], "one publish carried all four; each became its own reading"
        finally:
            await f.stop()


async def test_typed_writes(sim: SimOpcUaServer, device: OpcUaDevice) -> None:
    setpoint = index_of(device.ctx, "setpoint")
    override = index_of(device.ctx, "spindle_override")
    await device.write(setpoint, 250)  # an int, written as the node's Double
    assert sim.machine.setpoint == 250.0
    assert isinstance(sim.value("Process/Setpoint"), float)
    await device.write(override, 150.0)  # a whole float, written as the node's UInt16
    assert sim.value("Spindle/Override") == 150
    with pytest.raises(ValueError, match=r"70000 is outside UInt16 \(0\.\.65535\)"):
        await device.write(override, 70000)
    with pytest.raises(ValueError, match="not an integer"):
        await device.write(override, 1.5)
    with pytest.raises(OpcUaError, match="BadOutOfRange") as refused:
        await device.write(setpoint, 2500.0)
    assert refused.value.status == "BadOutOfRange"
    assert sim.machine.setpoint == 250.0
    with pytest.raises(ValueError, match="read-only"):
        await device.write(index_of(device.ctx, "good_parts"), 1)


async def test_method_calls_with_typed_arguments(sim: SimOpcUaServer, device: OpcUaDevice) -> None:
    start_job = {
        "object": {"node": f"nsu={NAMESPACE};s=Machine"},
        "method": {"path": ["Machine", "StartJob"], "namespace": NAMESPACE},
    }
    sim.machine.force_state("Idle")
    assert await device.call(start_job, ["J-42"]) == []
    assert sim.machine.state == "Running"
    assert sim.machine.job == "J-42"
    with pytest.raises(OpcUaError, match="BadInvalidState") as refused:
        await device.call(start_job, ["J-43"])
    assert refused.value.status == "BadInvalidState"
    with pytest.raises(ValueError, match="takes 1 argument"):
        await device.call(start_job, [])
    with pytest.raises(ValueError, match=r"argument 1 \(jobId\): 7 is not a string"):
        await device.call(start_job, [7])
    sim.machine.force_state("Idle")


async def test_browse_lists_nodes_by_namespace_uri(device: OpcUaDevice) -> None:
    nodes = await device.browse(depth=3)
    by_node = {n["node"]: n for n in nodes}
    setpoint = by_node[f"nsu={NAMESPACE};s=Machine.Process.Setpoint"]
    assert setpoint["data_type"] == "Double"
    assert setpoint["writable"] is True
    assert setpoint["point_type"] == "float"
    assert setpoint["browse_name"] == f"nsu={NAMESPACE};Setpoint"
    assert not any(n["node"].startswith("ns=") for n in nodes), "never a namespace index"
    methods = [n for n in nodes if n["class"] == "Method" and n["node"].endswith("StartJob")]
    assert methods


async def test_writes_after_the_session_is_gone_say_so(sim: SimOpcUaServer) -> None:
    async with plugin.open(device_ctx(sim.url)) as device:
        assert device.client is not None
        device.client.uaclient.disconnect_socket()
        with pytest.raises(Exception, match=r"connection|not connected"):
            await device.write(index_of(device.ctx, "setpoint"), 1.0)
    assert dt.datetime.now(dt.UTC)  # the context closed without hanging


async def test_the_server_applies_an_absolute_deadband(sim: SimOpcUaServer, device: OpcUaDevice, feed: Feed) -> None:
    coolant = index_of(device.ctx, "coolant_temperature")  # deadband {absolute: 0.05} in the profile
    speed = index_of(device.ctx, "spindle_speed")  # no server deadband
    base = round(sim.value("Temperatures/Coolant") + 1.0, 3)
    await sim.set_value("Temperatures/Coolant", base)
    await wait_until(lambda: (x := feed.latest(coolant)) and x[0] == base, what=f"coolant {base}")
    await sim.set_value("Temperatures/Coolant", base + 0.01)  # inside the deadband: not sent
    await sim.set_value("Spindle/Speed", 100.01)  # no deadband: sent
    await wait_until(lambda: (x := feed.latest(speed)) and x[0] == 100.01, what="speed 100.01")
    assert feed.latest(coolant)[0] == base  # type: ignore[index]
    await sim.set_value("Temperatures/Coolant", base + 0.2)
    await wait_until(lambda: (x := feed.latest(coolant)) and x[0] == base + 0.2, what="coolant beyond the deadband")
