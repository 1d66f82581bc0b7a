"""Primary host application mode: births only after a valid STATE online; on a newer
offline the node sends NDEATH, reconnects and stores its data until the host is back;
stale STATE messages are ignored; what was stored meanwhile follows the new births as
historical DATA."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import modbus_device, running_daemon, write_config
from cellctl.testing.sparkplug import Capture, SpMessage, bd_seq, check_node

pytestmark = pytest.mark.timeout(60)


def state(online: bool, ts: int) -> bytes:
    return orjson.dumps({"online": online, "timestamp": ts})


def kinds(msgs: list[SpMessage], kind: str) -> list[SpMessage]:
    return [m for m in msgs if m.kind == kind]


async def stored(daemon: Any, n: int) -> None:
    """Until the outbox holds `n` Sparkplug messages (samples taken while not live)."""
    async with asyncio.timeout(20):
        while len(await daemon.writer.call(lambda ob: ob.pending(n, fmt="sparkplug"))) < n:
            await asyncio.sleep(0.05)


async def test_births_wait_for_the_primary_host_and_data_waits_while_it_is_offline(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    group, edge, host = "test-lab-a1", f"l1-{unique}", f"scada-{unique}"
    state_topic = f"spBv1.0/STATE/{host}"
    cap = Capture(broker.port, f"spBv1.0/{group}/#")
    try:
        async with SimModbusServer({1: "energy-meter"}, tick=0.01, seed=12) as sim:
            port = await sim.serve_tcp()
            config = write_config(
                tmp_path,
                broker.port,
                [modbus_device("m", "sim-energy-meter", port, 1, poll_interval=0.02)],
                cell=unique,
                publish={"formats": ["sparkplug"]},
                sparkplug={"primary_host": host},
            )
            async with running_daemon(config) as daemon:
                # no host yet: samples are stored, nothing is born
                await stored(daemon, 20)
                assert not cap.snapshot()
                cap.publish(state_topic, state(True, 1000), retain=True)
                await cap.until(lambda m: kinds(m, "NBIRTH"), what="NBIRTH after STATE online")
                await cap.until(
                    lambda m: any(x.decode().metrics[0].is_historical for x in kinds(m, "DDATA")),
                    what="what was stored before, as history",
                )
                first_bd = bd_seq(kinds(cap.snapshot(), "NBIRTH")[0].decode())
                # the host goes away: NDEATH, a new connection, data waits in the outbox
                cap.publish(state_topic, state(False, 2000), retain=True)
                await cap.until(lambda m: kinds(m, "NDEATH"), what="NDEATH after STATE offline")
                await stored(daemon, 20)
                cap.publish(state_topic, state(True, 1500), retain=True)  # stale: ignored
                await stored(daemon, 40)
                assert len(kinds(cap.snapshot(), "NBIRTH")) == 1
                cap.publish(state_topic, state(True, 3000), retain=True)
                await cap.until(lambda m: len(kinds(m, "NBIRTH")) == 2, what="births when the host is back")
                n_before = len(cap.snapshot())
                await cap.until(
                    lambda m: (
                        sum(
                            1
                            for x in m[n_before:]
                            if x.kind == "DDATA" and not x.decode().metrics[0].is_historical
                        )
                        > 5
                    ),
                    what="live data again",
                )
        cap.publish(state_topic, b"", retain=True)  # clear the retained STATE
    finally:
        cap.close()
    msgs = cap.snapshot()
    report = check_node(msgs, group, edge)
    assert report.births[0] == first_bd
    assert report.deaths[0] == first_bd
    assert report.births[1] != first_bd  # a new connection
    # nothing live between the NDEATH and the next NBIRTH
    i_death = msgs.index(kinds(msgs, "NDEATH")[0])
    i_birth = msgs.index(kinds(msgs, "NBIRTH")[1])
    assert not [m for m in msgs[i_death:i_birth] if m.kind != "NDEATH"]
    # what was taken while the host was away follows the births, as history
    after = [m for m in msgs[i_birth:] if m.kind == "DDATA" and m.decode().metrics[0].is_historical]
    assert len(after) >= 40
