"""Hostile commands against the running daemon: random bytes, wrong JSON, wrong types,
NaN and infinities, unknown devices and points, out-of-range values, truncated and
mistyped Sparkplug payloads, a 1 MB payload, mixed with valid allowed writes. The
promise: the daemon stays alive, every UNS command is audited exactly once (every DCMD
at least once), and the only writes reaching the simulated PLC are the valid allowed
ones, value for value.

The daemon and the PLC run in a thread with their own event loop, so hypothesis drives
the publishing side synchronously. CELLCTL_FUZZ_EXAMPLES sets the number of generated
messages per channel (default 300 in CI; the issue's full run is 5000 + 5000)."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from cellctl_sim.modbus.registers import Table
from cellctl_sim.modbus.server import SimModbusServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cellctl.config.loader import load_cell
from cellctl.daemon import Daemon
from cellctl.localbroker import Mosquitto
from cellctl.sparkplug import sparkplug_b_pb2 as pb
from cellctl.testing import modbus_device, root_topic, wait_until, write_config

EXAMPLES = int(os.environ.get("CELLCTL_FUZZ_EXAMPLES", "300"))
pytestmark = pytest.mark.timeout(120 + EXAMPLES // 10)

POLICY = {
    "enabled": True,
    "devices": {"plc": {"points": {"setpoint": {"min": 0, "max": 500, "step": 0.5}}}},
}
KINDS = ["write", "call", "job_start", "job_pause", "job_resume", "job_cancel", "reboot", "", "WRITE"]
POINTS = ["setpoint", "temperature", "run_enable", "state_code", "nope", "", "setpoint/x"]
DEVICES = ["plc", "ghost", "PLC", "plc2"]

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what JSON encoders carry
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@st.composite
def uns_message(draw: st.DrawFn) -> tuple[str, bytes]:
    device = draw(st.sampled_from(DEVICES))
    shape = draw(st.integers(0, 4))
    if shape == 0:
        return device, draw(st.binary(max_size=300))
    if shape == 1:
        return device, orjson.dumps(draw(json_value), option=orjson.OPT_NON_STR_KEYS)
    body: dict[str, Any] = {
        "id": draw(st.one_of(st.uuids().map(str), st.text(max_size=140), st.integers(-(2**63), 2**63 - 1), st.none())),
        "command": draw(st.sampled_from(KINDS)),
    }
    if shape >= 3:
        body["command"] = "write"
        body["args"] = {"point": draw(st.sampled_from(POINTS)), "value": draw(json_scalar)}
    else:
        body["args"] = draw(st.dictionaries(st.sampled_from(["point", "value", "method", "args", "name", "program", "x"]), json_value, max_size=4))
    if draw(st.booleans()):
        body[draw(st.sampled_from(["expires", "validate_only", "extra"]))] = draw(json_scalar)
    return device, orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)


@st.composite
def dcmd_message(draw: st.DrawFn) -> tuple[str, bytes]:
    device = draw(st.sampled_from(DEVICES))
    shape = draw(st.integers(0, 2))
    if shape == 0:
        return device, draw(st.binary(max_size=300))
    p = pb.Payload()
    p.timestamp = int(time.time() * 1000)
    for _ in range(draw(st.integers(0, 4))):
        m = p.metrics.add()
        if draw(st.booleans()):
            m.alias = draw(st.integers(0, 2**64 - 1))
        else:
            m.name = draw(st.sampled_from([*POINTS, "Node Control/Rebirth"]))
        m.datatype = draw(st.integers(0, 40))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            m.double_value = draw(st.floats(allow_nan=True, allow_infinity=True))
        elif kind == 1:
            m.long_value = draw(st.integers(0, 2**64 - 1))
        elif kind == 2:
            m.string_value = draw(st.text(max_size=30))
        else:
            m.is_null = True
    raw = p.SerializeToString()
    if shape == 2 and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]  # truncated
    return device, raw


def valid_writes(n: int) -> list[float]:
    return [round(12.5 + 7.5 * i, 1) for i in range(n)]


def set_port(config: Path, port: int) -> None:
    config.write_text(config.read_text(encoding="utf-8").replace("PLC_PORT", str(port)), encoding="utf-8")


@contextmanager
def daemon_in_thread(config: Path) -> Iterator[tuple[Daemon, SimModbusServer, list[dict[str, Any]]]]:
    """The PLC simulator and the daemon, on an event loop of their own in a thread."""
    started = threading.Event()
    box: dict[str, Any] = {}
    events: list[dict[str, Any]] = []

    async def main() -> None:
        async with SimModbusServer({2: "machine-plc"}, tick=0.1, seed=3, auto_tick=False) as sim:
            port = await sim.serve_tcp()
            set_port(config, port)
            daemon = Daemon(load_cell(config))
            daemon.audit.sinks.append(events.append)
            box.update(daemon=daemon, sim=sim, loop=asyncio.get_running_loop())
            task = asyncio.create_task(daemon.run(install_signal_handlers=False), name="fuzzed-daemon")
            await daemon.started.wait()
            started.set()
            await task

    thread = threading.Thread(target=lambda: box.update(error=asyncio.run(main())), name="daemon")
    thread.start()
    try:
        if not started.wait(20):
            raise AssertionError("the daemon did not start")
        yield box["daemon"], box["sim"], events
    finally:
        if "loop" in box:
            box["loop"].call_soon_threadsafe(box["daemon"].stop.set)
        thread.join(30)
        assert not thread.is_alive(), "the daemon did not stop"


def test_hostile_commands_reach_nothing_but_the_valid_writes_and_all_are_audited(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        broker.port,
        [modbus_device("plc", "sim-machine-plc", 0, 2, poll_interval=0.05)],
        cell=unique,
        publish={"formats": ["uns", "sparkplug"]},
        sparkplug={"device_writes": "allow"},
        commands=POLICY,
    )
    config.write_text(config.read_text(encoding="utf-8").replace("port: 0", "port: PLC_PORT"), encoding="utf-8")
    root = root_topic(unique)
    dcmd = f"spBv1.0/test-lab-a1/DCMD/l1-{unique}"
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fuzz-{unique}"[:23], protocol=MQTTProtocolVersion.MQTTv311)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    sent = {"uns": 0, "sparkplug": 0}

    def send(topic: str, payload: bytes, channel: str) -> None:
        client.publish(topic, payload, 1).wait_for_publish(10)
        sent[channel] += 1

    with daemon_in_thread(config) as (daemon, sim, events):
        wait_until(lambda: daemon.cell.runner("plc").available and (daemon.node and daemon.node.birthed.get("plc")), 20, "plc birthed")

        @settings(max_examples=EXAMPLES, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        @given(msg=uns_message())
        def fuzz_uns(msg: tuple[str, bytes]) -> None:
            send(f"{root}/cmd/{msg[0]}", msg[1], "uns")

        @settings(max_examples=EXAMPLES, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        @given(msg=dcmd_message())
        def fuzz_dcmd(msg: tuple[str, bytes]) -> None:
            send(f"{dcmd}/{msg[0]}", msg[1], "sparkplug")

        fuzz_uns()
        fuzz_dcmd()
        corpus = [
            b"x" * 1_100_000,  # 1 MB
            orjson.dumps({"id": "nan", "command": "write", "args": {"point": "setpoint", "value": 1e309}}),
            b'{"id": "nan2", "command": "write", "args": {"point": "setpoint", "value": NaN}}',
            orjson.dumps({"id": "neg", "command": "write", "args": {"point": "setpoint", "value": -0.5}}),
            orjson.dumps({"id": "str", "command": "write", "args": {"point": "setpoint", "value": "100"}}),
        ]
        for payload in corpus:
            send(f"{root}/cmd/plc", payload, "uns")
        send(f"{dcmd}/plc", b"\x00" * 1_100_000, "sparkplug")
        good = valid_writes(10)
        for i, value in enumerate(good):
            send(f"{root}/cmd/plc", orjson.dumps({"id": f"ok-{i}", "command": "write", "args": {"point": "setpoint", "value": value}}), "uns")
        wait_until(
            lambda: len([e for e in events if e["source"]["channel"] == "uns"]) >= sent["uns"]
            and len([e for e in events if e["source"]["channel"] == "sparkplug"]) >= sent["sparkplug"],
            timeout=60,
            what=f"every command audited ({sent})",
        )
        alive = not daemon.stop.is_set() and daemon.session.is_connected
        writes = list(sim.unit(2).writes)
    client.loop_stop()
    client.disconnect()
    uns_events = [e for e in events if e["source"]["channel"] == "uns"]
    spb_events = [e for e in events if e["source"]["channel"] == "sparkplug"]
    done = [e for e in events if e["decision"] == "done" and not e.get("duplicate")]
    decisions: dict[str, int] = {}
    for e in events:
        decisions[e["decision"]] = decisions.get(e["decision"], 0) + 1
    print(f"fuzz: sent {sent}, audited uns={len(uns_events)} sparkplug={len(spb_events)}, decisions {decisions}, writes {len(writes)}")
    assert alive
    assert len(uns_events) == sent["uns"], "every UNS command audited exactly once"
    assert len(spb_events) >= sent["sparkplug"], "every DCMD audited"
    written = [struct.unpack(">f", struct.pack(">HH", *w[2]))[0] for w in writes if w[0] is Table.HOLDING and w[1] == 18]
    assert len(writes) == len(written), f"only setpoint writes reached the machine: {writes}"
    # A write that reached the machine was accepted: `done`, or `failed` when the device
    # did not confirm it (a read-back that timed out on a loaded machine) - never refused.
    executed = [
        e["args"]["value"] for e in events if e["decision"] in ("done", "failed") and not e.get("duplicate")
    ]
    assert is_subsequence(written, executed), "every write that reached the machine was a valid allowed one"
    assert is_subsequence([e["args"]["value"] for e in done], written), "every done write reached the machine"
    assert all(0 <= v <= 500 and (v * 2).is_integer() for v in written)
    assert set(good) <= set(written)


def is_subsequence(part: list[Any], whole: list[Any]) -> bool:
    """`part`'s items appear in `whole` in the same order (not necessarily adjacent)."""
    rest = iter(whole)
    return all(any(x == y for y in rest) for x in part)
