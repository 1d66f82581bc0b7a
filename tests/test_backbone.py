"""Backbone connection options against a real mosquitto: MQTT 5, username/password."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, modbus_device, root_topic, running_daemon, write_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def sim_port() -> AsyncIterator[int]:
    async with SimModbusServer({1: "energy-meter"}, tick=0.05, seed=5) as sim:
        yield await sim.serve_tcp()


@pytest.fixture
def auth_broker() -> Iterator[Mosquitto]:
    with Mosquitto(users={"cell-3": "s3cret-pa55"}) as b:
        yield b


async def test_mqtt5_session_publishes(broker: Mosquitto, sim_port: int, unique: str, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, broker.port, [modbus_device("m", "sim-energy-meter", sim_port, 1)], cell=unique
    )
    text = config.read_text().replace("reconnect_max: 1", "reconnect_max: 1\n  protocol: '5'")
    config.write_text(text)
    collector = Collector(broker.port, f"{root_topic(unique)}/#")
    try:
        async with running_daemon(config) as daemon:
            await collector.until(lambda _m: collector.on("/m/data"), what="data over MQTT 5")
            assert daemon.compiled.config.backbone.protocol == "5"
    finally:
        collector.close()


def config_with_password(tmp_path: Path, broker_port: int, sim_port: int, cell: str, password: str) -> Path:
    """A cell config whose backbone logs in as cell-3 with `password` from a file."""
    secret = tmp_path / "mqtt-password"
    secret.write_text(f"{password}\n")
    config = write_config(tmp_path, broker_port, [modbus_device("m", "sim-energy-meter", sim_port, 1)], cell=cell)
    text = config.read_text().replace(
        "reconnect_max: 1", f"reconnect_max: 1\n  username: cell-3\n  password_file: {secret}"
    )
    config.write_text(text)
    return config


async def test_username_and_password_file(
    auth_broker: Mosquitto, sim_port: int, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_with_password(tmp_path, auth_broker.port, sim_port, unique, "s3cret-pa55")
    async with running_daemon(config) as daemon:
        assert await asyncio.to_thread(daemon.session.connected.wait, 10)
    captured = capsys.readouterr()
    assert "s3cret-pa55" not in captured.out + captured.err


async def test_wrong_password_is_refused_and_logged(
    auth_broker: Mosquitto, sim_port: int, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_with_password(tmp_path, auth_broker.port, sim_port, unique, "wrong-password")
    async with running_daemon(config) as daemon:
        for _ in range(500):
            captured = capsys.readouterr()
            if "mqtt_connect_refused" in captured.out + captured.err:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("no mqtt_connect_refused log line")
        assert not daemon.session.connected.is_set()
