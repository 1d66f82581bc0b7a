"""Sparkplug B conformance points found by third-party decoders (issue 9 items 6-8),
checked from a capture at a real mosquitto that keeps its own default in-flight limit
(20 QoS 1 messages per client; beyond it QoS 1 is queued while QoS 0 goes out at once):

- DATA is QoS 0 by default, live and replayed; durability comes from a fence, not QoS 1;
- every message of the node reaches a subscriber in seq order after an outage, in both
  `historical_qos` modes;
- a device is birthed once, when its first reading (with its values) or its first failure
  is known, and its first DATA does not repeat its birth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto, free_port
from cellctl.testing import modbus_device, running_daemon, write_config
from cellctl.testing.sparkplug import Capture, SpMessage, check_node, metric_value

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def strict_broker() -> Iterator[Mosquitto]:
    with Mosquitto(persistence=True, max_inflight_messages=20) as b:
        yield b


@pytest.fixture
async def meters() -> AsyncIterator[int]:
    async with SimModbusServer({1: "energy-meter", 2: "energy-meter"}, tick=0.02, seed=7) as sim:
        yield await sim.serve_tcp()


def of(kind: str, msgs: list[SpMessage], device: str | None = None) -> list[SpMessage]:
    return [m for m in msgs if m.kind == kind and (device is None or m.device == device)]


def historical(m: SpMessage) -> bool:
    return bool(m.decode().metrics[0].is_historical)


@pytest.mark.parametrize("historical_qos", [0, 1])
async def test_after_an_outage_every_message_arrives_in_seq_order(
    strict_broker: Mosquitto, meters: int, unique: str, tmp_path: Path, historical_qos: int
) -> None:
    group, edge = "test-lab-a1", f"l1-{unique}"
    config = write_config(
        tmp_path,
        strict_broker.port,
        [
            modbus_device(d, "sim-energy-meter", meters, u, poll_interval=0.02)
            for d, u in (("m1", 1), ("m2", 2))
        ],
        cell=unique,
        publish={"formats": ["sparkplug"]},
        sparkplug={"historical_qos": historical_qos},
    )
    cap = Capture(strict_broker.port, f"spBv1.0/{group}/#", client_id=f"cap-{unique}")
    try:
        async with running_daemon(config) as daemon:
            await cap.until(lambda m: len(of("DDATA", m)) >= 20, what="live DDATA")
            await asyncio.to_thread(strict_broker.stop)
            async with asyncio.timeout(20):
                while (await daemon.writer.call(len)) < 400:
                    await asyncio.sleep(0.05)
            await asyncio.to_thread(strict_broker.start)
            await cap.until(
                lambda m: sum(1 for x in of("DDATA", m) if historical(x)) >= 300,
                timeout=30,
                what="the outage's DDATA, historical",
            )
            await cap.until(  # live data after the replay, so the tail is in the capture too
                lambda m: not historical(of("DDATA", m)[-1]), timeout=20, what="live DDATA after replay"
            )
    finally:
        cap.close()
    # asserts seq continuity in arrival order
    report = check_node(cap.snapshot(), group, edge, node_qos=historical_qos)
    assert report.historical >= 300
    assert report.historical_qos == {historical_qos}


async def test_a_device_is_birthed_once_with_its_values_and_its_first_data_is_new(
    broker: Mosquitto, meters: int, unique: str, tmp_path: Path
) -> None:
    group, edge = "test-lab-a1", f"l1-{unique}"
    down_port = free_port("127.0.0.1")  # nothing listens: the device's first outcome is a failure
    config = write_config(
        tmp_path,
        broker.port,
        [
            modbus_device("m1", "sim-energy-meter", meters, 1, poll_interval=0.05),
            modbus_device("gone", "sim-energy-meter", down_port, 1, poll_interval=0.05),
        ],
        cell=unique,
        publish={"formats": ["sparkplug"]},
    )
    cap = Capture(broker.port, f"spBv1.0/{group}/#")
    try:
        async with running_daemon(config):
            await cap.until(lambda m: len(of("DDATA", m, "m1")) >= 5, what="m1's DDATA")
            await cap.until(lambda m: of("DDEATH", m, "gone"), what="the unreachable device's DDEATH")
            msgs = cap.snapshot()  # before the clean stop's deaths
    finally:
        cap.close()
    check_node(msgs, group, edge)
    assert [m.kind for m in msgs if m.device == "m1"][:1] == ["DBIRTH"]
    assert len(of("DBIRTH", msgs, "m1")) == 1, "birthed once, not birthed, killed and birthed again"
    assert not of("DDEATH", msgs, "m1")
    birth = {x.name: metric_value(x) for x in of("DBIRTH", msgs, "m1")[0].decode().metrics}
    assert birth["voltage_l1"] is not None, "the birth carries the first reading's values"
    aliases = {x.alias: x.name for x in of("DBIRTH", msgs, "m1")[0].decode().metrics}
    by_name = {x.name: metric_value(x) for x in of("DBIRTH", msgs, "m1")[0].decode().metrics}
    first = of("DDATA", msgs, "m1")[0].decode()
    repeated = [aliases[x.alias] for x in first.metrics if by_name.get(aliases[x.alias]) == metric_value(x)]
    assert not repeated, f"the first DATA repeats the birth: {repeated}"
    # the unreachable device: one DBIRTH (its points bad), then one DDEATH, no flapping
    assert [m.kind for m in msgs if m.device == "gone"] == ["DBIRTH", "DDEATH"]
