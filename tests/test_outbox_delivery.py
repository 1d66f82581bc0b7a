"""The outbox in the data path, against a real mosquitto that the test stops and starts:
nothing taken during an outage is lost, it arrives after reconnecting in order per
device and marked historical, duplicates are counted and bounded, and when the outbox's
bound is hit the drop is counted and announced."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.deliver.mqtt import MAX_INFLIGHT
from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, Message, modbus_device, root_topic, running_daemon, write_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def persistent_broker() -> Iterator[Mosquitto]:
    """A broker of the test's own that keeps sessions across a restart, so a subscriber
    misses nothing while both reconnect."""
    with Mosquitto(persistence=True) as b:
        yield b


def by_device(msgs: list[Message]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for m in msgs:
        if m.topic.endswith("/data"):
            out.setdefault(m.topic.split("/")[-2], []).append(m.json())
    return out


def complete(bodies: list[dict[str, Any]]) -> bool:
    """Every seq from 1 to the highest seen has arrived (at least once)."""
    seqs = {b["seq"] for b in bodies}
    return bool(seqs) and seqs == set(range(1, max(seqs) + 1))


async def test_outage_every_sample_arrives_after_reconnecting_in_order_and_historical(
    persistent_broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    broker = persistent_broker
    async with SimModbusServer({1: "energy-meter", 2: "energy-meter"}, tick=0.005, seed=8) as sim:
        port = await sim.serve_tcp()
        devices = [
            modbus_device("m1", "sim-energy-meter", port, 1, poll_interval=0.02),
            modbus_device("m2", "sim-energy-meter", port, 2, poll_interval=0.02),
        ]
        config = write_config(tmp_path, broker.port, devices, cell=unique)
        c = Collector(
            broker.port, f"{root_topic(unique)}/+/data", client_id=f"c-{unique}"[:23], clean_session=False
        )
        try:
            async with running_daemon(config) as daemon:
                await c.until(
                    lambda m: all(len(v) >= 5 for v in by_device(m).values()) and len(by_device(m)) == 2,
                    what="both devices publishing",
                )
                await asyncio.to_thread(broker.stop)
                before = daemon.uns.replay_published if daemon.uns else 0
                # an outage of several seconds, measured in samples the daemon took meanwhile
                await wait_for_backlog(daemon, 150)
                await asyncio.to_thread(broker.start)
                live_after: dict[str, int] = {}

                def done(msgs: list[Message]) -> bool:
                    got = by_device(msgs)
                    for dev, bodies in got.items():
                        live = [b["seq"] for b in bodies if not b.get("historical")]
                        live_after.setdefault(dev, max(live))
                    # complete up to a live message sent after the restart
                    return len(got) == 2 and all(
                        complete(b)
                        and max(x["seq"] for x in b if not x.get("historical")) > live_after[d] + 5
                        for d, b in got.items()
                    )

                await c.until(done, timeout=30, what="every seq of both devices, through the outage")
                assert daemon.uns is not None
                assert daemon.uns.replay_published > before
        finally:
            c.close()
    # the broker's own redeliveries to the collector after its restart (MQTT DUP: it had
    # sent them before it stopped, unacknowledged) are at-least-once between broker and
    # subscriber, not an order the daemon published in
    first_deliveries = by_device([m for m in c.messages if not m.dup])
    for dev, bodies in by_device(c.messages).items():
        historical = [b for b in bodies if b.get("historical")]
        assert len(historical) >= 50, f"{dev}: the outage's samples came back as history"
        # in order per device: the history, and the live data, each by seq
        hist_seqs = [b["seq"] for b in first_deliveries[dev] if b.get("historical")]
        live_seqs = [b["seq"] for b in first_deliveries[dev] if not b.get("historical")]
        assert hist_seqs == sorted(hist_seqs), dev
        assert live_seqs == sorted(live_seqs), dev
        # at-least-once: duplicates are possible only for what was in flight, and counted
        dups = sum(n - 1 for n in Counter(b["seq"] for b in bodies).values() if n > 1)
        assert dups <= MAX_INFLIGHT, (dev, dups)
        assert all(b["ts"] for b in historical)


async def wait_for_backlog(daemon: Any, n: int, timeout: float = 20.0) -> None:
    """Until the outbox holds at least `n` messages (the outage is long enough)."""
    async with asyncio.timeout(timeout):
        while (await daemon.writer.call(len)) < n:
            await asyncio.sleep(0.05)


async def test_outbox_bound_hit_drops_are_counted_logged_and_announced(
    persistent_broker: Mosquitto, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = persistent_broker
    root = root_topic(unique)
    async with SimModbusServer({1: "energy-meter"}, tick=0.005, seed=9) as sim:
        port = await sim.serve_tcp()
        config = write_config(
            tmp_path,
            broker.port,
            [modbus_device("m", "sim-energy-meter", port, 1, poll_interval=0.02)],
            cell=unique,
            outbox={"fsync": "off", "max_bytes": "8KiB"},
        )
        c = Collector(broker.port, f"{root}/#", client_id=f"b-{unique}"[:23], clean_session=False)
        try:
            async with running_daemon(config) as daemon:
                await c.until(lambda _m: c.on("/m/data"), what="data flowing")
                await asyncio.to_thread(broker.stop)
                async with asyncio.timeout(20):
                    while (await daemon.writer.call(lambda ob: ob.stats())).dropped_total < 30:
                        await asyncio.sleep(0.05)
                stats = await daemon.writer.call(lambda ob: ob.stats())
                assert stats.bytes <= stats.max_bytes  # the bound holds
                await asyncio.to_thread(broker.start)
                events = await c.until(
                    lambda _m: [m.json() for m in c.on(f"{root}/events")], timeout=20, what="a drop event"
                )
                figures = await c.until(
                    lambda _m: (f := c.latest(f"{root}/outbox")) and f["dropped_total"] >= 30 and f,
                    timeout=20,
                    what="outbox figures with the drops",
                )
                # live data after the reconnect, so every surviving stored message was replayed
                mark = len(c.on("/m/data"))
                await c.until(lambda _m: len(c.on("/m/data")) > mark + 20, timeout=20, what="data again")
                reported = (await daemon.writer.call(lambda ob: ob.stats())).dropped_total
        finally:
            c.close()
    drop = events[0]
    assert drop["event"] == "outbox_dropped"
    assert drop["reason"] in ("max_bytes", "superseded")
    assert drop["count"] > 0
    assert set(drop["devices"]) == {"m"}
    assert drop["from_ts"] <= drop["to_ts"]
    assert figures["max_bytes"] == 8192
    assert figures["dropped"].get("max_bytes", 0) > 0
    assert sum(e["count"] for e in events) <= reported
    # what is missing from the data stream is exactly what was dropped, never more
    seqs = {m.json()["seq"] for m in c.on("/m/data")}
    missing = set(range(1, max(seqs) + 1)) - seqs
    assert 0 < len(missing) <= reported
    assert "outbox_dropped" in capsys.readouterr().out
