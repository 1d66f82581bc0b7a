"""The whole path against real parts: the simulated OPC UA machine over TCP, the
daemon, a private mosquitto and a real MQTT subscriber."""

from __future__ import annotations

from pathlib import Path

import pytest
from cellctl_sim.opcua import SimOpcUaServer
from opcua_testutil import current_values, expected_values, latest_state, mismatches, opcua_device

from cellctl.testing import Collector, Mosquitto, running_daemon, write_config

pytestmark = pytest.mark.timeout(60)


async def test_values_arrive_through_the_subscription_and_match_the_server(
    machine: SimOpcUaServer, collector: Collector, broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, broker.port, [opcua_device("mill", machine.url)], cell=unique)
    async with running_daemon(config):
        machine.machine.start_job("J-100")
        for step in range(5):
            await machine.step(7)
            want = expected_values(machine)
            await collector.until(
                lambda _m, w=want: not mismatches(current_values(collector, "mill"), w),
                what=f"step {step}: published values equal the server's {want}",
            )
        good = machine.value("Counters/GoodParts")
        assert good > 0
        state = await collector.until(
            lambda _m: (s := latest_state(collector, "mill")) and s["machine"]["counters"].get("good") == good and s,
            what=f"the retained state counts {good} good parts",
        )
    assert state["available"]
    assert state["machine"]["item_state"] == "executing"
    assert state["machine"]["raw_state"] == "Running"
    # source timestamps are the server's, kept per value
    assert all("src_ts" in p for p in state["points"].values() if p["q"] == "good")


async def test_an_uncertain_status_is_published_as_uncertain_with_its_value(
    machine: SimOpcUaServer, collector: Collector, broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    """What drivers/opcua/README.md promises: Uncertain severity -> q=uncertain, the value
    kept and the status name as reason; Bad -> q=bad."""
    config = write_config(tmp_path, broker.port, [opcua_device("mill", machine.url)], cell=unique)
    async with running_daemon(config):
        await collector.until(lambda _m: latest_state(collector, "mill"), what="the first state")
        await machine.set_value("Temperatures/Spindle", 31.5, status=0x4090_0000)  # UncertainLastUsableValue
        point = await collector.until(
            lambda _m: (s := latest_state(collector, "mill"))
            and (p := s["points"]["spindle_temperature"])["q"] == "uncertain"
            and p,
            what="the spindle temperature published as uncertain",
        )
        assert point["v"] == 31.5
        assert point["reason"] == "UncertainLastUsableValue"
        await machine.set_value("Temperatures/Spindle", 0.0, status=0x808C_0000)  # BadSensorFailure
        point = await collector.until(
            lambda _m: (s := latest_state(collector, "mill"))
            and (p := s["points"]["spindle_temperature"])["q"] == "bad"
            and p,
            what="the spindle temperature published as bad",
        )
        assert point["reason"] == "BadSensorFailure"
