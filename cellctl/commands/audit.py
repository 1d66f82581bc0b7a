"""The audit trail: every command that reaches a final state (done, failed, refused) is
one log line and one event handed to the sinks (the UNS `<root>/events` topic through
the durable outbox; the Sparkplug node's `Commands/*` metrics), and counted by outcome
and reason. Refusals of one reason (and rebirth requests) are logged once per burst (a
flood stays readable) but every one is counted and every one is an event."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from cellctl.commands.burst import BurstLog
from cellctl.commands.model import Command, CommandResult

if TYPE_CHECKING:
    from cellctl.contract.payloads import CommandEventJson

log = structlog.get_logger("cellctl.commands")

AuditSink = Callable[["CommandEventJson"], None]


class Audit:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.sinks: list[AuditSink] = []
        self.outcomes: Counter[str] = Counter()  # accepted, done, failed, refused, repeated
        self.reasons: Counter[str] = Counter()  # "<state>:<reason>"
        self.events = 0
        self.burst = BurstLog(clock=clock)

    def accepted(self) -> None:
        self.outcomes["accepted"] += 1

    def repeat(self, cmd: Command, first: CommandResult) -> None:
        """A request id seen before: nothing ran; audited as a repeat with the first result."""
        self.outcomes["repeated"] += 1
        self._emit(cmd, first, duplicate=True)

    def final(self, cmd: Command, result: CommandResult) -> None:
        """One command's last word: counted, logged, and one event to every sink."""
        self.outcomes[result.state] += 1
        if result.reason is not None:
            self.reasons[f"{result.state}:{result.reason}"] += 1
        self._emit(cmd, result)

    def _emit(self, cmd: Command, result: CommandResult, *, duplicate: bool = False) -> None:
        duration = None if result.finished_ms is None else result.finished_ms - result.received_ms
        event: CommandEventJson = {
            "ts": result.finished_ms or int(time.time() * 1000),
            "event": "command",
            "id": cmd.request_id,
            "source": cmd.source.as_dict(),
            "device": cmd.device_id,
            "command": cmd.kind,
            "args": cmd.audit_args(),
            "decision": result.state,
            "reason": result.reason,
            "message": result.message,
            "readback": result.readback,
            "duration_ms": duration,
            "validate_only": cmd.validate_only,
        }
        if duplicate:
            event["duplicate"] = True
        fields = {k: v for k, v in event.items() if k not in ("ts", "event")}
        if duplicate:
            log.info("command_repeated", **fields)
        elif result.state == "refused":
            self.burst.warning(f"refused:{result.reason}", "command_refused", **fields)
        elif result.state == "failed":
            log.warning("command_failed", **fields)
        elif cmd.kind == "rebirth":
            self.burst.info("done:rebirth", "command_done", **fields)  # a flood of them stays one line
        else:
            log.info("command_done", **fields)
        for sink in self.sinks:
            try:
                sink(event)
            except Exception as exc:  # an audit sink must not stop the command path
                log.exception("command_audit_sink_failed", error=repr(exc), id=cmd.request_id)
        self.events += 1
