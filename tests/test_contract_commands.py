"""Command traffic against the contract (issue 14 item 1, commands): an MES-like MQTT 5
client sends real commands through a real mosquitto to a daemon driving a simulated PLC.
Every request, answer (on the ack topic and on the MES's own response topic) and audit
event validates against the strict schema of its payload, and the request schema agrees
with the daemon: a body the schema refuses is refused `invalid`, one it accepts is not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cellctl_sim.modbus.server import SimModbusServer
from jsonschema import Draft202012Validator

from cellctl.config.loader import load_cell
from cellctl.contract.asyncapi import asyncapi_document
from cellctl.contract.schema import payload_schema
from cellctl.encode.uns import cell_root
from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, modbus_device, root_topic, running_daemon, write_config
from cellctl.testing.commands import CommandClient
from cellctl.testing.contract import check_messages
from cellctl.testing.waiting import async_wait_until

pytestmark = pytest.mark.timeout(90)

POLICY: dict[str, Any] = {
    "enabled": True,
    "devices": {"plc": {"points": {"setpoint": {"min": 0, "max": 500, "step": 0.5}}}},
}

# Bodies the schema accepts: the daemon answers them, whatever the policy decides.
VALID: list[tuple[str, dict[str, Any]]] = [
    ("ok-write", {"id": "ok-write", "command": "write", "args": {"point": "setpoint", "value": 250.5}}),
    ("ok-range", {"id": "ok-range", "command": "write", "args": {"point": "setpoint", "value": 600.0}}),
    (
        "ok-validate",
        {
            "id": "ok-validate",
            "command": "write",
            "args": {"point": "setpoint", "value": 10.0},
            "validate_only": True,
        },
    ),
    ("ok-call", {"id": "ok-call", "command": "call", "args": {"method": "Nope", "args": {"x": 1}}}),
    ("ok-job", {"id": "ok-job", "command": "job_start", "args": {"name": "a.nc"}, "expires": None}),
    ("ok-pause", {"id": "ok-pause", "command": "job_pause"}),
    ("ok-cancel", {"id": "ok-cancel", "command": "job_cancel", "args": {}}),
]
# Bodies the schema refuses: the daemon must refuse each as `invalid`.
INVALID: list[tuple[str, dict[str, Any]]] = [
    (
        "no-extra",
        {"id": "no-extra", "command": "write", "args": {"point": "setpoint", "value": 1}, "by": "ann"},
    ),
    ("no-args", {"id": "no-args", "command": "write", "args": {"point": "setpoint"}}),
    ("no-argx", {"id": "no-argx", "command": "job_pause", "args": {"now": True}}),
    ("no-kind", {"id": "no-kind", "command": "reboot"}),
    ("no-exp", {"id": "no-exp", "command": "job_pause", "expires": "tomorrow"}),
    ("no-neg", {"id": "no-neg", "command": "job_pause", "expires": -1}),
    ("no-vo", {"id": "no-vo", "command": "job_pause", "validate_only": 1}),
    ("no-point", {"id": "no-point", "command": "write", "args": {"point": 7, "value": 1}}),
    ("no-margs", {"id": "no-margs", "command": "call", "args": {"method": "M", "args": [1]}}),
    ("no id", {"id": "no id", "command": "job_pause"}),
]


@pytest.fixture
async def plc() -> AsyncIterator[int]:
    async with SimModbusServer({2: "machine-plc"}, tick=0.1, seed=3, auto_tick=False) as sim:
        yield await sim.serve_tcp()


def test_the_request_schema_sorts_the_table_as_the_test_expects() -> None:
    validator = Draft202012Validator(payload_schema("command.request"))
    assert [rid for rid, body in VALID if not validator.is_valid(body)] == []
    assert [rid for rid, body in INVALID if validator.is_valid(body)] == []


async def test_command_requests_answers_and_audit_events_match_the_contract(
    broker: Mosquitto, plc: int, unique: str, tmp_path: Path
) -> None:
    root = root_topic(unique)
    config = write_config(
        tmp_path,
        broker.port,
        [modbus_device("plc", "sim-machine-plc", plc, 2, poll_interval=0.05)],
        cell=unique,
        backbone={"host": "127.0.0.1", "port": broker.port, "protocol": "5"},
        commands=POLICY,
    )
    c = Collector(broker.port, f"{root}/#")
    client = CommandClient(broker.port, root)
    try:
        async with running_daemon(config) as daemon:
            await async_wait_until(lambda: daemon.cell.runner("plc").available, what="the plc online")
            await client.async_probe("plc")  # the daemon's command subscription is in place
            answers: dict[str, dict[str, Any]] = {}
            for i, (_rid, body) in enumerate(VALID + INVALID):
                # every other one without a response topic: answered on <root>/cmd/plc/ack
                client.send("plc", body, reply=i % 2 == 0)
            client.send("plc", VALID[0][1])  # a repeated id: the first result, marked duplicate
            for rid, _ in VALID + INVALID:
                if rid != "no id":
                    answers[rid] = await client.async_final(rid)
            await client.async_wait(lambda a: [x for x in a if x.body.get("duplicate")])
            ids = {rid for rid, _ in VALID + INVALID if rid != "no id"}
            await c.until(
                lambda m: (
                    len({x.json().get("id") for x in m if x.topic == f"{root}/events"} & ids) == len(ids)
                ),
                what="an audit event for every command",
            )
    finally:
        client.close()
        c.close()
    # the schema and the daemon agree on what is a valid request
    assert {rid: answers[rid]["reason"] for rid, _ in INVALID if rid in answers} == {
        rid: "invalid" for rid, _ in INVALID if rid != "no id"
    }
    assert all(answers[rid].get("reason") != "invalid" for rid, _ in VALID), answers
    assert answers["ok-write"]["state"] == "done"
    assert answers["ok-range"]["reason"] == "out_of_range"
    # every captured message under the root, the deliberately invalid requests aside
    bad = {f"{root}/cmd/plc": [body for _, body in INVALID]}
    kept = [
        m
        for m in c.messages
        if not (m.topic in bad and m.json() in bad[m.topic]) and not str(_id_of(m)).startswith("probe-")
    ]
    report = check_messages(kept, root)
    report.assert_valid()
    assert report.seen["command.request"] == len(VALID) + 1
    assert report.seen["command.result"] >= len(VALID + INVALID) // 2
    assert report.seen["event.command"] >= len(VALID + INVALID) - 1 + 1  # + the duplicate
    # answers on the MES's own response topic follow the same schema
    result = Draft202012Validator(payload_schema("command.result", strict=True))
    private = [a.body for a in client.answers if a.topic == client.reply_topic]
    assert private, "answers on the response topic were captured"
    assert all(result.is_valid(b) for b in private), [
        next(iter(result.iter_errors(b))).message for b in private if not result.is_valid(b)
    ]
    done = [e.json() for e in c.on(f"{root}/events") if e.json().get("id") == "ok-write"]
    assert [e["decision"] for e in done if not e.get("duplicate")] == ["done"]
    assert [e for e in done if e.get("duplicate")], "the repeated id is audited too"


def test_the_asyncapi_document_has_each_device_s_command_channels(tmp_path: Path) -> None:
    sample = Path(__file__).resolve().parents[1] / "drivers" / "modbus" / "sample-config.yaml"
    body = yaml.safe_load(sample.read_text(encoding="utf-8"))
    body["backbone"] = {"hosts": ["node-1:1883", "node-2:1883"]}
    config = tmp_path / "cell.yaml"
    config.write_text(yaml.safe_dump(body), encoding="utf-8")
    compiled = load_cell(config)
    doc = asyncapi_document(compiled)
    root = cell_root(compiled.config.publish.prefix, compiled.config.identity)
    by_address = {c["address"]: cid for cid, c in doc["channels"].items()}
    actions = {op["channel"]["$ref"].rsplit("/", 1)[1]: op for op in doc["operations"].values()}
    for dev in compiled.devices:
        request = actions[by_address[f"{root}/cmd/{dev.config.id}"]]
        ack = actions[by_address[f"{root}/cmd/{dev.config.id}/ack"]]
        assert request["action"] == "receive"
        assert ack["action"] == "send"
        assert request["bindings"]["mqtt"] == {"qos": 1, "retain": False, "bindingVersion": "0.2.0"}
    events = doc["channels"][by_address[f"{root}/events"]]["messages"]
    assert "event_command" in events
    kinds = doc["components"]["messages"]["command.request"]["payload"]["anyOf"]
    assert {k["$ref"].rsplit("/", 1)[1] for k in kinds} == {
        "WriteRequestJson",
        "CallRequestJson",
        "JobStartRequestJson",
        "JobControlRequestJson",
    }
    assert [s["host"] for s in doc["servers"].values()] == ["node-1:1883", "node-2:1883"]


def _id_of(message: Any) -> Any:
    """The request id a captured command, answer or audit event carries (probes are left out)."""
    try:
        body = message.json()
    except ValueError:
        return None
    return body.get("id") if isinstance(body, dict) else None
