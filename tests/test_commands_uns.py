"""UNS JSON commands end to end: an MQTT 5 client as an MES would be, a real broker, the
daemon, and a simulated PLC whose write log proves what reached the machine."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cellctl_sim.modbus.registers import Table
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.model import OperationMode
from cellctl.testing import Collector, modbus_device, root_topic, running_daemon, write_config
from cellctl.testing.commands import CommandClient
from cellctl.testing.waiting import async_wait_until

pytestmark = pytest.mark.timeout(90)

POLICY: dict[str, Any] = {
    "enabled": True,
    "devices": {
        "plc": {
            "points": {
                "setpoint": {"min": 0, "max": 500, "step": 0.5, "rate_limit": {"count": 4, "per": "60s"}},
                "run_enable": {"interlocks": [{"operation_mode": ["setup"]}]},
            },
            "commands": {"job_start": {}},
        }
    },
}


@pytest.fixture
async def plc() -> AsyncIterator[tuple[SimModbusServer, int]]:
    async with SimModbusServer({2: "machine-plc"}, tick=0.1, seed=3, auto_tick=False) as sim:
        yield sim, await sim.serve_tcp()


def config(tmp_path: Path, broker: Mosquitto, port: int, unique: str, *, protocol: str = "5", **extra: Any) -> Path:
    return write_config(
        tmp_path,
        broker.port,
        [modbus_device("plc", "sim-machine-plc", port, 2, poll_interval=0.05)],
        cell=unique,
        backbone={"host": "127.0.0.1", "port": broker.port, "reconnect_min": 0.2, "reconnect_max": 1, "protocol": protocol},
        **{"commands": POLICY, **extra},
    )


def write(rid: str, point: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {"id": rid, "command": "write", "args": {"point": point, "value": value}, **extra}


def setpoint_writes(sim: SimModbusServer) -> list[Any]:
    return [w for w in sim.unit(2).writes if w[0] is Table.HOLDING and w[1] == 18]


async def ready(client: CommandClient, daemon: Any) -> None:
    """The daemon has read the PLC and subscribed to its command topics."""
    await async_wait_until(lambda: daemon.cell.runner("plc").available, what="the plc online")
    await client.async_probe("plc")  # not allowed: refused at once, once subscribed


async def test_a_write_is_accepted_done_and_read_back_with_the_correlation_data(
    broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    sim, port = plc
    root = root_topic(unique)
    events = Collector(broker.port, f"{root}/events")
    client = CommandClient(broker.port, root)
    try:
        async with running_daemon(config(tmp_path, broker, port, unique)) as daemon:
            await ready(client, daemon)
            client.send("plc", write("w-1", "setpoint", 250.5), correlation=b"corr-1", user={"operator": "ann"})
            done = await client.async_final("w-1")
            answers = [a for a in client.answers if a.body.get("id") == "w-1"]
            await events.until(lambda m: [x for x in m if x.json().get("id") == "w-1"], what="the audit event")
    finally:
        client.close()
        events.close()
    assert [a.body["state"] for a in answers] == ["accepted", "done"]
    assert all(a.topic == client.reply_topic and a.correlation == b"corr-1" for a in answers)
    assert done["readback"] == 250.5
    assert done["ts_received"] <= done["ts_accepted"] <= done["ts_finished"]
    assert sim.unit(2).snapshot()["setpoint"] == 250.5
    event = next(x.json() for x in events.messages if x.json().get("id") == "w-1")
    assert event["decision"] == "done"
    assert event["source"]["client_declared"] == {"operator": "ann"}
    assert event["args"] == {"point": "setpoint", "value": 250.5}
    assert event["readback"] == 250.5


async def test_every_refusal_reason_reaches_the_sender_and_nothing_reaches_the_machine(
    broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    sim, port = plc
    root = root_topic(unique)
    client = CommandClient(broker.port, root)
    past = int(time.time() * 1000) - 1000
    cases: list[tuple[str, dict[str, Any] | bytes, str, dict[str, Any]]] = [
        ("x-json", b"{not json", "invalid", {}),
        ("x-fields", {"id": "x-fields", "command": "write", "args": {"point": "setpoint"}}, "invalid", {}),
        ("x-extra", {"id": "x-extra", "command": "reboot"}, "invalid", {}),
        ("x-type", write("x-type", "setpoint", "250"), "wrong_type", {}),
        ("x-bool", write("x-bool", "setpoint", True), "wrong_type", {}),
        ("x-range", write("x-range", "setpoint", 600.0), "out_of_range", {}),
        ("x-step", write("x-step", "setpoint", 100.3), "not_allowed_value", {}),
        ("x-ro", write("x-ro", "temperature", 1.0), "not_writable", {}),
        ("x-unknown", write("x-unknown", "nope", 1), "not_writable", {}),
        ("x-ghost", write("x-ghost", "setpoint", 1.0), "unknown_device", {"device": "ghost"}),
        ("x-expired", write("x-expired", "setpoint", 10.0, expires=past), "expired", {}),
        ("x-method", {"id": "x-method", "command": "call", "args": {"method": "Nope"}}, "unknown_command", {}),
        ("x-job", {"id": "x-job", "command": "job_start", "args": {"name": "nope.nc"}}, "unknown_job", {}),
        ("x-pause", {"id": "x-pause", "command": "job_pause"}, "not_allowed", {}),
        ("x-retained", write("x-retained", "setpoint", 10.0), "retained", {"retain": True}),
        ("x-interlock", write("x-interlock", "run_enable", False), "interlock", {}),
    ]
    try:
        async with running_daemon(config(tmp_path, broker, port, unique)) as daemon:
            await ready(client, daemon)
            before = daemon.audit.events
            for rid, body, _, opts in cases:
                client.send(opts.get("device", "plc"), body, retain=opts.get("retain", False), correlation=rid.encode())
            got = {}
            for rid, _, _, _ in cases:
                if rid == "x-json":  # no id to answer with: found by its correlation data
                    found = await client.async_wait(lambda ans: [x for x in ans if x.correlation == b"x-json"])
                    a = found[0]
                    got[rid] = a.body
                else:
                    got[rid] = await client.async_final(rid)
            audited = daemon.audit.events - before
    finally:
        client.client.publish(f"{root}/cmd/plc", b"", 1, True).wait_for_publish(5)  # clear the retained one
        client.close()
    assert {rid: got[rid].get("reason", got[rid]) for rid, *_ in cases} == {rid: reason for rid, _, reason, _ in cases}
    assert all(got[rid]["state"] == "refused" for rid, *_ in cases)
    assert got["x-range"]["message"] == "device 'plc': point 'setpoint': 600.0 is outside [0, 500]"
    assert got["x-interlock"]["message"].startswith("interlock: operation_mode is 'processing'")
    assert audited == len(cases)
    assert sim.unit(2).writes == [], "nothing reached the machine"


async def test_a_repeated_request_id_returns_the_first_result_and_runs_nothing(
    broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    sim, port = plc
    client = CommandClient(broker.port, root_topic(unique))
    try:
        async with running_daemon(config(tmp_path, broker, port, unique)) as daemon:
            await ready(client, daemon)
            client.send("plc", write("same", "setpoint", 120.0))
            first = await client.async_final("same")
            client.send("plc", write("same", "setpoint", 130.0))  # same id, other value: still the first
            again = await async_wait_until(
                lambda: [r for r in client.results("same") if r.get("duplicate")], what="the repeat's answer"
            )
    finally:
        client.close()
    assert first["state"] == "done"
    assert {k: v for k, v in again[0].items() if k != "duplicate"} == first
    assert len(setpoint_writes(sim)) == 1
    assert sim.unit(2).snapshot()["setpoint"] == 120.0


async def test_interlocks_follow_the_machine_state_and_rate_limits_count(
    broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    sim, port = plc
    client = CommandClient(broker.port, root_topic(unique))
    try:
        async with running_daemon(config(tmp_path, broker, port, unique)) as daemon:
            await ready(client, daemon)
            client.send("plc", write("i-1", "run_enable", False))
            idle = await client.async_final("i-1")
            sim.unit(2).set_value("state_code", 5)  # the machine enters setup
            runner = daemon.cell.runner("plc")
            await async_wait_until(
                lambda: runner.machine.operation_mode == OperationMode.SETUP, what="the daemon sees setup"
            )
            client.send("plc", write("i-2", "run_enable", False))
            setup = await client.async_final("i-2")
            # setpoint: at most 4 per minute
            states = []
            for n in range(5):
                client.send("plc", write(f"r-{n}", "setpoint", 10.0 + n))
                states.append((await client.async_final(f"r-{n}"))["state"])
            limited = await client.async_final("r-4")
    finally:
        client.close()
    assert idle["state"] == "refused"
    assert idle["reason"] == "interlock"
    assert setup["state"] == "done"
    assert setup["readback"] is False
    assert sim.unit(2).snapshot()["run_enable"] is False
    assert states == ["done"] * 4 + ["refused"]
    assert limited["reason"] == "rate_limited"
    assert len(setpoint_writes(sim)) == 4


async def test_a_write_the_machine_does_not_keep_fails_with_the_value_read_back(
    broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    sim, port = plc
    client = CommandClient(broker.port, root_topic(unique))
    policy = {**POLICY, "readback_timeout": "1s"}
    try:
        async with running_daemon(config(tmp_path, broker, port, unique, commands=policy)) as daemon:
            await ready(client, daemon)
            before = sim.unit(2).snapshot()["setpoint"]
            sim.unit(2).faults.ignore_writes = True
            client.send("plc", write("m-1", "setpoint", 300.0))
            result = await client.async_final("m-1")
            assert not daemon.stop.is_set()
    finally:
        client.close()
    assert result["state"] == "failed"
    assert result["reason"] == "readback_mismatch"
    assert result["message"] == f"device 'plc': point 'setpoint': wrote 300.0, the device reports {before!r}"
    assert len(setpoint_writes(sim)) == 1  # it was sent (and acknowledged) once


async def test_validate_only_runs_every_check_but_the_write(
    broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    sim, port = plc
    client = CommandClient(broker.port, root_topic(unique))
    try:
        async with running_daemon(config(tmp_path, broker, port, unique)) as daemon:
            await ready(client, daemon)
            client.send("plc", write("v-1", "setpoint", 200.0, validate_only=True))
            ok = await client.async_final("v-1")
            client.send("plc", write("v-2", "run_enable", False, validate_only=True))
            interlocked = await client.async_final("v-2")
    finally:
        client.close()
    assert ok["state"] == "done"
    assert ok["validate_only"] is True
    assert interlocked["state"] == "refused"
    assert interlocked["reason"] == "interlock"
    assert sim.unit(2).writes == []


async def test_without_a_response_topic_answers_go_to_the_ack_topic_and_data_topics_trigger_nothing(
    broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    """MQTT 3.1.1 daemon session; a response topic inside the cell's own tree is ignored."""
    sim, port = plc
    root = root_topic(unique)
    client = CommandClient(broker.port, root)
    try:
        async with running_daemon(config(tmp_path, broker, port, unique, protocol="3.1.1")) as daemon:
            await ready(client, daemon)
            before = daemon.audit.events
            body = orjson.dumps(write("d-1", "setpoint", 50.0))
            for topic in (f"{root}/plc/data", f"{root}/plc/state", f"{root}/plc", f"{root}/cmd/plc/ack", f"{root}/cmd"):
                client.client.publish(topic, body, 1).wait_for_publish(5)
            client.send("plc", write("a-1", "setpoint", 60.0), reply=False)
            acked = await client.async_final("a-1")
            ack_topics = {a.topic for a in client.answers if a.body.get("id") == "a-1"}
            audited = daemon.audit.events - before
    finally:
        client.close()
    assert acked["state"] == "done"
    assert ack_topics == {f"{root}/cmd/plc/ack"}
    assert audited == 1, "only the command on the command topic was seen"
    assert [w[2] for w in setpoint_writes(sim)] == [[0x4270, 0]], "60.0 as float32, once"


async def test_commands_are_refused_unless_enabled(
    broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    sim, port = plc
    client = CommandClient(broker.port, root_topic(unique))
    try:
        async with running_daemon(config(tmp_path, broker, port, unique, commands={})) as daemon:
            await ready(client, daemon)  # commands off: the probe is refused too, once subscribed
            client.send("plc", write("off-1", "setpoint", 10.0))
            result = await client.async_final("off-1")
    finally:
        client.close()
    assert result["state"] == "refused"
    assert result["reason"] == "disabled"
    assert sim.unit(2).writes == []


async def test_a_silent_machine_fails_the_command_with_its_reason_and_the_next_one_runs(
    broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    """Issue 10 item 8: a device that stops answering yields `failed`, never an exception
    out of the router; once it answers again, commands run."""
    sim, port = plc
    client = CommandClient(broker.port, root_topic(unique))
    try:
        async with running_daemon(config(tmp_path, broker, port, unique)) as daemon:
            await ready(client, daemon)
            sim.unit(2).faults.silent = True
            client.send("plc", write("s-1", "setpoint", 70.0))
            silent = await client.async_final("s-1")
            sim.unit(2).faults.silent = False
            await async_wait_until(lambda: daemon.cell.runner("plc").available, what="the plc back")
            client.send("plc", write("s-2", "setpoint", 80.0))
            back = await client.async_final("s-2")
            assert not daemon.stop.is_set()
    finally:
        client.close()
    assert silent["state"] == "failed"
    assert silent["reason"] in ("unavailable", "timeout")
    assert silent["message"]
    assert back["state"] == "done"
    assert sim.unit(2).snapshot()["setpoint"] == 80.0
