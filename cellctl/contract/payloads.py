"""The UNS JSON payloads as typed dicts: the encoders annotate the dicts they build with
these types (mypy checks the code against the contract, at no runtime cost) and the JSON
Schemas of the contract are generated from them (`cellctl schema payload NAME`).

Wording of docs/topics.md. A field that only some messages carry is `NotRequired`; a
field that is always there but may be null is `X | None`. Timestamps are integer
milliseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, NotRequired

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from cellctl.commands.model import AuditKind, Channel, CommandKind, FailureReason, RefusalReason, State
from cellctl.model import Execution, ItemState, OperationMode, Quality

_DOCS = ConfigDict(use_attribute_docstrings=True)

PointValue = bool | int | float | str | None
"""An engineering value: scale and offset applied; null when unknown or not encodable."""

DropReason = Literal["max_bytes", "max_age", "superseded", "backlog"]


@with_config(_DOCS)
class QualityJson(TypedDict):
    """A point's quality; `reason` says why when it is not good."""

    q: Quality
    reason: NotRequired[str]


@with_config(_DOCS)
class AlarmJson(TypedDict):
    """An active alarm of the machine."""

    code: str
    text: str
    severity: str


@with_config(_DOCS)
class ProgramJson(TypedDict):
    """The job the machine runs; any part may be unknown (null)."""

    name: str | None
    line: int | None
    progress: float | None
    """0..1"""
    eta: float | None
    """Estimated seconds left."""


@with_config(_DOCS)
class MachineJson(TypedDict):
    """The normalised machine state (OPC 40001 item state and operation mode, MTConnect
    execution) with the vendor's own state value beside it."""

    item_state: ItemState
    operation_mode: OperationMode
    execution: Execution
    raw_state: str | None
    """The vendor's own state value, as a string."""
    alarms: list[AlarmJson]
    counters: dict[str, int | float]
    """Part counters by name (`good`, `bad`) when the profile maps them."""
    program: NotRequired[ProgramJson]
    """Only when the profile maps a job."""
    reason: NotRequired[str]
    """Why the state is `unknown`: which point and why."""


@with_config(_DOCS)
class StatusJson(TypedDict):
    """`<root>/status`, retained: whether the cell's daemon is connected."""

    status: Literal["online", "offline"]
    reason: NotRequired[Literal["shutdown", "connection_lost"]]
    """Only when offline: a clean stop, or the MQTT last will."""


@with_config(_DOCS)
class DataJson(TypedDict):
    """`<root>/<device>/data`: the changes of one scan of one device."""

    historical: NotRequired[Literal[True]]
    """Only on messages replayed from the outbox after an outage (first key)."""
    ts: int
    """When the daemon took the sample (ms since the epoch)."""
    seq: int
    """Per device, +1 per message since the daemon started; a gap is a drop or a loss."""
    values: Mapping[str, PointValue]
    """Engineering values of the points that changed, by point id."""
    quality: NotRequired[dict[str, QualityJson]]
    """Points whose quality changed in this scan."""
    machine: NotRequired[MachineJson]
    """Only when the machine state changed."""
    available: NotRequired[bool]
    """Only when availability changed in this scan."""


@with_config(_DOCS)
class PointStateJson(TypedDict):
    """One point in a retained state message."""

    v: PointValue
    q: Quality
    reason: NotRequired[str]
    unit: NotRequired[str]
    src_ts: NotRequired[int]
    """The device's own timestamp of the value (ms), when it has a clock."""


@with_config(_DOCS)
class StateJson(TypedDict):
    """`<root>/<device>/state`, retained: the full snapshot of one device."""

    historical: NotRequired[Literal[True]]
    """Only on messages replayed from the outbox (then never retained)."""
    version: int
    """The payload version (1 within uns/v1)."""
    ts: int
    device: str
    profile: str
    driver: str
    available: bool
    reason: str | None
    """Why the device is unavailable, else null."""
    degraded: str | None
    """Why every point is bad while the device answers, else null."""
    machine: MachineJson | None
    """Null for a device whose profile maps no machine state."""
    points: dict[str, PointStateJson]
    job: NotRequired[JobJson]
    """The current or last job, when the profile maps jobs (docs/jobs.md)."""
    oee: NotRequired[OeeJson]
    """OEE of the current hour, when the profile maps jobs."""
    oee_shift: NotRequired[OeeJson]
    """OEE of the current shift, with a shift calendar (`oee.shifts`) and during a shift."""


@with_config(_DOCS)
class PointJson(TypedDict):
    """`<root>/<device>/points/<point>`, retained (per_point mode): one point's value, or
    its quality change without a value."""

    historical: NotRequired[Literal[True]]
    v: NotRequired[PointValue]
    """Absent on a quality change without a new value."""
    ts: int
    q: Quality
    reason: NotRequired[str]


@with_config(_DOCS)
class OutboxJson(TypedDict):
    """`<root>/outbox`, retained: what waits in the durable outbox and what it dropped."""

    ts: int
    messages: int
    """Messages not yet acknowledged by the broker."""
    bytes: int
    max_bytes: int
    oldest_ts: int | None
    """When the oldest waiting message entered the outbox; null when empty."""
    dropped_total: int
    """Messages given up since the daemon started."""
    dropped: dict[str, int]
    """The same by reason (max_bytes, max_age, superseded, backlog)."""


@with_config(_DOCS)
class OutboxDroppedEvent(TypedDict):
    """`<root>/events`: the outbox dropped messages for one reason (summed since the last
    such event that could be sent)."""

    ts: int
    event: Literal["outbox_dropped"]
    reason: DropReason
    count: int
    bytes: int
    devices: dict[str, int]
    """Dropped messages by device (at most 100 devices listed)."""
    from_ts: int | None
    """When the first dropped message had entered the outbox."""
    to_ts: int | None
    """When the last dropped message had entered the outbox."""


# -- commands (docs/commands.md) ---------------------------------------------------------

_REQUEST = ConfigDict(use_attribute_docstrings=True, extra="forbid")  # the daemon refuses unknown fields

CommandReasonJson = RefusalReason | FailureReason
RequestId = Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,128}$")]
"""1-128 printable ASCII characters, no spaces."""
EpochMs = Annotated[int, Field(ge=0)]
LotId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")]


@with_config(_REQUEST)
class WriteArgsJson(TypedDict):
    """Writes one point in engineering units; its type is checked against the point's."""

    point: str
    value: Any


@with_config(_REQUEST)
class CallArgsJson(TypedDict):
    """Calls a method the profile declares, with its arguments by name."""

    method: str
    args: NotRequired[dict[str, Any]]


@with_config(_REQUEST)
class JobStartArgsJson(TypedDict):
    """Starts the job `name` from the job store, or streams `program` (inline G-code)."""

    name: str
    program: NotRequired[str]
    lots: NotRequired[dict[str, LotId]]
    """The lot of each job material the job runs on (MTConnect RawMaterial lot), by the
    material's name in the profile's `job.materials`; a profile's `lot_point` comes first."""


@with_config(_REQUEST)
class NoArgsJson(TypedDict):
    """The job control commands take no arguments."""


@with_config(_REQUEST)
class _RequestJson(TypedDict):
    id: RequestId
    """Repeated within the idempotency window: the first result again, nothing runs."""
    expires: NotRequired[EpochMs | None]
    """Refused as `expired` when it arrives later (ms since the epoch)."""
    validate_only: NotRequired[bool]
    """Every check, interlocks included, but the command does not run."""


@with_config(_REQUEST)
class WriteRequestJson(_RequestJson):
    """A `write` command."""

    command: Literal["write"]
    args: WriteArgsJson


@with_config(_REQUEST)
class CallRequestJson(_RequestJson):
    """A `call` command."""

    command: Literal["call"]
    args: CallArgsJson


@with_config(_REQUEST)
class JobStartRequestJson(_RequestJson):
    """A `job_start` command."""

    command: Literal["job_start"]
    args: JobStartArgsJson


@with_config(_REQUEST)
class JobControlRequestJson(_RequestJson):
    """A `job_pause`, `job_resume` or `job_cancel` command."""

    command: Literal["job_pause", "job_resume", "job_cancel"]
    args: NotRequired[NoArgsJson]


# The kinds are told apart by `command` (a const in each); no OpenAPI `discriminator`
# keyword, which AsyncAPI's schema format defines differently (a string).
CommandRequestJson = WriteRequestJson | CallRequestJson | JobStartRequestJson | JobControlRequestJson
"""`<root>/cmd/<device>`, never retained: one command from the MES. Nothing is converted:
a field of another type or a field not named here refuses the command (`invalid`)."""


@with_config(_DOCS)
class CommandResultJson(TypedDict):
    """`<root>/cmd/<device>/ack` or the request's MQTT 5 response topic: one answer per
    state the command reaches (`accepted` first unless refused at once)."""

    id: str
    """The request's id; empty when the request had no usable one."""
    device: str
    command: CommandKind
    state: State
    ts_received: int
    reason: NotRequired[CommandReasonJson]
    """Why it was refused or failed."""
    message: NotRequired[str]
    """The same for a person."""
    ts_accepted: NotRequired[int]
    ts_finished: NotRequired[int]
    readback: NotRequired[PointValue]
    """A done write: the value the device reports."""
    result: NotRequired[dict[str, Any]]
    """A done call: its outputs by the profile's result names."""
    validate_only: NotRequired[Literal[True]]
    duplicate: NotRequired[Literal[True]]
    """The answer to a repeated request id: nothing ran again."""


@with_config(_DOCS)
class CommandSourceJson(TypedDict):
    """Where a command came from."""

    channel: Channel
    topic: str | None
    client_declared: NotRequired[dict[str, str]]
    """The request's MQTT 5 user properties as the client sent them (never verified)."""


@with_config(_DOCS)
class CommandEventJson(TypedDict):
    """`<root>/events`: the audit record of one command that reached a final state (or of a
    repeated request id), through the durable outbox."""

    historical: NotRequired[Literal[True]]
    ts: int
    event: Literal["command"]
    id: str
    source: CommandSourceJson
    device: str
    command: AuditKind
    args: dict[str, Any]
    """The request's arguments; an inline program as `"<N bytes>"`."""
    decision: State
    reason: CommandReasonJson | None
    message: str | None
    readback: PointValue
    duration_ms: int | None
    validate_only: bool
    duplicate: NotRequired[Literal[True]]


@with_config(_DOCS)
class MaterialJson(TypedDict):
    """One material used during a job (OPC 40001-3 material used; MTConnect RawMaterial)."""

    amount: float
    unit: str
    volume_cm3: float | None
    """From a length and the profile's diameter_mm (filament)."""
    mass_g: float | None
    """From the volume and the profile's density_g_cm3."""
    lot: NotRequired[str]
    """The material's lot in use (MTConnect RawMaterial lot): from the profile's lot_point, the
    job's `job_start` lots or the device config's lots, the first that gives one."""
    form: NotRequired[str]
    """The profile's material form (MTConnect RawMaterial Form: bar, block, sheet, filament, ...)."""


@with_config(_DOCS)
class JobJson(TypedDict):
    """A job record (docs/jobs.md: OPC 40001-3 and MTConnect semantics)."""

    job_id: str
    order_id: str | None
    program: str | None
    state: Literal["running", "paused", "completed", "aborted", "failed"]
    start_ts: int
    end_ts: int | None
    reason: str | None
    """Why it ended when not completed."""
    produced: int
    good: int
    scrap: int
    running_s: float
    """Time executing during the job, seconds."""
    cycle_time_s: float | None
    """running_s / produced."""
    materials: NotRequired[dict[str, MaterialJson]]
    """Material used during the job, by the profile's material name."""
    energy_kwh: NotRequired[float]
    """Energy used during the job: the advance of the cell's energy meter (device `energy:`)."""


@with_config(_DOCS)
class CurrentJobJson(JobJson):
    """`<root>/<device>/job`, retained: the device's current or last job."""

    historical: NotRequired[Literal[True]]
    ts: int


@with_config(_DOCS)
class JobEventJson(TypedDict):
    """`<root>/<device>/events`: a job started, paused, resumed or ended."""

    historical: NotRequired[Literal[True]]
    ts: int
    event: Literal["job_started", "job_paused", "job_resumed", "job_completed", "job_aborted", "job_failed"]
    device: str
    job: JobJson


@with_config(_DOCS)
class OeeJson(TypedDict):
    """OEE over a window (docs/jobs.md): the current hour, or the current shift; a factor
    is null when not known."""

    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    seconds: dict[str, float]
    """Time in each item state."""
    produced: int
    good: int
    window: NotRequired[str]
    """`hour`, or the shift's name from the calendar."""
    start_ts: NotRequired[int]
    """When the window began, ms since the epoch."""


@with_config(_DOCS)
class DeviceRemovedEvent(TypedDict):
    """`<root>/events`: a reload removed a device; its retained state (and per-point
    topics) are cleared with empty retained messages."""

    historical: NotRequired[Literal[True]]
    ts: int
    event: Literal["device_removed"]
    device: str


@with_config(_DOCS)
class IdentityJson(TypedDict):
    """The ISA-95 path of the cell."""

    enterprise: str
    site: str
    area: str
    line: str
    cell: str


@with_config(_DOCS)
class ManifestDeviceJson(TypedDict):
    """One device of the cell as configured now."""

    id: str
    driver: str
    profile: str
    profile_hash: str | None
    """sha256 of the profile file, shortened; null when it cannot be read."""
    points: list[str]
    writable: list[str]
    machine_state: bool
    counters: bool
    job: bool
    poll_interval: float
    """Seconds."""
    joined_ts: int
    """When the device joined the running cell (ms)."""


@with_config(_DOCS)
class ManifestJson(TypedDict):
    """`<root>/manifest`, retained: what the cell is now."""

    historical: NotRequired[Literal[True]]
    version: int
    ts: int
    cellctl: str
    """The daemon's version."""
    cell: IdentityJson
    config_hash: str | None
    formats: list[Literal["uns", "sparkplug"]]
    devices: list[ManifestDeviceJson]
