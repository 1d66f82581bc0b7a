"""Writes and method calls the server refuses, and writes without a session, against the
real simulated server: a refusal is the core's `WriteRejected` naming the status (the
device stays usable), a lost session is `DeviceUnavailable`; never an asyncua error."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from cellctl_opcua.device import OpcUaDevice
from cellctl_opcua.plugin import plugin
from cellctl_sim.opcua import NAMESPACE, SimOpcUaServer
from opcua_testutil import device_ctx, first_readings, wait_until

from cellctl.driver import DeviceContext, DeviceUnavailable, WriteRejected

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]

START_JOB = {
    "object": {"node": f"nsu={NAMESPACE};s=Machine"},
    "method": {"path": ["Machine", "StartJob"], "namespace": NAMESPACE},
}


@pytest_asyncio.fixture(loop_scope="module")
async def narrow_sim() -> AsyncIterator[SimOpcUaServer]:
    """A server whose setpoint accepts 0..200 while the profile allows up to 1000."""
    async with SimOpcUaServer(auto_tick=False, autonomous=False, setpoint_range=(0.0, 200.0)) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def device(narrow_sim: SimOpcUaServer) -> AsyncIterator[OpcUaDevice]:
    async with plugin.open(device_ctx(narrow_sim.url)) as d:
        yield d


def index_of(ctx: DeviceContext, point_id: str) -> int:
    return next(p.index for p in ctx.points if p.id == point_id)


async def test_a_value_the_server_refuses_is_write_rejected_with_the_status_name(
    narrow_sim: SimOpcUaServer, device: OpcUaDevice
) -> None:
    setpoint = index_of(device.ctx, "setpoint")
    await device.write(setpoint, 150.0)
    assert narrow_sim.machine.setpoint == 150.0
    with pytest.raises(WriteRejected) as refused:
        await device.write(setpoint, 500.0)  # within the profile's 0..1000, outside the server's EURange
    assert refused.value.reason == "BadOutOfRange"
    assert "point 'setpoint'" in str(refused.value)
    assert "500.0" in str(refused.value)
    assert narrow_sim.machine.setpoint == 150.0
    await device.write(setpoint, 200.0)  # the session is fine: the next write goes through
    assert narrow_sim.machine.setpoint == 200.0
    (reading, *_) = await first_readings(device)
    assert reading.values


async def test_a_method_call_the_server_refuses_is_write_rejected(
    narrow_sim: SimOpcUaServer, device: OpcUaDevice
) -> None:
    narrow_sim.machine.force_state("Running")
    with pytest.raises(WriteRejected) as refused:
        await device.call(START_JOB, ["J-1"])
    assert refused.value.reason == "BadInvalidState"
    narrow_sim.machine.force_state("Idle")
    assert await device.call(START_JOB, ["J-2"]) == []


async def test_a_write_or_call_without_a_session_is_device_unavailable(narrow_sim: SimOpcUaServer) -> None:
    async with plugin.open(device_ctx(narrow_sim.url)) as device:
        setpoint = index_of(device.ctx, "setpoint")
        await device.write(setpoint, 10.0)  # learns the node's data type while connected
        await narrow_sim.stop_listening()
        try:
            assert device.client is not None
            await wait_until(lambda: device.client is None or device.client.uaclient.protocol.transport is None,
                             what="the client to see the connection closed")
            with pytest.raises(DeviceUnavailable):
                await device.write(setpoint, 20.0)
            with pytest.raises(DeviceUnavailable):
                await device.call(START_JOB, ["J-3"])
        finally:
            await narrow_sim.start_listening()


async def test_a_write_or_call_the_server_answers_with_a_session_fault_is_device_unavailable(
    narrow_sim: SimOpcUaServer,
) -> None:
    """The connection is up but the server closed the session (as when it timed out): the
    device is gone, not the value refused."""
    async with plugin.open(device_ctx(narrow_sim.url)) as device:
        setpoint = index_of(device.ctx, "setpoint")
        await device.write(setpoint, 10.0)
        await narrow_sim.drop_sessions()
        with pytest.raises(DeviceUnavailable, match="BadSession"):
            await device.write(setpoint, 20.0)
        with pytest.raises(DeviceUnavailable, match="BadSession"):
            await device.call(START_JOB, ["J-4"])
