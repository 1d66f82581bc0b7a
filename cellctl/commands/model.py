"""The typed command model every source produces (UNS JSON, Sparkplug DCMD, the CLI
through the backbone) and the typed result the router gives back. Small frozen
dataclasses: the wire forms live in the sources (uns.py, sparkplug.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from cellctl.contract.payloads import CommandResultJson, CommandSourceJson

CommandKind = Literal["write", "call", "job_start", "job_pause", "job_resume", "job_cancel"]
COMMAND_KINDS: tuple[CommandKind, ...] = ("write", "call", "job_start", "job_pause", "job_resume", "job_cancel")
# What the audit records: the routed kinds, and a Sparkplug NCMD rebirth (a session matter
# of the edge node, never routed to a device, but a command someone sent all the same).
AuditKind = CommandKind | Literal["rebirth"]
State = Literal["accepted", "done", "failed", "refused"]
# folder: the local job folder (cellctl/commands/folder.py)
Channel = Literal["uns", "sparkplug", "cli", "folder"]

# Why a command was refused (nothing reached the machine) ...
RefusalReason = Literal[
    "invalid",  # the request itself is malformed (JSON, fields, types of the envelope)
    "retained",  # delivered as a retained message: never executed
    "expired",  # older than its `expires`
    "disabled",  # commands are off (commands.enabled, sparkplug.device_writes)
    "unknown_device",
    "not_allowed",  # the device, point or command is not on the policy's allow-list
    "not_writable",  # the profile has no such writable point
    "unknown_command",  # the profile declares no such method
    "wrong_type",  # a value of another type than the point's or argument's (never coerced)
    "out_of_range",  # outside min/max, not a finite number, too long
    "not_allowed_value",  # not one of the policy's `one_of`, or off its `step`
    "too_large",  # an inline program over `max_program_bytes`
    "unknown_job",  # no such program in the job store
    "rate_limited",
    "busy",  # too many commands waiting for the device
    "interlock",  # a declared condition on the machine's state does not hold right now
    "not_supported",  # the device's driver cannot do this (no JobControl, no Caller)
    # Sparkplug's own (cellctl/commands/sparkplug.py)
    "not_birthed",  # DCMD for a device not birthed in this session
    "policy",  # DCMD while sparkplug.device_writes is `refuse`
    "too_long",  # a string metric over 1024 characters
]
# ... and why an accepted one failed at the device.
FailureReason = Literal[
    "rejected",  # the device answered and refused (Modbus exception, OPC UA Bad status)
    "unavailable",  # the device is not connected, or went away
    "timeout",
    "readback_mismatch",  # the device reports another value than the one written
    "error",  # a driver error
]


@dataclass(frozen=True, slots=True)
class Source:
    """Where a command came from. `client` holds what the sender says about itself (MQTT 5
    user properties, the CLI's user): client-declared, never verified, kept for the audit."""

    channel: Channel
    topic: str | None = None
    client: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> CommandSourceJson:
        out: CommandSourceJson = {"channel": self.channel, "topic": self.topic}
        if self.client:
            out["client_declared"] = dict(self.client)
        return out


@dataclass(frozen=True, slots=True)
class Command:
    """One request to one device. `args` by kind: write {point, value}; call {method,
    args: {name: value}}; job_start {name, program?, lots?} (program: inline bytes; lots: {material: lot id});
    the job
    control kinds take none."""

    request_id: str
    device_id: str
    kind: AuditKind
    args: Mapping[str, Any]
    source: Source
    received_ms: int
    expires_ms: int | None = None
    validate_only: bool = False

    def audit_args(self) -> dict[str, Any]:
        """The arguments as the audit shows them: an inline program by its size only."""
        out = dict(self.args)
        program = out.get("program")
        if isinstance(program, (bytes, str)):
            out["program"] = f"<{len(program)} bytes>"
        return out


@dataclass(frozen=True, slots=True)
class CommandResult:
    """Where a command stands. `reason` is a RefusalReason/FailureReason when refused or
    failed; `message` says it for a person (never more than the reason needs)."""

    request_id: str
    device_id: str
    kind: AuditKind
    state: State
    received_ms: int
    reason: RefusalReason | FailureReason | None = None
    message: str | None = None
    accepted_ms: int | None = None
    finished_ms: int | None = None
    readback: Any = None
    result: Mapping[str, Any] | None = None
    validate_only: bool = False
    duplicate: bool = False

    @property
    def final(self) -> bool:
        return self.state != "accepted"

    def as_dict(self) -> CommandResultJson:
        """The answer on the wire (docs/commands.md; the contract's `command.result`)."""
        out: CommandResultJson = {
            "id": self.request_id,
            "device": self.device_id,
            "command": self.kind,  # type: ignore[typeddict-item]  # a rebirth has no answer on the wire
            "state": self.state,
            "ts_received": self.received_ms,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        if self.message is not None:
            out["message"] = self.message
        if self.accepted_ms is not None:
            out["ts_accepted"] = self.accepted_ms
        if self.finished_ms is not None:
            out["ts_finished"] = self.finished_ms
        if self.state == "done" and self.kind == "write":
            out["readback"] = self.readback
        if self.result is not None:
            out["result"] = dict(self.result)
        if self.validate_only:
            out["validate_only"] = True
        if self.duplicate:
            out["duplicate"] = True
        return out

    def again(self) -> CommandResult:
        """This result as the answer to a repeated request id."""
        return replace(self, duplicate=True)


def client_declared(user_properties: Sequence[tuple[str, str]]) -> dict[str, str]:
    """MQTT 5 user properties as the audit keeps them: bounded in count and length."""
    return {k[:64]: v[:256] for k, v in user_properties[:32]}
