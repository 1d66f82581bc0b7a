"""Backbone failover (`backbone.hosts`, issue 14 item 4c): two real mosquitto brokers stand
for two nodes of a clustered broker. Stopping the node the daemon is connected to sends it
to the next within a bound, and the outbox replays what the stopped node never
acknowledged: every sample of the run arrives at one node or the other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, modbus_device, root_topic, running_daemon, write_config
from cellctl.testing.fleet import completeness
from cellctl.testing.waiting import async_wait_until

pytestmark = pytest.mark.timeout(90)

FAILOVER_BOUND_S = 10.0  # generous on a loaded 2-core machine; typically about 1 s


@pytest.fixture
def nodes() -> Iterator[tuple[Mosquitto, Mosquitto]]:
    """Two brokers that keep their sessions across a restart (so the test's collector on
    the stopped node gets what that node had acknowledged but not yet delivered)."""
    with Mosquitto(persistence=True) as a, Mosquitto(persistence=True) as b:
        yield a, b


@pytest.fixture
async def sim_port() -> AsyncIterator[int]:
    async with SimModbusServer({1: "energy-meter"}, tick=0.05, seed=7) as sim:
        yield await sim.serve_tcp()


def failover_config(tmp_path: Path, a: Mosquitto, b: Mosquitto, sim_port: int, cell: str) -> Path:
    config = write_config(
        tmp_path, a.port, [modbus_device("m", "sim-energy-meter", sim_port, 1, poll_interval=0.05)], cell=cell
    )
    body = yaml.safe_load(config.read_text(encoding="utf-8"))
    backbone = {k: v for k, v in body["backbone"].items() if k not in ("host", "port")}
    body["backbone"] = {**backbone, "hosts": [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]}
    config.write_text(yaml.safe_dump(body), encoding="utf-8")
    return config


async def test_stopping_the_node_in_use_moves_the_daemon_to_the_next_and_loses_no_sample(
    nodes: tuple[Mosquitto, Mosquitto], sim_port: int, unique: str, tmp_path: Path
) -> None:
    a, b = nodes
    root = root_topic(unique)
    config = failover_config(tmp_path, a, b, sim_port, unique)
    on_a = Collector(a.port, f"{root}/#", client_id=f"a-{unique}"[:23], clean_session=False)
    on_b = Collector(b.port, f"{root}/#", client_id=f"b-{unique}"[:23], clean_session=False)
    try:
        async with running_daemon(config) as daemon:
            session = daemon.uns.session
            await on_a.until(lambda _m: len(on_a.on("/m/data")) >= 10, what="data on the first node")
            assert session.node == ("127.0.0.1", a.port)
            stopped = time.monotonic()
            await asyncio.to_thread(a.stop)
            await on_b.until(
                lambda _m: on_b.on("/m/data"), timeout=FAILOVER_BOUND_S + 5, what="data on node b"
            )
            failover = time.monotonic() - stopped
            assert session.node == ("127.0.0.1", b.port)
            live = len(on_b.on("/m/data"))
            await on_b.until(lambda _m: len(on_b.on("/m/data")) >= live + 10, what="data flowing on node b")
            await async_wait_until(lambda: session.is_connected, what="connected to b")
        # node a back: what it had acknowledged for its subscriber arrives now
        await asyncio.to_thread(a.start)
        await on_a.until(lambda _m: on_a.client.is_connected(), what="the collector back on node a")
        await on_b.until(
            lambda _m: any(m.json().get("status") == "offline" for m in on_b.on(f"{root}/status")),
            what="the clean stop on node b",
        )
        seen_on_a = len(on_a.on("/m/data"))

        def complete() -> bool:
            got = completeness(on_a.messages + on_b.messages, root)
            return not got.missing.get("m", [0])

        await async_wait_until(complete, timeout=15, what="every seq at one node or the other")
    finally:
        on_a.close()
        on_b.close()
    assert failover < FAILOVER_BOUND_S, f"failover took {failover:.1f} s"
    got = completeness(on_a.messages + on_b.messages, root)
    assert got.missing == {"m": []}
    assert got.received["m"] >= seen_on_a + 10
    replayed = [m for m in on_b.on("/m/data") if m.json().get("historical")]
    print(f"failover {failover:.2f} s, {got.received['m']} data messages, {len(replayed)} replayed on b")


async def test_a_node_down_at_start_is_skipped(
    nodes: tuple[Mosquitto, Mosquitto], sim_port: int, unique: str, tmp_path: Path
) -> None:
    a, b = nodes
    await asyncio.to_thread(a.stop)  # the first node of the list is down from the start
    root = root_topic(unique)
    on_b = Collector(b.port, f"{root}/#")
    try:
        async with running_daemon(failover_config(tmp_path, a, b, sim_port, unique)) as daemon:
            await on_b.until(lambda _m: on_b.on("/m/data"), what="data on the second node")
            assert daemon.uns.session.node == ("127.0.0.1", b.port)
            assert daemon.uns.session.connects == 1
    finally:
        on_b.close()


def test_backbone_hosts_name_the_first_node_as_host_and_port(tmp_path: Path) -> None:
    from cellctl.config.cell import Backbone

    bb = Backbone.model_validate({"hosts": ["broker-a:1883", "[fd00::2]:8883"]})
    assert (bb.host, bb.port) == ("broker-a", 1883)
    assert bb.nodes == (("broker-a", 1883), ("fd00::2", 8883))
    assert Backbone.model_validate({"host": "broker", "port": 1884}).nodes == (("broker", 1884),)
