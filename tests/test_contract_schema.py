"""The payload registry and its generated schemas (issue 14 item 1): every schema is valid
JSON Schema, the CLI prints them, and the capture checker fails on what breaks the
contract (so the real-run tests in test_contract_payloads.py can fail)."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from cellctl.cli.main import cli
from cellctl.contract.registry import PAYLOADS, payloads_for
from cellctl.contract.schema import payload_schema
from cellctl.testing import Message
from cellctl.testing.contract import check_messages

ROOT = "uns/v1/acme/berlin/machining/line-1/cell-3"


def msg(topic: str, body: object | bytes) -> Message:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Message(f"{ROOT}/{topic}", payload, False, 1, time.time())


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_every_payload_schema_is_valid_json_schema(name: str) -> None:
    Draft202012Validator.check_schema(payload_schema(name))
    Draft202012Validator.check_schema(payload_schema(name, strict=True))


def test_cli_lists_every_payload_and_prints_its_schema() -> None:
    listed = CliRunner().invoke(cli, ["schema", "payload", "--list"])
    assert listed.exit_code == 0, listed.output
    assert [line.split()[0] for line in listed.output.splitlines()] == list(PAYLOADS)
    shown = CliRunner().invoke(cli, ["schema", "payload", "data"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == payload_schema("data")
    unknown = CliRunner().invoke(cli, ["schema", "payload", "datta"])
    assert unknown.exit_code == 2
    assert "no payload named 'datta'" in unknown.output


@pytest.mark.parametrize(
    ("topic", "name"),
    [
        ("status", "status"),
        ("mill-1/state", "state"),
        ("mill-1/data", "data"),
        ("mill-1/points/spindle_speed", "point"),
        ("outbox", "outbox"),
        ("manifest", "manifest"),
        ("cmd/mill-1", "command.request"),
        ("cmd/mill-1/ack", "command.result"),
    ],
)
def test_topics_resolve_to_their_payload(topic: str, name: str) -> None:
    assert [p.name for p in payloads_for(ROOT, f"{ROOT}/{topic}")] == [name]


def test_events_carry_either_event() -> None:
    assert {p.name for p in payloads_for(ROOT, f"{ROOT}/events")} == {
        "event.outbox_dropped",
        "event.device_removed",
        "event.command",
    }


GOOD_DATA = {"ts": 1764012938123, "seq": 1, "values": {"t": 1.5}, "quality": {"t": {"q": "good"}}}


def test_checker_accepts_a_good_message_and_flags_each_kind_of_break() -> None:
    assert not check_messages([msg("m/data", GOOD_DATA)], ROOT).problems
    bad = [
        msg("m/data", {**GOOD_DATA, "seq": "1"}),  # a type changed
        msg("m/data", {**GOOD_DATA, "extra": 1}),  # a field the contract does not name
        msg("m/data", {"ts": 1, "values": {}}),  # a required field missing
        msg("m/data", {**GOOD_DATA, "quality": {"t": {"q": "fine"}}}),  # not in the vocabulary
        msg("m/data", b""),  # data is never cleared
        msg("m/data", b"{not json"),
        msg("m/whatever", {"x": 1}),  # no payload registered for the topic
        msg("events", {"ts": 1, "event": "device_exploded", "device": "m"}),
    ]
    report = check_messages(bad, ROOT)
    assert len(report.problems) == len(bad), report.problems
    assert "seq" in report.problems[0]
    assert "extra" in report.problems[1]


def test_published_schemas_stay_open_to_additions_strict_ones_do_not() -> None:
    body = {**GOOD_DATA, "added_in_v1_1": True}
    assert Draft202012Validator(payload_schema("data")).is_valid(body)
    assert not Draft202012Validator(payload_schema("data", strict=True)).is_valid(body)
