"""UNS JSON commands: `<root>/cmd/<device>` in, results out.

A command is one JSON object (docs/commands.md):

    {"id": "r-17", "command": "write", "args": {"point": "setpoint", "value": 250.0},
     "expires": 1764012999000, "validate_only": false}

Every state it reaches (accepted, then done | failed | refused) is answered on the MQTT 5
response topic with the request's correlation data when the request names one, else on
`<root>/cmd/<device>/ack`. A response topic under the cell's own root is ignored (the
daemon never publishes where commands or data are read). Retained commands are refused
(a retained command would run again after every restart), and so is anything not
matching the schema exactly: no field is converted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cellctl.commands.model import COMMAND_KINDS, Command, CommandKind, CommandResult, Source, client_declared
from cellctl.commands.policy import Refusal
from cellctl.commands.router import CommandRouter

MAX_ENVELOPE_BYTES = 64 * 1024  # beside an inline program
REQUEST_ID = r"^[\x21-\x7e]{1,128}$"  # printable ASCII, no spaces

# The arguments each kind takes: required, optional.
ARGS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "write": (frozenset({"point", "value"}), frozenset()),
    "call": (frozenset({"method"}), frozenset({"args"})),
    "job_start": (frozenset({"name"}), frozenset({"program", "lots"})),
    "job_pause": (frozenset(), frozenset()),
    "job_resume": (frozenset(), frozenset()),
    "job_cancel": (frozenset(), frozenset()),
}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: Annotated[str, Field(pattern=REQUEST_ID)]
    command: Literal["write", "call", "job_start", "job_pause", "job_resume", "job_cancel"]
    args: dict[str, Any] = {}
    expires: Annotated[int, Field(ge=0)] | None = None  # epoch ms
    validate_only: bool = False


def command_filter(root: str) -> str:
    return f"{root}/cmd/+"


def ack_topic(root: str, device_id: str) -> str:
    return f"{root}/cmd/{device_id}/ack"


def _first_error(exc: ValidationError) -> str:
    e = exc.errors(include_url=False)[0]
    loc = ".".join(str(x) for x in e["loc"]) or "body"
    return f"{loc}: {e['msg'].lower()}"


class UnsCommands:
    """Turns command messages into router commands and results into answers."""

    def __init__(
        self,
        root: str,
        router: CommandRouter,
        publish: Callable[[str, bytes, bytes | None], bool],
        *,
        max_program_bytes: int,
    ) -> None:
        self.root = root
        self.prefix = f"{root}/cmd/"
        self.router = router
        self.publish = publish  # (topic, payload, correlation data) -> sent
        self.max_bytes = MAX_ENVELOPE_BYTES + 2 * max_program_bytes  # JSON may escape a little
        self.unanswered = 0  # results that could not be published (not connected)

    def is_command(self, topic: str) -> bool:
        rest = topic[len(self.prefix) :] if topic.startswith(self.prefix) else ""
        return bool(rest) and "/" not in rest

    def message(
        self,
        topic: str,
        payload: bytes,
        retain: bool,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> None:
        """One message on `<root>/cmd/<device>` (with its MQTT 5 properties); never raises."""
        device_id = topic[len(self.prefix) :]
        answer_to = ack_topic(self.root, device_id)
        correlation = None
        rt = response_topic
        if rt and not rt.startswith(self.root + "/") and rt != self.root and not any(c in rt for c in "+#"):
            answer_to, correlation = rt, correlation_data
        source = Source("uns", topic, client_declared(user_properties))

        def reply(result: CommandResult) -> None:
            if not self.publish(answer_to, orjson.dumps(result.as_dict()), correlation):
                self.unanswered += 1

        received = time.time_ns() // 1_000_000
        try:
            cmd = self._parse(device_id, payload, source, received)
        except Refusal as exc:
            rid, kind = self._salvage(payload)
            bare = Command(rid, device_id, kind, {}, source, received)
            self.router.refuse(bare, exc, reply)
            return
        if retain:
            self.router.refuse(cmd, Refusal("retained", "a retained command is never executed"), reply)
            return
        self.router.submit(cmd, reply)

    def _parse(self, device_id: str, payload: bytes, source: Source, received: int) -> Command:
        if len(payload) > self.max_bytes:
            raise Refusal("too_large", f"{len(payload)} bytes (at most {self.max_bytes})")
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise Refusal("invalid", f"not JSON: {str(exc)[:120]}") from None
        try:
            body = Body.model_validate(data)
        except ValidationError as exc:
            raise Refusal("invalid", _first_error(exc)) from None
        required, optional = ARGS[body.command]
        given = set(body.args)
        if not required <= given or not given <= required | optional:
            missing, extra = sorted(required - given), sorted(given - required - optional)
            raise Refusal(
                "invalid",
                f"command {body.command!r}: "
                + "; ".join(
                    [f"missing args {missing}"] * bool(missing) + [f"unknown args {extra}"] * bool(extra)
                ),
            )
        for key in ("point", "method", "name"):
            if key in body.args and not isinstance(body.args[key], str):
                raise Refusal("invalid", f"args.{key}: expected a string, got {body.args[key]!r}"[:300])
        if "args" in body.args and not isinstance(body.args["args"], Mapping):
            raise Refusal("invalid", "args.args: expected an object")
        kind: CommandKind = body.command
        return Command(body.id, device_id, kind, body.args, source, received, body.expires, body.validate_only)

    @staticmethod
    def _salvage(payload: bytes) -> tuple[str, CommandKind]:
        """The request id and kind of a refused body, when it has usable ones (for the answer)."""
        try:
            data = orjson.loads(payload) if len(payload) <= MAX_ENVELOPE_BYTES else None
        except orjson.JSONDecodeError:
            data = None
        rid, kind = "", "write"
        if isinstance(data, dict):
            if isinstance(data.get("id"), str) and len(data["id"]) <= 128:
                rid = data["id"]
            if data.get("command") in COMMAND_KINDS:
                kind = data["command"]
        return rid, kind  # type: ignore[return-value]
