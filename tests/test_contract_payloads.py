"""The published contract against real runs (issue 14 item 1): every message a real
daemon publishes to a real mosquitto — from all three drivers' simulated devices, through
an outage and its replay, a reload that removes a device, and outbox drops — validates
against the strict JSON Schema of a payload registered for its topic. Schema and code
cannot drift: a field the code adds, drops or retypes without the contract fails here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cellctl_sim.grbl import GrblSim
from cellctl_sim.modbus.server import SimModbusServer
from cellctl_sim.opcua import SimOpcUaServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, Message, modbus_device, root_topic, running_daemon, write_config
from cellctl.testing.contract import CLEARED, check_messages

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def persistent_broker() -> Iterator[Mosquitto]:
    """A broker of the test's own that keeps sessions across its restart."""
    with Mosquitto(persistence=True) as b:
        yield b


@pytest.fixture
async def modbus_port() -> AsyncIterator[int]:
    async with SimModbusServer(
        {1: "energy-meter", 2: "machine-plc", 3: "type-test"}, tick=0.05, seed=14
    ) as sim:
        yield await sim.serve_tcp()


def opcua_device(device_id: str, url: str) -> dict[str, Any]:
    return {
        "id": device_id,
        "driver": "opcua",
        "profile": "sim-opcua-machine",
        "connection": {"endpoint": url},
        "options": {"publishing_interval": 0.05, "keepalive": 0.5},
        "timeout": 1.0,
    }


def grbl_device(device_id: str, port: str) -> dict[str, Any]:
    return {
        "id": device_id,
        "driver": "gcode",
        "profile": "grbl-cnc",
        "connection": {"port": port},
        "options": {"status_interval": 0.2},
        "timeout": 1.0,
    }


def devices_publishing(c: Collector, names: list[str]) -> bool:
    return all(c.on(f"/{d}/state") and c.on(f"/{d}/data") for d in names)


def historical(msgs: list[Message]) -> list[Message]:
    return [m for m in msgs if m.payload.startswith(b'{"historical":true')]


async def test_every_payload_of_all_three_drivers_matches_its_schema(
    broker: Mosquitto, modbus_port: int, unique: str, tmp_path: Path
) -> None:
    root = root_topic(unique)
    c = Collector(broker.port, f"{root}/#")
    try:
        async with (
            SimOpcUaServer(tick=0.05, seed=14) as opcua,
            GrblSim(speedup=50.0) as grbl,
        ):
            devices = [
                modbus_device("meter", "sim-energy-meter", modbus_port, 1),
                modbus_device("plc", "sim-machine-plc", modbus_port, 2),
                modbus_device("types", "sim-types", modbus_port, 3),
                opcua_device("mill", opcua.url),
                grbl_device("router", grbl.path),
            ]
            names = [d["id"] for d in devices]
            # per_point: the point topics too; data messages are published either way
            config = write_config(tmp_path, broker.port, devices, cell=unique, publish={"mode": "per_point"})
            async with running_daemon(config):
                await c.until(
                    lambda _m: (
                        devices_publishing(c, names)
                        and c.on(f"{root}/manifest")
                        and c.on(f"{root}/outbox")
                        and len(c.on("/data")) >= 50
                    ),
                    timeout=30,
                    what="state and data of every device, the manifest and the outbox figures",
                )
            # the clean stop: offline status, every device unavailable
            await c.until(
                lambda _m: any(m.json().get("status") == "offline" for m in c.on(f"{root}/status")),
                what="the offline status",
            )
    finally:
        c.close()
    report = check_messages(c.messages, root)
    report.assert_valid()
    for name in ("status", "state", "data", "point", "outbox", "manifest"):
        assert report.seen[name] > 0, f"no {name!r} message was captured: {report.seen}"
    states = [m.json() for m in c.on("/state") if m.topic.count("/") == root.count("/") + 2 and m.payload]
    drivers = {s["driver"] for s in states}
    assert drivers == {"modbus", "opcua", "gcode"}
    machines = [m.json()["machine"] for m in c.on("/data") if "machine" in m.json()]
    assert machines, "machine states were validated too"


async def test_outage_replay_historical_messages_match_their_schema(
    persistent_broker: Mosquitto, modbus_port: int, unique: str, tmp_path: Path
) -> None:
    broker = persistent_broker
    root = root_topic(unique)
    devices = [
        modbus_device("plc", "sim-machine-plc", modbus_port, 2, poll_interval=0.02),
        modbus_device("meter", "sim-energy-meter", modbus_port, 1, poll_interval=0.02),
    ]
    config = write_config(tmp_path, broker.port, devices, cell=unique, publish={"mode": "per_point"})
    c = Collector(broker.port, f"{root}/#", client_id=f"h-{unique}"[:23], clean_session=False)
    try:
        async with running_daemon(config) as daemon:
            await c.until(lambda _m: devices_publishing(c, ["plc", "meter"]), what="both devices publishing")
            await asyncio.to_thread(broker.stop)
            async with asyncio.timeout(20):
                while (await daemon.writer.call(len)) < 400:  # per-point mode: most are point messages
                    await asyncio.sleep(0.05)
            await asyncio.to_thread(broker.start)
            await c.until(
                lambda m: (
                    len(historical([x for x in m if x.topic.endswith("/data")])) >= 10
                    and historical([x for x in m if "/points/" in x.topic])
                ),
                timeout=30,
                what="historical data and point messages after the outage",
            )
    finally:
        c.close()
    report = check_messages(c.messages, root)
    report.assert_valid()
    assert report.seen["data"] > 10


def rewrite_devices(path: Path, devices: list[dict[str, Any]]) -> None:
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["devices"] = devices
    path.write_text(yaml.safe_dump(config), encoding="utf-8")


async def test_a_removed_device_event_and_cleared_retained_topics_match_the_contract(
    broker: Mosquitto, modbus_port: int, unique: str, tmp_path: Path
) -> None:
    root = root_topic(unique)
    keep = modbus_device("meter", "sim-energy-meter", modbus_port, 1)
    gone = modbus_device("plc", "sim-machine-plc", modbus_port, 2)
    config = write_config(tmp_path, broker.port, [keep, gone], cell=unique, publish={"mode": "per_point"})
    c = Collector(broker.port, f"{root}/#")
    try:
        async with running_daemon(config) as daemon:
            await c.until(lambda _m: devices_publishing(c, ["meter", "plc"]), what="both devices publishing")
            rewrite_devices(config, [keep])
            assert await daemon.reload()
            await c.until(
                lambda _m: (
                    [m for m in c.on("/plc/state") if m.payload == b""]
                    and any(m.json().get("event") == "device_removed" for m in c.on(f"{root}/events"))
                ),
                what="the removal event and plc's retained state cleared",
            )
            # a consumer arriving now finds no retained topic of the removed device
            late = Collector(broker.port, f"{root}/plc/#")
            try:
                await c.until(lambda _m: len(c.on("/meter/data")) > 5, what="meter still publishing")
                assert late.messages == [], [m.topic for m in late.messages]
            finally:
                late.close()
    finally:
        c.close()
    report = check_messages(c.messages, root)
    report.assert_valid()
    assert report.seen["event.device_removed"] == 1
    assert report.seen["state" + CLEARED] >= 1
    assert report.seen["point" + CLEARED] >= 1


async def test_outbox_drop_events_and_figures_match_their_schema(
    persistent_broker: Mosquitto, modbus_port: int, unique: str, tmp_path: Path
) -> None:
    broker = persistent_broker
    root = root_topic(unique)
    config = write_config(
        tmp_path,
        broker.port,
        [modbus_device("meter", "sim-energy-meter", modbus_port, 1, poll_interval=0.02)],
        cell=unique,
        outbox={"fsync": "off", "max_bytes": "8KiB"},
    )
    c = Collector(broker.port, f"{root}/#", client_id=f"d-{unique}"[:23], clean_session=False)
    try:
        async with running_daemon(config) as daemon:
            await c.until(lambda _m: c.on("/meter/data"), what="data flowing")
            await asyncio.to_thread(broker.stop)
            async with asyncio.timeout(20):
                while (await daemon.writer.call(lambda ob: ob.stats())).dropped_total < 30:
                    await asyncio.sleep(0.05)
            await asyncio.to_thread(broker.start)
            await c.until(
                lambda _m: (
                    any(m.json().get("event") == "outbox_dropped" for m in c.on(f"{root}/events"))
                    and any(m.json()["dropped_total"] > 0 for m in c.on(f"{root}/outbox"))
                ),
                timeout=20,
                what="a drop event and the figures with the drops",
            )
    finally:
        c.close()
    report = check_messages(c.messages, root)
    report.assert_valid()
    assert report.seen["event.outbox_dropped"] >= 1
    assert report.seen["outbox"] >= 1
