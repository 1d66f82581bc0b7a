"""NCMD/DCMD through the one command path, against a real broker and a simulated PLC:
by default every device write is refused, each refusal logged and counted (and
published as `Commands/Refused`); with `device_writes: allow` a valid write reaches the
machine through the driver, in device units; nothing invalid ever does."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.commands.sparkplug import SparkplugCommands
from cellctl.config.loader import load_cell
from cellctl.config.profiles import find_profile, search_path
from cellctl.encode.sparkplug import device_model
from cellctl.localbroker import Mosquitto
from cellctl.sparkplug import sparkplug_b_pb2 as pb
from cellctl.sparkplug.codec import MetricTable
from cellctl.sparkplug.state import AliasBook
from cellctl.testing import Collector, modbus_device, root_topic, running_daemon, write_config
from cellctl.testing.sparkplug import BOOLEAN, Capture, SpMessage, metric_value, rebirth_command

pytestmark = pytest.mark.timeout(60)
UINT64, DOUBLE, STRING = 8, 10, 12


@pytest.fixture
async def plc() -> AsyncIterator[tuple[SimModbusServer, int]]:
    async with SimModbusServer({2: "machine-plc"}, tick=0.1, seed=3, auto_tick=False) as sim:
        yield sim, await sim.serve_tcp()


def command(*metrics: tuple[int | None, str | None, int, object]) -> bytes:
    """A DCMD/NCMD as a host builds it: (alias, name, datatype, value) per metric."""
    p = pb.Payload()
    p.timestamp = int(time.time() * 1000)
    for alias, name, datatype, value in metrics:
        m = p.metrics.add()
        if alias is not None:
            m.alias = alias
        if name is not None:
            m.name = name
        if datatype == DOUBLE:
            assert isinstance(value, float)
            m.double_value = value
        elif datatype == BOOLEAN:
            assert isinstance(value, bool)
            m.boolean_value = value
        elif datatype == STRING:
            assert isinstance(value, str)
            m.string_value = value
        elif datatype == UINT64:
            assert isinstance(value, int)
            m.long_value = value
    return p.SerializeToString()


def aliases(msgs: list[SpMessage], kind: str, device: str | None = None) -> dict[str, int]:
    births = [m for m in msgs if m.kind == kind and m.device == device]
    return {x.name: x.alias for x in births[-1].decode().metrics if x.HasField("alias")}


def node_metric(msgs: list[SpMessage], alias: int) -> list[object]:
    out = []
    for m in msgs:
        if m.kind == "NDATA":
            out += [metric_value(x) for x in m.decode().metrics if x.alias == alias]
    return out


def setup(tmp_path: Path, broker: Mosquitto, port: int, unique: str, writes: str) -> Path:
    return write_config(
        tmp_path,
        broker.port,
        [modbus_device("plc", "sim-machine-plc", port, 2, poll_interval=0.05)],
        cell=unique,
        publish={"formats": ["sparkplug"]},
        sparkplug={"device_writes": writes},
    )


async def test_commands_are_refused_by_default_and_every_refusal_is_logged_and_counted(
    broker: Mosquitto,
    plc: tuple[SimModbusServer, int],
    unique: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim, port = plc
    group, edge = "test-lab-a1", f"l1-{unique}"
    cap = Capture(broker.port, f"spBv1.0/{group}/#")
    before = sim.unit(2).snapshot()["setpoint"]
    try:
        async with running_daemon(setup(tmp_path, broker, port, unique, "refuse")) as daemon:
            node = daemon.node
            assert node is not None
            await cap.until(
                lambda m: [x for x in m if x.kind == "DBIRTH" and x.device == "plc"], what="DBIRTH"
            )
            a = aliases(cap.snapshot(), "DBIRTH", "plc")
            dcmd = f"spBv1.0/{group}/DCMD/{edge}"
            sent = [
                (f"{dcmd}/plc", command((a["setpoint"], None, DOUBLE, 250.0))),  # valid, but the policy
                (f"{dcmd}/plc", command((a["setpoint"], None, DOUBLE, 5000.0))),  # above max 1000
                (f"{dcmd}/plc", command((a["temperature"], None, DOUBLE, 1.0))),  # read-only point
                (f"{dcmd}/plc", command((a["Machine/item_state"], None, STRING, "executing"))),  # not a point
                (f"{dcmd}/plc", command((9999, None, DOUBLE, 1.0))),  # never birthed
                (f"{dcmd}/plc", b"\x08\xff\xff garbage"),  # not a payload
                (f"{dcmd}/ghost", command((a["setpoint"], None, DOUBLE, 1.0))),  # no such device
                (f"spBv1.0/{group}/NCMD/{edge}", command((None, "Outbox/Dropped", UINT64, 0))),  # node metric
            ]
            for topic, payload in sent:
                cap.publish(topic, payload)
            refused = node.node_table.by_name["Commands/Refused"].alias
            assert refused is not None
            await cap.until(lambda m: len(sent) in node_metric(m, refused), what="Commands/Refused in NDATA")
            counts = dict(node.router.refused)
    finally:
        cap.close()
    assert counts == {
        "policy": 1,
        "out_of_range": 1,
        "not_writable": 3,
        "invalid": 2,
        "not_birthed": 1,
    }
    assert sim.unit(2).snapshot()["setpoint"] == before, "nothing reached the machine"
    log = capsys.readouterr().out
    # logged once per burst and reason (issue 16 item 3), counted every time
    assert log.count("command_refused") == len(counts)
    assert "outside [0.0, 1000.0]" in log


async def test_allowed_writes_reach_the_machine_in_device_units(
    broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    sim, port = plc
    group, edge = "test-lab-a1", f"l1-{unique}"
    cap = Capture(broker.port, f"spBv1.0/{group}/#")
    try:
        async with running_daemon(setup(tmp_path, broker, port, unique, "allow")):
            await cap.until(
                lambda m: [x for x in m if x.kind == "DBIRTH" and x.device == "plc"], what="DBIRTH"
            )
            a = aliases(cap.snapshot(), "DBIRTH", "plc")
            cap.publish(
                f"spBv1.0/{group}/DCMD/{edge}/plc",
                command((a["setpoint"], None, DOUBLE, 250.5), (a["run_enable"], None, BOOLEAN, False)),
            )

            def written(msgs: list[SpMessage]) -> bool:
                got = {}
                for m in msgs:
                    if m.kind == "DDATA":
                        got.update({x.alias: metric_value(x) for x in m.decode().metrics})
                return got.get(a["setpoint"]) == 250.5 and got.get(a["run_enable"]) is False

            await cap.until(written, what="the written values read back in DDATA")
    finally:
        cap.close()
    snap = sim.unit(2).snapshot()
    assert snap["setpoint"] == 250.5
    assert snap["run_enable"] is False


def plc_profile_with_a_hole(tmp_path: Path) -> Path:
    """sim-machine-plc plus a writable point at a register the PLC does not map, as a
    profile for the wrong firmware version would have."""
    src = find_profile("sim-machine-plc", search_path())
    assert src is not None
    profile = yaml.safe_load(src.read_text(encoding="utf-8"))
    profile["name"] = "plc-with-hole"
    profile["points"].append(
        {
            "id": "limit",
            "type": "float",
            "access": "rw",
            "min": 0,
            "max": 1000,
            "address": {"table": "holding", "start": 9000, "type": "float32"},
        }
    )
    out = tmp_path / "profiles"
    out.mkdir()
    (out / "plc-with-hole.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
    return out


async def test_a_write_the_device_refuses_is_counted_and_the_daemon_runs_on(
    broker: Mosquitto,
    plc: tuple[SimModbusServer, int],
    unique: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 9 item 1: a Modbus exception answering a DCMD write ended `cellctl run`."""
    sim, port = plc
    group, edge = "test-lab-a1", f"l1-{unique}"
    config = write_config(
        tmp_path,
        broker.port,
        [modbus_device("plc", "plc-with-hole", port, 2, poll_interval=0.05)],
        cell=unique,
        publish={"formats": ["sparkplug"]},
        sparkplug={"device_writes": "allow"},
        profile_dirs=[str(plc_profile_with_a_hole(tmp_path))],
    )
    cap = Capture(broker.port, f"spBv1.0/{group}/#")
    try:
        async with running_daemon(config) as daemon:
            await cap.until(
                lambda m: [x for x in m if x.kind == "DBIRTH" and x.device == "plc"], what="DBIRTH"
            )
            a = aliases(cap.snapshot(), "DBIRTH", "plc")
            dcmd = f"spBv1.0/{group}/DCMD/{edge}/plc"
            cap.publish(dcmd, command((a["limit"], None, DOUBLE, 10.0)))
            await cap.until(lambda _m: daemon.audit.outcomes["failed"] == 1, what="the failed write")
            # the daemon runs on: a later valid write still reaches the machine
            cap.publish(dcmd, command((a["setpoint"], None, DOUBLE, 321.0)))
            await cap.until(lambda _m: daemon.audit.outcomes["done"] == 1, what="the next write")
            assert not daemon.stop.is_set()
    finally:
        cap.close()
    assert dict(daemon.audit.reasons) == {"failed:rejected": 1}
    assert sim.unit(2).snapshot()["setpoint"] == 321.0
    log = capsys.readouterr().out
    assert "command_failed" in log
    assert "illegal data address" in log


async def test_a_retained_command_is_never_executed_not_even_after_a_restart(
    broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    """Issue 16 item 2: a DCMD published with the retain flag came back at every subscribe."""
    sim, port = plc
    group, edge = "test-lab-a1", f"l1-{unique}"
    config = setup(tmp_path, broker, port, unique, "allow")
    dcmd = f"spBv1.0/{group}/DCMD/{edge}/plc"
    cap = Capture(broker.port, f"spBv1.0/{group}/#")
    try:
        async with running_daemon(config):
            await cap.until(
                lambda m: [x for x in m if x.kind == "DBIRTH" and x.device == "plc"], what="DBIRTH"
            )
            a = aliases(cap.snapshot(), "DBIRTH", "plc")
        cap.publish(dcmd, command((a["setpoint"], None, DOUBLE, 123.0)), retain=True)
        for _ in range(2):  # every start subscribes again and gets the retained message
            async with running_daemon(config) as daemon:
                node = daemon.node
                assert node is not None
                await cap.until(
                    lambda _m, n=node: n.router.refused["retained"] >= 1, what="the retained DCMD refused"
                )
                cap.publish(dcmd, command((a["setpoint"], None, DOUBLE, 456.0)))  # live: executed
                await cap.until(lambda _m: daemon.audit.outcomes["done"] == 1, what="the live write")
                assert sim.unit(2).snapshot()["setpoint"] == 456.0
    finally:
        cap.publish(dcmd, b"", retain=True)  # clear the retained message
        cap.close()


async def test_commands_are_bounded_and_a_flood_is_one_ndata_and_one_log_line(
    broker: Mosquitto,
    plc: tuple[SimModbusServer, int],
    unique: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 16 items 3 and 4: 20,000 metrics in one DCMD, a long string, 300 refused
    commands and 200 rebirth requests: nothing reaches the machine that should not, NDATA
    and births stay at their documented rate, the log stays readable."""
    sim, port = plc
    group, edge = "test-lab-a1", f"l1-{unique}"
    before = sim.unit(2).snapshot()["setpoint"]
    cap = Capture(broker.port, f"spBv1.0/{group}/#")
    try:
        async with running_daemon(setup(tmp_path, broker, port, unique, "allow")) as daemon:
            node = daemon.node
            assert node is not None
            await cap.until(
                lambda m: [x for x in m if x.kind == "DBIRTH" and x.device == "plc"], what="DBIRTH"
            )
            a = aliases(cap.snapshot(), "DBIRTH", "plc")
            dcmd, ncmd = f"spBv1.0/{group}/DCMD/{edge}/plc", f"spBv1.0/{group}/NCMD/{edge}"
            huge = command(*[(a["setpoint"], None, DOUBLE, 1.0)] * 20_000)
            assert len(huge) > 64 * 1024
            cap.publish(dcmd, huge)
            cap.publish(dcmd, command(*[(a["setpoint"], None, DOUBLE, 2.0)] * 100))  # small, too many
            marks = len([x for x in cap.snapshot() if x.kind in ("NDATA", "NBIRTH")])
            for _ in range(300):
                cap.publish(dcmd, command((a["temperature"], None, DOUBLE, 1.0)))  # read-only
            for _ in range(200):
                cap.publish(ncmd, rebirth_command(int(time.time() * 1000)))
            await cap.until(lambda _m: node.router.refused_total >= 302, what="every refusal counted")
            await cap.until(lambda _m: node.rebirths >= 1 and node.rebirths_coalesced >= 150, what="rebirths")
            after = [x for x in cap.snapshot() if x.kind in ("NDATA", "NBIRTH")][marks:]
            counts = dict(node.router.refused)
    finally:
        cap.close()
    assert counts["too_large"] == 2
    assert counts["not_writable"] == 300
    assert sim.unit(2).snapshot()["setpoint"] == before, "nothing reached the machine"
    assert daemon.audit.outcomes["done"] == 200, "each rebirth request is one done command, no write"
    assert len([x for x in after if x.kind == "NBIRTH"]) <= 2, "a burst of rebirth requests is one or two"
    assert len([x for x in after if x.kind == "NDATA"]) <= 3, "node metrics at most every 5 s"
    log = capsys.readouterr().out
    assert log.count("command_refused") <= 4  # one line per reason in the burst
    assert log.count("command_done") <= 2  # the rebirth requests too


def test_a_string_longer_than_the_bound_is_refused_before_the_driver(tmp_path: Path) -> None:
    """Issue 16 item 3: a 1 MB string for a 16-byte point passed validation and failed in
    the driver, uncounted. Now it is refused, counted, by the router."""
    profiles = plc_profile_with_a_hole(tmp_path)
    path = profiles / "plc-with-hole.yaml"
    profile = yaml.safe_load(path.read_text(encoding="utf-8"))
    profile["points"].append(
        {
            "id": "lot",
            "type": "string",
            "access": "rw",
            "address": {"table": "holding", "start": 200, "type": "string", "length": 8},
        }
    )
    path.write_text(yaml.safe_dump(profile), encoding="utf-8")
    config = write_config(
        tmp_path,
        1883,
        [modbus_device("plc", "plc-with-hole", 5020, 2)],
        cell="c",
        profile_dirs=[str(profiles)],
    )
    model = device_model(load_cell(config).devices[0], AliasBook(None))
    router = SparkplugCommands(MetricTable([]), {"plc": model}, device_writes="allow")
    lot = model.table.by_name["lot"].alias
    assert router.device_command("plc", command((lot, None, STRING, "x" * 2000)), birthed=True) == []
    assert router.refused["too_long"] == 1
    ok = router.device_command("plc", command((lot, None, STRING, "LOT-0042")), birthed=True)
    assert [w.value for w in ok] == ["LOT-0042"]


async def test_a_rebirth_request_is_one_audit_event_with_the_declared_identity(
    broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    """NCMD `Node Control/Rebirth` is a command: each request is one `done` event on
    `<root>/events` (source sparkplug, the MQTT 5 user properties as client-declared),
    also when it joins a rebirth under way; a refused NCMD stays one `refused` event."""
    _sim, port = plc
    group, edge = "test-lab-a1", f"l1-{unique}"
    cfg = write_config(
        tmp_path,
        broker.port,
        [modbus_device("plc", "sim-machine-plc", port, 2, poll_interval=0.05)],
        cell=unique,
        publish={"formats": ["uns", "sparkplug"]},
        backbone={"host": "127.0.0.1", "port": broker.port, "protocol": "5"},
    )
    events = Collector(broker.port, f"{root_topic(unique)}/events")
    cap = Capture(broker.port, f"spBv1.0/{group}/#")
    ncmd = f"spBv1.0/{group}/NCMD/{edge}"
    try:
        async with running_daemon(cfg) as daemon:
            node = daemon.node
            assert node is not None
            await cap.until(lambda m: [x for x in m if x.kind == "DBIRTH" and x.device == "plc"], what="DBIRTH")
            cap.publish(ncmd, rebirth_command(int(time.time() * 1000)), user={"host": "scada-1", "operator": "bo"})
            cap.publish(ncmd, rebirth_command(int(time.time() * 1000)))  # soon after: joins it
            cap.publish(ncmd, command((None, "Outbox/Dropped", UINT64, 0)))  # not a rebirth: refused

            def rebirths(m: list[Any]) -> list[dict[str, Any]]:
                return [e for e in (x.json() for x in m) if e.get("command") == "rebirth"]

            await events.until(lambda m: len(rebirths(m)) == 2, what="two rebirth audit events")
            await events.until(
                lambda m: [x for x in m if x.json().get("decision") == "refused"], what="the refused NCMD's event"
            )
            await cap.until(lambda _m: node.rebirths >= 1, what="the rebirth")
            outcomes = dict(daemon.audit.outcomes)
            seen = rebirths(events.messages)
    finally:
        cap.close()
        events.close()
    assert [e["decision"] for e in seen] == ["done", "done"]
    first, second = seen
    declared = {"host": "scada-1", "operator": "bo"}
    assert first["source"] == {"channel": "sparkplug", "topic": ncmd, "client_declared": declared}
    assert "client_declared" not in second["source"]
    assert first["device"] == "node"
    assert first["args"] == {}
    assert first["id"] != second["id"]
    assert (outcomes["done"], outcomes["accepted"], outcomes["refused"]) == (2, 2, 1)
