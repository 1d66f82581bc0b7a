"""MQTT over TLS against a real mosquitto with certificates made for the test: the right
CA connects; a wrong CA, an expired or wrong-host broker certificate is refused with an
error naming the cause; client certificates (mutual TLS) authenticate the cell; an ACL
keeps the cell in its own topic subtree. MQTT 3.1.1 and 5."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.config.loader import load_cell
from cellctl.daemon import Daemon
from cellctl.errors import ConfigError
from cellctl.localbroker import BrokerTls, Mosquitto
from cellctl.testing import (
    Collector,
    async_wait_until,
    modbus_device,
    root_topic,
    running_daemon,
    write_config,
)
from cellctl.testing.certs import CertAuthority, CertFiles

pytestmark = pytest.mark.timeout(60)
PROTOCOLS = ["3.1.1", "5"]


class Pki:
    """The test's CA with the broker's certificates (good, expired, wrong host), and a
    second CA nobody trusts."""

    def __init__(self, directory: Path) -> None:
        self.ca = CertAuthority(directory / "ca")
        self.other_ca = CertAuthority(directory / "other", "untrusted CA")
        self.server = self.ca.issue("broker", hosts=("127.0.0.1", "localhost"))
        self.expired = self.ca.issue("broker-expired", hosts=("127.0.0.1",), expired=True)
        self.wrong_host = self.ca.issue("broker-elsewhere", hosts=("broker.example.net",))
        self.observer = self.ca.issue("observer", client=True)

    def observer_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.ca_file))
        context.load_cert_chain(str(self.observer.cert), str(self.observer.key))
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def sim_port() -> AsyncIterator[int]:
    async with SimModbusServer({1: "energy-meter"}, tick=0.05, seed=12) as sim:
        yield await sim.serve_tcp()


@dataclass(frozen=True)
class Cell:
    """Where a test's cell lives: its simulated device, its name, its directory."""

    sim_port: int
    name: str
    dir: Path


@pytest.fixture
def cell(sim_port: int, unique: str, tmp_path: Path) -> Cell:
    return Cell(sim_port, unique, tmp_path)


@pytest.fixture
def tls_broker(pki: Pki) -> Iterator[Mosquitto]:
    with Mosquitto(tls=BrokerTls(pki.ca.ca_file, pki.server.cert, pki.server.key)) as b:
        yield b


def tls_config(
    cell: Cell,
    port: int,
    *,
    protocol: str = "3.1.1",
    ca_file: Path,
    client: CertFiles | None = None,
) -> Path:
    tls: dict[str, Any] = {"ca_file": str(ca_file)}
    if client is not None:
        tls |= {"cert_file": str(client.cert), "key_file": str(client.key)}
    backbone = {
        "host": "127.0.0.1",
        "port": port,
        "reconnect_min": 0.2,
        "reconnect_max": 1,
        "protocol": protocol,
        "tls": tls,
    }
    devices = [modbus_device("m", "sim-energy-meter", cell.sim_port, 1)]
    return write_config(cell.dir, port, devices, cell=cell.name, backbone=backbone)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_tls_with_the_right_ca_connects_and_publishes(
    pki: Pki, tls_broker: Mosquitto, cell: Cell, protocol: str
) -> None:
    config = tls_config(cell, tls_broker.port, protocol=protocol, ca_file=pki.ca.ca_file)
    collector = Collector(tls_broker.port, f"{root_topic(cell.name)}/#", tls=pki.observer_context())
    try:
        async with running_daemon(config) as daemon:
            await collector.until(lambda _m: collector.on("/m/data"), what="data over TLS")
            assert daemon.session.is_connected
            assert daemon.session.last_error is None
    finally:
        collector.close()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong_ca", "tls: the broker's certificate is not signed by a CA in '{ca}'"),
        ("expired", "tls: the broker's certificate has expired"),
        ("wrong_host", "tls: the broker's certificate is not valid for backbone.host '127.0.0.1'"),
    ],
)
async def test_refused_broker_certificate_names_the_cause(
    pki: Pki,
    cell: Cell,
    capsys: pytest.CaptureFixture[str],
    case: str,
    expected: str,
) -> None:
    server = {"wrong_ca": pki.server, "expired": pki.expired, "wrong_host": pki.wrong_host}[case]
    ca_file = pki.other_ca.ca_file if case == "wrong_ca" else pki.ca.ca_file
    with Mosquitto(tls=BrokerTls(pki.ca.ca_file, server.cert, server.key)) as broker:
        config = tls_config(cell, broker.port, ca_file=ca_file)
        async with running_daemon(config) as daemon:
            error = await async_wait_until(lambda: daemon.session.last_error, what="a failed connect")
            assert error.startswith(expected.format(ca=ca_file)), error
            assert "verify code" in error
            assert not daemon.session.is_connected
            assert daemon.cell.runner("m") is not None  # the devices go on polling into the outbox
    out = capsys.readouterr().out
    assert "mqtt_connect_failed" in out
    assert expected.format(ca=ca_file) in out


async def test_missing_ca_file_is_a_config_error(
    cell: Cell, tls_broker: Mosquitto
) -> None:
    missing = cell.dir / "no-such-ca.pem"
    config = tls_config(cell, tls_broker.port, ca_file=missing)
    with pytest.raises(ConfigError) as info:
        Daemon(load_cell(config))
    assert info.value.problems == [
        f"backbone.tls.ca_file: cannot read {str(missing)!r}: No such file or directory"
    ]


def acl_for(cell: str) -> str:
    """The cell `cell-1` may write only below its own UNS root; the observer reads all."""
    return f"user observer\ntopic read #\n\nuser cell-1\ntopic readwrite {root_topic(cell)}/#\n"


@pytest.fixture
def mtls_broker(pki: Pki, unique: str) -> Iterator[Mosquitto]:
    tls = BrokerTls(pki.ca.ca_file, pki.server.cert, pki.server.key, require_certificate=True)
    with Mosquitto(tls=tls, acl=acl_for(unique)) as b:
        yield b


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_client_certificate_authenticates_and_the_acl_keeps_the_cell_in_its_subtree(
    pki: Pki, mtls_broker: Mosquitto, cell: Cell, protocol: str
) -> None:
    client = pki.ca.issue("cell-1", client=True)
    config = tls_config(
        cell, mtls_broker.port, protocol=protocol, ca_file=pki.ca.ca_file, client=client
    )
    outside = f"uns/v1/test/lab/a1/l1/{cell.name}-other/m/data"
    collector = Collector(mtls_broker.port, "uns/v1/test/#", tls=pki.observer_context())
    try:
        async with running_daemon(config) as daemon:
            await collector.until(lambda _m: collector.on("/m/data"), what="data with a client certificate")
            # the cell's own credentials publishing outside its subtree: the broker drops it
            daemon.session.publish(outside, b'{"intruder": true}', 1)
            daemon.session.publish(f"{root_topic(cell.name)}/marker", b"{}", 1)
            await collector.until(lambda _m: collector.on("/marker"), what="the marker inside the subtree")
            assert [m.topic for m in collector.messages if m.topic == outside] == []
            # the daemon keeps running and publishing on the same connection
            count = len(collector.on("/m/data"))
            await collector.until(lambda _m: len(collector.on("/m/data")) > count + 2, what="more data")
            assert daemon.session.is_connected
            assert daemon.session.connects == 1
    finally:
        collector.close()


@pytest.mark.parametrize("case", ["no_certificate", "untrusted_certificate"])
async def test_mtls_refuses_a_cell_without_a_trusted_certificate(
    pki: Pki, mtls_broker: Mosquitto, cell: Cell, case: str
) -> None:
    client = pki.other_ca.issue("cell-1", client=True) if case == "untrusted_certificate" else None
    config = tls_config(cell, mtls_broker.port, ca_file=pki.ca.ca_file, client=client)
    async with running_daemon(config) as daemon:
        error = await async_wait_until(lambda: daemon.session.last_error, what="a refused connection")
        assert error.startswith("the broker closed the connection before accepting it: "), error
        assert "alert" in error  # the broker's TLS alert, e.g. "certificate required" / "unknown ca"
        assert not daemon.session.is_connected
