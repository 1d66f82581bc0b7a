"""A small fleet (issue 14 item 4, at test size): 10 real `cellctl run` daemons, each a cell
of its own with a cell broker bridged to one site broker, sharing a simulated Modbus
server. A site consumer checks completeness per cell (every data seq arrives, in spite of
the site broker being stopped for a while: the cell brokers queue) and that every
message validates against the contract. bench/fleet.py runs the same at larger sizes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.testing import Collector
from cellctl.testing.contract import check_messages
from cellctl.testing.fleet import Fleet, completeness
from cellctl.testing.rabbitmq import find_rabbitmq

pytestmark = pytest.mark.timeout(180)

CELLS = 10


@pytest.fixture
async def modbus_port() -> AsyncIterator[int]:
    async with SimModbusServer({1: "energy-meter"}, tick=0.1, seed=3) as sim:
        yield await sim.serve_tcp()


def data_from_every_cell(c: Collector, fleet: Fleet, at_least: int) -> bool:
    return all(len(c.on(f"{cell.root}/meter-1/data")) >= at_least for cell in fleet.members)


async def test_ten_bridged_cells_deliver_every_sample_to_the_site_through_a_site_outage(
    modbus_port: int, tmp_path: Path
) -> None:
    fleet = Fleet(tmp_path, CELLS, "bridged", modbus_port, poll_interval=0.2)
    await asyncio.to_thread(fleet.start)
    site = None
    codes: list[int | None] = []
    during_outage: set[int] = set()
    try:
        site = Collector(fleet.site.port, "uns/v1/#", client_id="fleet-site-consumer", clean_session=False)
        await site.until(
            lambda _m: data_from_every_cell(site, fleet, 5),
            timeout=90,
            what="data from every cell at the site",
        )
        # the site broker goes away; the cells keep publishing into their own brokers
        await asyncio.to_thread(fleet.site.stop)
        watch = Collector(fleet.members[0].broker.port, f"{fleet.members[0].root}/meter-1/data")  # type: ignore[union-attr]
        try:
            await watch.until(lambda m: len(m) >= 10, timeout=30, what="cell 0 publishing during the outage")
        finally:
            watch.close()
        during_outage = {m.json()["seq"] for m in watch.messages}
        await asyncio.to_thread(fleet.site.start)
        marks = {cell.root: len(site.on(f"{cell.root}/meter-1/data")) for cell in fleet.members}
        await site.until(
            lambda _m: all(len(site.on(f"{r}/meter-1/data")) >= n + 15 for r, n in marks.items()),
            timeout=90,
            what="every cell's data flowing to the site again",
        )
    finally:
        codes = await asyncio.to_thread(fleet.stop)
        if site is not None:
            site.close()
    assert site is not None
    assert codes == [0] * CELLS, "every daemon stopped cleanly on SIGTERM"
    first = fleet.members[0].root
    at_site = {m.json()["seq"] for m in site.on(f"{first}/meter-1/data")}
    assert during_outage <= at_site, f"taken during the site outage, never arrived: {during_outage - at_site}"
    for cell in fleet.members:
        done = completeness(site.messages, cell.root)
        assert done.missing.get("meter-1") == [], (cell.name, done.missing.get("meter-1", "no data")[:20])
        assert done.received["meter-1"] >= 20, cell.name
        report = check_messages(site.messages, cell.root)
        report.assert_valid()
        assert report.seen["manifest"] >= 1, cell.name


@pytest.mark.skipif(find_rabbitmq() is None, reason="rabbitmq-server with rabbitmq_mqtt is not installed")
@pytest.mark.timeout(300)
async def test_cells_fail_over_between_the_nodes_of_a_rabbitmq_cluster_without_losing_a_sample(
    modbus_port: int, tmp_path: Path
) -> None:
    """Three cells on a three-node RabbitMQ cluster (`backbone.hosts`), each starting at a
    different node; the first node stops: its cell moves on, and the site consumer (on
    the third node) gets every sample of every cell."""
    fleet = Fleet(tmp_path, 3, "cluster", modbus_port, poll_interval=0.2)
    await asyncio.to_thread(fleet.start)
    site = None
    try:
        assert fleet.cluster is not None
        site = Collector(fleet.site_port, "uns/v1/#", client_id="fleet-cluster-consumer", clean_session=False)
        await site.until(
            lambda _m: data_from_every_cell(site, fleet, 5), timeout=90, what="data from every cell"
        )
        await asyncio.to_thread(fleet.cluster.stop_node, fleet.cluster.nodes[0])
        marks = {cell.root: len(site.on(f"{cell.root}/meter-1/data")) for cell in fleet.members}
        await site.until(
            lambda _m: all(len(site.on(f"{r}/meter-1/data")) >= n + 15 for r, n in marks.items()),
            timeout=60,
            what="every cell's data flowing with the first node stopped",
        )
    finally:
        codes = await asyncio.to_thread(fleet.stop)
        if site is not None:
            site.close()
    assert site is not None
    assert codes == [0] * 3
    moved = fleet.members[0].log.read_text(errors="replace")
    assert '"reconnect": true' in moved, "the first node's cell connected again, to another node"
    for cell in fleet.members:
        done = completeness(site.messages, cell.root)
        assert done.missing.get("meter-1") == [], (cell.name, done.missing.get("meter-1", "no data")[:20])
        check_messages(site.messages, cell.root).assert_valid()
