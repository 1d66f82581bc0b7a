"""The cell as a Sparkplug B edge node against a real mosquitto, validated from a capture
of the broker traffic decoded with the generated protobuf classes (cellctl/testing/
sparkplug.py), not with cellctl's codec: topics, QoS, retain flags, seq continuity and
wrap, bdSeq in NBIRTH/NDEATH and across restarts, aliases, rebirth, DDEATH/DBIRTH,
historical replay after an outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, modbus_device, root_topic, running_daemon, write_config
from cellctl.testing.sparkplug import Capture, SpMessage, bd_seq, check_node, rebirth_command

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def persistent_broker() -> Iterator[Mosquitto]:
    with Mosquitto(persistence=True) as b:
        yield b


def ids(unique: str) -> tuple[str, str]:
    """The group and edge node ids derived from cellctl.testing.write_config's identity."""
    return "test-lab-a1", f"l1-{unique}"


def of(kind: str, msgs: list[SpMessage]) -> list[SpMessage]:
    return [m for m in msgs if m.kind == kind]


def nbirths(msgs: list[SpMessage]) -> list[int]:
    return [bd_seq(m.decode()) for m in of("NBIRTH", msgs)]


async def test_edge_node_session_checklist_from_a_capture(
    persistent_broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    broker = persistent_broker
    group, edge = ids(unique)
    cap = Capture(broker.port, f"spBv1.0/{group}/#", client_id=f"cap-{unique}"[:23])
    uns = Collector(broker.port, f"{root_topic(unique)}/+/data")
    try:
        async with SimModbusServer({1: "energy-meter", 2: "energy-meter"}, tick=0.005, seed=11) as sim:
            port = await sim.serve_tcp()
            devices = [
                modbus_device("m1", "sim-energy-meter", port, 1, poll_interval=0.01, timeout=0.3),
                modbus_device("m2", "sim-energy-meter", port, 2, poll_interval=0.01, timeout=0.3),
            ]
            config = write_config(
                tmp_path, broker.port, devices, cell=unique, publish={"formats": ["uns", "sparkplug"]}
            )
            async with running_daemon(config) as daemon:
                assert daemon.node is not None
                # live DDATA long enough for seq to wrap
                await cap.until(lambda m: len(of("DDATA", m)) > 300, what="300 DDATA")
                # the same samples as UNS JSON, from one stream
                await uns.until(lambda m: len(m) > 50, what="UNS data beside Sparkplug")

                # rebirth on NCMD: same bdSeq, seq from 0 again
                cap.publish(f"spBv1.0/{group}/NCMD/{edge}", rebirth_command(int(time.time() * 1000)))
                await cap.until(lambda m: len(of("NBIRTH", m)) == 2, what="a second NBIRTH after NCMD")
                first_bd = nbirths(cap.snapshot())[0]
                assert nbirths(cap.snapshot()) == [first_bd, first_bd]

                # a device that goes away gets a DDEATH, and a DBIRTH when it is back
                sim.stop_answering(unit=1)
                await cap.until(lambda m: [x for x in of("DDEATH", m) if x.device == "m1"], what="DDEATH m1")
                sim.resume(unit=1)
                await cap.until(
                    lambda m: len([x for x in of("DBIRTH", m) if x.device == "m1"]) >= 3, what="DBIRTH m1"
                )

                # an outage: the samples taken meanwhile come back as historical DATA after the births
                await asyncio.to_thread(broker.stop)
                async with asyncio.timeout(20):  # both formats' samples: about half are Sparkplug
                    while (await daemon.writer.call(len)) < 500:
                        await asyncio.sleep(0.05)
                await asyncio.to_thread(broker.start)
                await cap.until(
                    lambda m: len(of("NBIRTH", m)) == 3, timeout=20, what="births after the outage"
                )
                await cap.until(
                    lambda m: sum(1 for x in of("DDATA", m) if x.decode().metrics[0].is_historical) >= 200,
                    timeout=20,
                    what="the outage's DDATA, historical",
                )
            # clean stop: NDEATH with the session's bdSeq
            last_bd = nbirths(cap.snapshot())[-1]
            await cap.until(
                lambda m: [x for x in of("NDEATH", m) if bd_seq(x.decode()) == last_bd],
                what="NDEATH on a clean stop",
            )
            # a restart of the daemon: the next bdSeq, from the state directory
            async with running_daemon(config):
                await cap.until(lambda m: len(of("NBIRTH", m)) == 4, what="NBIRTH after a restart")
            await cap.until(
                lambda m: [x for x in of("NDEATH", m) if bd_seq(x.decode()) == (last_bd + 1) % 256],
                what="the restarted daemon's NDEATH",
            )
    finally:
        cap.close()
        uns.close()

    msgs = cap.snapshot()
    report = check_node(msgs, group, edge)
    births = report.births
    assert len(births) == 4
    assert births[2] != births[1], "a new connection after the outage uses a new bdSeq"
    # the Will of the connection the outage broke (the broker sends it when it comes back,
    # possibly twice to a persistent subscriber), then the clean stops' NDEATH
    assert set(report.deaths[:-2]) <= {births[1]}
    assert report.deaths[-2:] == [births[2], births[3]]
    assert births[3] == (births[2] + 1) % 256, "bdSeq persisted across the restart, +1"
    assert report.wraps >= 1
    assert report.historical >= 200
    assert report.historical_qos == {0}  # the specification's QoS, the default
    assert report.ddeaths.count("m1") >= 1
    # aliases: unique per (device, metric), the same in every birth, incl. after the restart
    assert len(report.aliases) == len(set(report.aliases.values()))
    # every metric of a device is birthed: points and machine state
    first_dbirth = next(m.decode() for m in of("DBIRTH", msgs) if m.device == "m1")
    names = {x.name for x in first_dbirth.metrics}
    assert "voltage_l1" in names
    assert not [n for n in names if n.startswith("Machine/")], "an energy meter has no machine state"
    # historical DATA arrives in the order the samples were taken, per device
    for dev in ("m1", "m2"):
        stamps = [
            x.decode().timestamp
            for x in of("DDATA", msgs)
            if x.device == dev and x.decode().metrics[0].is_historical
        ]
        assert stamps == sorted(stamps), dev
