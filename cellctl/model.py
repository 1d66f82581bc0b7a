"""The normalised model consumers rely on: quality, machine state and its vocabulary.

Values are aligned to OPC 40001 Machinery (item state, operation mode) with the
finer MTConnect execution state beside them; see docs/topics.md for the wire form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class ItemState(StrEnum):
    NOT_AVAILABLE = "not_available"
    OUT_OF_SERVICE = "out_of_service"
    NOT_EXECUTING = "not_executing"
    EXECUTING = "executing"


class OperationMode(StrEnum):
    NONE = "none"
    MAINTENANCE = "maintenance"
    SETUP = "setup"
    PROCESSING = "processing"


class Execution(StrEnum):
    UNAVAILABLE = "unavailable"
    READY = "ready"
    ACTIVE = "active"
    INTERRUPTED = "interrupted"
    FEED_HOLD = "feed_hold"
    STOPPED = "stopped"
    OPTIONAL_STOP = "optional_stop"
    PROGRAM_STOPPED = "program_stopped"
    PROGRAM_COMPLETED = "program_completed"
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class Alarm:
    code: str
    text: str
    severity: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "text": self.text, "severity": self.severity}


@dataclass(frozen=True, slots=True)
class Program:
    """The job a machine runs (MTConnect program / OPC 40001 job): name, position in it,
    progress 0..1 and the estimated seconds left; any may be unknown."""

    name: str | None = None
    line: int | None = None
    progress: float | None = None
    eta: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "line": self.line, "progress": self.progress, "eta": self.eta}


@dataclass(slots=True)
class MachineState:
    """Per-device machine state; `raw_state` keeps the vendor's own value beside it."""

    item_state: ItemState = ItemState.NOT_AVAILABLE
    operation_mode: OperationMode = OperationMode.NONE
    execution: Execution = Execution.UNAVAILABLE
    raw_state: str | None = None
    alarms: list[Alarm] = field(default_factory=list)
    counters: dict[str, int | float] = field(default_factory=dict)
    program: Program | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "item_state": self.item_state.value,
            "operation_mode": self.operation_mode.value,
            "execution": self.execution.value,
            "raw_state": self.raw_state,
            "alarms": [a.as_dict() for a in self.alarms],
            "counters": dict(self.counters),
        }
        if self.program is not None:
            out["program"] = self.program.as_dict()
        return out
