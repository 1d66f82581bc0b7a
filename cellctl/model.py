"""The normalised model consumers rely on: quality, machine state and its vocabulary.

Values are aligned to OPC 40001 Machinery (item state, operation mode) with the
finer MTConnect execution state beside them; see docs/topics.md for the wire form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the wire types; cellctl.contract imports this module at run time
    from cellctl.contract.payloads import AlarmJson, JobJson, MachineJson, MaterialJson, OeeJson, ProgramJson


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class ItemState(StrEnum):
    """OPC 40001 MachineryItemState, plus `unknown` (a cellctl extension): the device
    answers, but the point its state comes from cannot be read, so no state is claimed."""

    UNKNOWN = "unknown"
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

    def as_dict(self) -> AlarmJson:
        return {"code": self.code, "text": self.text, "severity": self.severity}


@dataclass(frozen=True, slots=True)
class Program:
    """The job a machine runs (MTConnect program / OPC 40001 job): name, position in it,
    progress 0..1 and the estimated seconds left; any may be unknown."""

    name: str | None = None
    line: int | None = None
    progress: float | None = None
    eta: float | None = None

    def as_dict(self) -> ProgramJson:
        return {"name": self.name, "line": self.line, "progress": self.progress, "eta": self.eta}


@dataclass(frozen=True, slots=True)
class MachineState:
    """Per-device machine state; `raw_state` keeps the vendor's own value beside it.
    Immutable: the engine builds a new one whenever an input changes."""

    item_state: ItemState = ItemState.NOT_AVAILABLE
    operation_mode: OperationMode = OperationMode.NONE
    execution: Execution = Execution.UNAVAILABLE
    raw_state: str | None = None
    alarms: tuple[Alarm, ...] = ()
    counters: Mapping[str, int | float] = field(default_factory=dict)
    program: Program | None = None
    reason: str | None = None  # why the state is unknown (item_state `unknown`)

    def as_dict(self) -> MachineJson:
        out: MachineJson = {  # enum members: orjson writes their values
            "item_state": self.item_state,
            "operation_mode": self.operation_mode,
            "execution": self.execution,
            "raw_state": self.raw_state,
            "alarms": [a.as_dict() for a in self.alarms],
            "counters": dict(self.counters),
        }
        if self.program is not None:
            out["program"] = self.program.as_dict()
        if self.reason is not None:
            out["reason"] = self.reason
        return out


# -- jobs and OEE (cellctl/jobs/, docs/jobs.md) -------------------------------------------


class JobState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"


ENDED = frozenset({JobState.COMPLETED, JobState.ABORTED, JobState.FAILED})


@dataclass(frozen=True, slots=True)
class MaterialUse:
    """How much of one material a job used (OPC 40001-3 material used, MTConnect
    RawMaterial consumed); volume and mass when the profile gives diameter and density."""

    name: str
    amount: float
    unit: str
    volume_cm3: float | None = None
    mass_g: float | None = None
    lot: str | None = None  # MTConnect RawMaterial lot
    form: str | None = None  # MTConnect RawMaterial Form

    def as_dict(self) -> MaterialJson:
        out: MaterialJson = {
            "amount": round(self.amount, 4),
            "unit": self.unit,
            "volume_cm3": None if self.volume_cm3 is None else round(self.volume_cm3, 4),
            "mass_g": None if self.mass_g is None else round(self.mass_g, 4),
        }
        if self.lot is not None:
            out["lot"] = self.lot
        if self.form is not None:
            out["form"] = self.form
        return out


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    order_id: str | None
    program: str | None
    state: JobState
    start_ms: int
    end_ms: int | None = None
    reason: str | None = None
    produced: int = 0
    good: int = 0
    scrap: int = 0
    running_s: float = 0.0  # time executing during the job
    cycle_time_s: float | None = None  # running time per part produced
    materials: tuple[MaterialUse, ...] = ()  # one per material the profile declares
    energy_kwh: float | None = None  # the cell's energy meter's advance during the job (config `energy:`)

    def as_dict(self) -> JobJson:
        out: JobJson = {
            "job_id": self.job_id,
            "order_id": self.order_id,
            "program": self.program,
            "state": self.state.value,
            "start_ts": self.start_ms,
            "end_ts": self.end_ms,
            "reason": self.reason,
            "produced": self.produced,
            "good": self.good,
            "scrap": self.scrap,
            "running_s": round(self.running_s, 3),
            "cycle_time_s": None if self.cycle_time_s is None else round(self.cycle_time_s, 3),
        }
        if self.materials:
            out["materials"] = {m.name: m.as_dict() for m in self.materials}
        if self.energy_kwh is not None:
            out["energy_kwh"] = round(self.energy_kwh, 6)
        return out


@dataclass(frozen=True, slots=True)
class JobEvent:
    """started, paused, resumed, completed, aborted, failed — with the record as it stood."""

    event: str
    record: JobRecord


@dataclass(frozen=True, slots=True)
class Oee:
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    seconds: Mapping[str, float]
    produced: int
    good: int
    window: str | None = None  # "hour" or the shift's name
    start_ms: int | None = None  # when the window began

    def as_dict(self) -> OeeJson:
        out: OeeJson = {
            "availability": self.availability,
            "performance": self.performance,
            "quality": self.quality,
            "oee": self.oee,
            "seconds": dict(self.seconds),
            "produced": self.produced,
            "good": self.good,
        }
        if self.window is not None:
            out["window"] = self.window
        if self.start_ms is not None:
            out["start_ts"] = self.start_ms
        return out


# -- what the engine hands to the encoders ------------------------------------------------


@dataclass(frozen=True, slots=True)
class QualityChange:
    """A point's quality became `quality` (with `reason` unless good)."""

    quality: Quality
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceUpdate:
    """One scan's changes of one device: the engine's output on the hot path.

    `values` holds the points whose value changed beyond their deadband (engineering
    units, by point id); `quality` the points whose quality changed (a point may be in
    both); `machine` the new machine state when it changed, else None. The mappings are
    built for this update and never mutated afterwards."""

    device_id: str
    ts_ms: int
    values: Mapping[str, Any]
    quality: Mapping[str, QualityChange]
    machine: MachineState | None = None
    available: bool | None = None  # set when the device became available (True) or not (False)
    job: JobRecord | None = None  # the job record when it changed
    job_events: tuple[JobEvent, ...] = ()  # started, paused, resumed, completed, aborted, failed


@dataclass(frozen=True, slots=True)
class PointState:
    """One point as it stands now (for births and retained state messages)."""

    id: str
    value: Any
    quality: Quality
    reason: str | None
    unit: str | None
    src_ts: float | None  # epoch seconds from the device, when it has a clock


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """Everything known about one device now: what a retained state message or a
    Sparkplug DBIRTH says. Taken on demand, never on the per-sample path."""

    device_id: str
    ts_ms: int
    profile: str
    driver: str
    available: bool
    reason: str | None
    known: bool  # a first reading or a first failure has happened (nothing is known before)
    machine: MachineState | None  # None: the profile maps no machine state (a meter, a sensor)
    points: tuple[PointState, ...]
    # The device answers but every point is bad (wrong unit id, a profile for another
    # device type): why, else None.
    degraded: str | None = None
    job: JobRecord | None = None  # the current or last job record, when the profile maps jobs
    oee: Oee | None = None  # OEE of the current hour, when the profile maps jobs
    oee_shift: Oee | None = None  # OEE of the current shift, with a shift calendar (config `oee.shifts`)
