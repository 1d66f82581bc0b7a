"""Broker outage with persistent subscribers (issue 16 item 9): three devices on their own
ports, both formats. The broker (the test's own, persistent so the subscribers' sessions
survive) is stopped for a few seconds and started again. The promise, per device: not one
data message lost, order kept, what was taken during the outage flagged historical,
duplicates only from at-least-once redelivery; through Sparkplug, the node's seq is
continuous and in order across the outage (`check_node`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.deliver.mqtt import MAX_INFLIGHT
from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, Message, modbus_device, root_topic, running_daemon, write_config
from cellctl.testing.sparkplug import Capture, SpMessage, check_node

from .streams import streams

pytestmark = pytest.mark.timeout(90)
DEVICES = ("m1", "m2", "m3")


@pytest.fixture
def persistent_broker() -> Iterator[Mosquitto]:
    """The test's own broker; persistence keeps the subscribers' sessions across its restart."""
    with Mosquitto(persistence=True) as b:
        yield b


@pytest.fixture
async def meters() -> AsyncIterator[list[int]]:
    """One simulated meter per device, each on its own port (values change every poll)."""
    async with contextlib.AsyncExitStack() as stack:
        ports = []
        for seed in range(len(DEVICES)):
            sim = await stack.enter_async_context(SimModbusServer({1: "energy-meter"}, tick=0.01, seed=seed))
            ports.append(await sim.serve_tcp())
        yield ports


def replayed(msgs: list[SpMessage]) -> bool:
    """The node was born again after the restart, sent its history and is live again."""
    births = [i for i, m in enumerate(msgs) if m.kind == "NBIRTH"]
    if len(births) < 2:
        return False
    after = [m for m in msgs[births[-1] :] if m.kind == "DDATA"]
    flags = [m.decode().metrics[0].is_historical for m in after]
    return sum(flags) >= 20 and any(not f for f in flags[-3:])


async def test_outage_loses_nothing_keeps_order_and_flags_history_in_both_formats(
    persistent_broker: Mosquitto, meters: list[int], unique: str, tmp_path: Path
) -> None:
    broker = persistent_broker
    group, edge = "test-lab-a1", f"l1-{unique}"
    config = write_config(
        tmp_path,
        broker.port,
        [modbus_device(d, "sim-energy-meter", p, 1) for d, p in zip(DEVICES, meters, strict=True)],
        cell=unique,
        publish={"formats": ["uns", "sparkplug"]},
    )
    uns = Collector(
        broker.port, f"{root_topic(unique)}/+/data", client_id=f"o-{unique}"[:23], clean_session=False
    )
    spb = Capture(broker.port, f"spBv1.0/{group}/#", client_id=f"os-{unique}"[:23])
    try:
        async with running_daemon(config) as daemon:
            await uns.until(
                lambda m: (
                    len(s := streams(m)) == len(DEVICES) and all(len(x.bodies) >= 5 for x in s.values())
                ),
                what="every device publishing",
            )
            await asyncio.to_thread(broker.stop)
            stopped_ms = int(time.time() * 1000)
            async with asyncio.timeout(30):  # an outage of a few seconds, in samples taken meanwhile
                while (await daemon.writer.call(len)) < 300:
                    await asyncio.sleep(0.05)
            restart_ms = int(time.time() * 1000)
            await asyncio.to_thread(broker.start)
            # every device complete up to live data taken well after the restart
            marks: dict[str, int] = {}

            def caught_up(msgs: list[Message]) -> bool:
                s = streams(msgs)
                for d, st in s.items():
                    marks.setdefault(d, st.live_highest())
                return len(s) == len(DEVICES) and all(
                    not st.lost() and st.live_highest() > marks[d] + 10 for d, st in s.items()
                )

            await uns.until(caught_up, timeout=40, what="every seq of every device, through the outage")
            await spb.until(replayed, timeout=30, what="a new NBIRTH, the history, then live DDATA")
    finally:
        uns.close()
        spb.close()
    got = streams(uns.messages)
    for dev in DEVICES:
        st = got[dev]
        assert st.lost() == [], dev
        assert st.reordered() == 0, dev
        assert st.duplicates <= MAX_INFLIGHT, (dev, st.duplicates)
        during = [b for b in st.bodies if stopped_ms < b["ts"] < restart_ms]
        assert len(during) >= 20, f"{dev}: samples were taken during the outage"
        assert all(b.get("historical") for b in during), f"{dev}: outage samples are flagged historical"
        assert all(not b.get("historical") for b in st.bodies if b["ts"] > restart_ms + 5000), dev
    # Sparkplug: seq continuous and in order through the outage (nothing lost), history flagged
    report = check_node(spb.snapshot(), group, edge)
    assert report.historical >= 20
    ddata = [m for m in spb.snapshot() if m.kind == "DDATA"]
    for dev in DEVICES:
        stamps = [
            m.decode().metrics[0].timestamp
            for m in ddata
            if m.device == dev and m.decode().metrics[0].is_historical
        ]
        assert stamps, f"{dev}: historical DDATA"
        assert stamps == sorted(stamps), f"{dev}: history in order"
