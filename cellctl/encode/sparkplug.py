"""A device as Sparkplug metrics: its BIRTH (every metric with name, alias, datatype and
current value) and its DATA (only what changed, by alias), from the engine's output.

Metric names: each point by its id; the normalised machine state as `Machine/...`
(`item_state`, `operation_mode`, `execution`, `raw_state`, `reason`, `alarms` as a JSON string,
`counters/good|bad`, and `program/name|line|progress|eta` when the profile maps a job);
for a profile with `job:`, the job record as `Job/...` (docs/jobs.md: `id`, `order_id`,
`program`, `state`, `event`, `start_ts`, `end_ts`, `reason`, `produced`, `good`, `scrap`,
`running_s`, `cycle_time_s`, `materials/<name>/amount|volume_cm3|mass_g|lot`, `energy_kwh`)
and the current window's OEE as `OEE/...` (`availability`, `performance`, `quality`,
`oee`, `produced`, `good`, `seconds/<item state>`), and with a shift calendar the current
shift's as `OEE/shift/...` (the same, plus `name` and `start_ts`). Aliases come from the node's
`AliasBook`, so they keep their meaning across restarts (stored DATA refers to metrics by
alias).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from cellctl.config.loader import CompiledDevice
from cellctl.model import (
    DeviceSnapshot,
    DeviceUpdate,
    ItemState,
    JobRecord,
    MachineState,
    Oee,
    Quality,
    QualityChange,
)
from cellctl.outbox import Record
from cellctl.sparkplug.codec import (
    POINT_DATATYPES,
    QUALITY_REASON_KEY,
    DataType,
    EncodeError,
    Metric,
    MetricDef,
    MetricTable,
    PlainValue,
    PropertyValue,
    encode_data,
    encode_data_items,
    quality_properties,
)
from cellctl.sparkplug.state import AliasBook


class RecordSink(Protocol):
    """Where encoded messages go: the outbox writer."""

    def put(self, record: Record) -> bool: ...


MACHINE_PREFIX: Final = "Machine/"
MACHINE_STRINGS: Final = ("item_state", "operation_mode", "execution", "raw_state", "reason")
ALARMS: Final = "alarms"
PROGRAM_FIELDS: Final[Mapping[str, DataType]] = {
    "name": DataType.String,
    "line": DataType.Int64,
    "progress": DataType.Double,
    "eta": DataType.Double,
}

JOB_PREFIX: Final = "Job/"
JOB_FIELDS: Final[Mapping[str, DataType]] = {
    "id": DataType.String,
    "order_id": DataType.String,
    "program": DataType.String,
    "state": DataType.String,
    "event": DataType.String,  # the last job event (started, paused, ..., completed)
    "start_ts": DataType.DateTime,
    "end_ts": DataType.DateTime,
    "reason": DataType.String,
    "produced": DataType.Int64,
    "good": DataType.Int64,
    "scrap": DataType.Int64,
    "running_s": DataType.Double,
    "cycle_time_s": DataType.Double,
}
OEE_PREFIX: Final = "OEE/"
OEE_FIELDS: Final[Mapping[str, DataType]] = {
    "availability": DataType.Double,
    "performance": DataType.Double,
    "quality": DataType.Double,
    "oee": DataType.Double,
    "produced": DataType.Int64,
    "good": DataType.Int64,
    **{f"seconds/{s.value}": DataType.Double for s in ItemState if s != ItemState.UNKNOWN},
}
SHIFT: Final = "shift/"
SHIFT_FIELDS: Final[Mapping[str, DataType]] = {
    "name": DataType.String,
    "start_ts": DataType.DateTime,
    **OEE_FIELDS,
}


@dataclass(frozen=True, slots=True)
class DeviceModel:
    """One device's metrics as birthed; fixed for the life of the process."""

    id: str
    table: MetricTable
    points: tuple[MetricDef, ...]  # aligned with the device's PointTable
    by_point: Mapping[str, tuple[int, MetricDef]]  # point id -> (index, def)
    machine: Mapping[str, MetricDef]  # machine field ("item_state", "counters/good") -> def
    writable: Mapping[str, tuple[float | None, float | None]]  # point id -> (min, max)
    job: Mapping[str, MetricDef] = dataclasses.field(default_factory=dict)  # "state", "materials/x/amount"
    oee: Mapping[str, MetricDef] = dataclasses.field(default_factory=dict)  # "availability", "seconds/executing"
    oee_shift: Mapping[str, MetricDef] = dataclasses.field(default_factory=dict)  # "name", "oee"


def _job_fields(dev: CompiledDevice) -> list[tuple[str, DataType]]:
    """The job record's metrics for a profile that maps jobs (none otherwise)."""
    job = dev.profile.job
    if job is None:
        return []
    out = list(JOB_FIELDS.items())
    for name, m in job.materials.items():
        out.append((f"materials/{name}/amount", DataType.Double))
        if m.diameter_mm is not None:
            out.append((f"materials/{name}/volume_cm3", DataType.Double))
        if m.density_g_cm3 is not None:
            out.append((f"materials/{name}/mass_g", DataType.Double))
        # every material: besides a lot point and the config's `lots`, any job's start
        # command may name its lot (null while none is known)
        out.append((f"materials/{name}/lot", DataType.String))
    if dev.config.energy is not None:
        out.append(("energy_kwh", DataType.Double))
    return out


def device_model(dev: CompiledDevice, aliases: AliasBook, *, shift_oee: bool = False) -> DeviceModel:
    """Every metric of one device, with lasting aliases; `shift_oee` when the cell has a
    shift calendar (config `oee.shifts`)."""
    named: list[tuple[str, DataType]] = [(p.id, POINT_DATATYPES[p.type]) for p in dev.points]
    prof = dev.profile
    has_machine = bool(prof.state or prof.counters or prof.alarms or prof.program)
    machine_fields: list[tuple[str, DataType]] = (
        [(f, DataType.String) for f in (*MACHINE_STRINGS, ALARMS)] if has_machine else []
    )
    counters = dev.profile.counters
    enabled = {p.id: p for p in dev.points}
    if counters is not None:
        for name in ("good", "bad"):
            ref = getattr(counters, name)
            if ref and ref in enabled:
                machine_fields.append((f"counters/{name}", POINT_DATATYPES[enabled[ref].type]))
    if dev.profile.program is not None:
        machine_fields += [(f"program/{f}", dt) for f, dt in PROGRAM_FIELDS.items()]
    named += [(MACHINE_PREFIX + f, dt) for f, dt in machine_fields]
    job_fields = _job_fields(dev)
    oee_fields = list(OEE_FIELDS.items()) if job_fields else []
    shift_fields = list(SHIFT_FIELDS.items()) if job_fields and shift_oee else []
    named += [(JOB_PREFIX + f, dt) for f, dt in job_fields]
    named += [(OEE_PREFIX + f, dt) for f, dt in oee_fields]
    named += [(OEE_PREFIX + SHIFT + f, dt) for f, dt in shift_fields]
    table = aliases.table(dev.config.id, named)
    points = tuple(table.by_name[p.id] for p in dev.points)
    return DeviceModel(
        id=dev.config.id,
        table=table,
        points=points,
        by_point={d.name: (i, d) for i, d in enumerate(points)},
        machine={f: table.by_name[MACHINE_PREFIX + f] for f, _ in machine_fields},
        writable={p.id: (p.min, p.max) for p in dev.points if p.access in ("w", "rw")},
        job={f: table.by_name[JOB_PREFIX + f] for f, _ in job_fields},
        oee={f: table.by_name[OEE_PREFIX + f] for f, _ in oee_fields},
        oee_shift={f: table.by_name[OEE_PREFIX + SHIFT + f] for f, _ in shift_fields},
    )


def _job_values(record: JobRecord | None, event: str | None) -> dict[str, Any]:
    """A job record as metric values by field (every field None before the first job)."""
    if record is None:
        return {}
    out: dict[str, Any] = {
        "id": record.job_id,
        "order_id": record.order_id,
        "program": record.program,
        "state": record.state.value,
        "event": event,
        "start_ts": record.start_ms,
        "end_ts": record.end_ms,
        "reason": record.reason,
        "produced": record.produced,
        "good": record.good,
        "scrap": record.scrap,
        "running_s": round(record.running_s, 3),
        "cycle_time_s": None if record.cycle_time_s is None else round(record.cycle_time_s, 3),
        "energy_kwh": None if record.energy_kwh is None else round(record.energy_kwh, 6),
    }
    for m in record.materials:
        d = m.as_dict()
        out[f"materials/{m.name}/amount"] = d["amount"]
        out[f"materials/{m.name}/volume_cm3"] = d["volume_cm3"]
        out[f"materials/{m.name}/mass_g"] = d["mass_g"]
        out[f"materials/{m.name}/lot"] = m.lot
    return out


def _oee_values(figures: Oee | None) -> dict[str, Any]:
    if figures is None:
        return {}
    # Rounded (factors to 0.1 %, times to whole seconds) so a DATA goes out when a
    # figure moved, not at every state refresh while time passes.
    out: dict[str, Any] = {
        f: None if v is None else round(v, 3)
        for f, v in (
            ("availability", figures.availability),
            ("performance", figures.performance),
            ("quality", figures.quality),
            ("oee", figures.oee),
        )
    }
    out["produced"], out["good"] = figures.produced, figures.good
    for state, seconds in figures.seconds.items():
        out[f"seconds/{state}"] = float(round(seconds))
    return out


def _shift_values(figures: Oee | None) -> dict[str, Any]:
    """The shift's OEE with its name and start; every field null between shifts."""
    if figures is None:
        return dict.fromkeys(SHIFT_FIELDS)
    return {**_oee_values(figures), "name": figures.window, "start_ts": figures.start_ms}


def _changed(
    defs: Mapping[str, MetricDef], old: Mapping[str, Any], new: Mapping[str, Any], ts: int
) -> list[Metric]:
    """DATA metrics for the fields whose value differs from what was last sent."""
    return [
        Metric(alias=d.alias, datatype=d.datatype, value=new.get(f), timestamp=ts)
        for f, d in defs.items()
        if f not in old or old[f] != new.get(f)
    ]


def _machine_values(machine: MachineState | None) -> dict[str, Any]:
    """A machine state as metric values by field."""
    if machine is None:
        return {}
    out: dict[str, Any] = {
        "item_state": machine.item_state.value,
        "operation_mode": machine.operation_mode.value,
        "execution": machine.execution.value,
        "raw_state": machine.raw_state,
        "reason": machine.reason,
    }
    out[ALARMS] = orjson.dumps([a.as_dict() for a in machine.alarms]).decode()
    for name, value in machine.counters.items():
        out[f"counters/{name}"] = value
    program = machine.program
    if program is not None:
        out["program/name"] = program.name
        out["program/line"] = program.line
        out["program/progress"] = program.progress
        out["program/eta"] = program.eta
    return out


def _quality(change: QualityChange) -> dict[str, PropertyValue]:
    return quality_properties(change.quality, change.reason)


def birth_metrics(model: DeviceModel, snapshot: DeviceSnapshot, ts: int) -> list[Metric]:
    """A DBIRTH's metrics: every point's current value and quality, and the machine state."""
    out = [
        Metric(
            name=d.name,
            alias=d.alias,
            datatype=d.datatype,
            value=p.value,
            timestamp=ts,
            properties=quality_properties(p.quality, p.reason),
        )
        for d, p in zip(model.points, snapshot.points, strict=True)
    ]
    for defs, values in (
        (model.machine, _machine_values(snapshot.machine)),
        (model.job, _job_values(snapshot.job, None)),
        (model.oee, _oee_values(snapshot.oee)),
        (model.oee_shift, _shift_values(snapshot.oee_shift)),
    ):
        out += [
            Metric(name=d.name, alias=d.alias, datatype=d.datatype, value=values.get(f), timestamp=ts)
            for f, d in defs.items()
        ]
    return out


class DataBuilder:
    """DDATA metrics from one DeviceUpdate: changed values, quality changes (with the
    point's last value, as every DATA metric needs one) and changed machine fields."""

    __slots__ = ("_birth_quality", "_job", "_machine", "_oee", "_shift", "_values", "model")

    def __init__(self, model: DeviceModel) -> None:
        self.model = model
        self._values: dict[str, Any] = {}  # point values last put in DATA or BIRTH
        self._machine: dict[str, Any] = {}  # machine values last put in DATA or BIRTH
        self._birth_quality: dict[str, Quality] | None = None  # until the first DATA after a BIRTH
        self._job: dict[str, Any] = {}  # job and OEE values last put in DATA or BIRTH
        self._oee: dict[str, Any] = {}
        self._shift: dict[str, Any] = {}

    def reset(self, snapshot: DeviceSnapshot) -> None:
        """A BIRTH said everything: changes count from here."""
        self._values = {p.id: p.value for p in snapshot.points}
        self._machine = _machine_values(snapshot.machine)
        self._birth_quality = {p.id: p.quality for p in snapshot.points}
        self._job = {f: v for f, v in _job_values(snapshot.job, None).items() if f in self.model.job}
        self._oee = {f: v for f, v in _oee_values(snapshot.oee).items() if f in self.model.oee}
        self._shift = _shift_values(snapshot.oee_shift) if self.model.oee_shift else {}
        self._job.setdefault("event", None)

    def _after_birth(self, update: DeviceUpdate, births: dict[str, Quality]) -> DeviceUpdate:
        """The first update after a BIRTH without what the BIRTH already said (the reading
        a device's birth was taken from comes through as an update too)."""
        last = self._values
        return DeviceUpdate(
            update.device_id,
            update.ts_ms,
            {k: v for k, v in update.values.items() if k not in last or last[k] != v},
            {k: q for k, q in update.quality.items() if births.get(k) != q.quality},
            update.machine,
            job=update.job,
            job_events=update.job_events,
        )

    def metrics(self, update: DeviceUpdate) -> list[Metric | PlainValue]:
        births = self._birth_quality
        if births is not None:
            self._birth_quality = None
            update = self._after_birth(update, births)
        by_point = self.model.by_point
        ts, values, quality = update.ts_ms, update.values, update.quality
        out: list[Metric | PlainValue] = []
        for pid, v in values.items():
            d = by_point[pid][1]
            q = quality.get(pid) if quality else None
            if q is None and d.alias is not None:
                out.append((d.alias, d.datatype, v))  # the common case, encoded without a Metric
            else:
                props = _quality(q) if q is not None else None
                out.append(Metric(alias=d.alias, datatype=d.datatype, value=v, timestamp=ts, properties=props))
        last = self._values
        if values:
            last.update(values)
        if quality:
            for pid, q in quality.items():
                if pid in values:
                    continue
                d = by_point[pid][1]
                out.append(
                    Metric(
                        alias=d.alias,
                        datatype=d.datatype,
                        value=last.get(pid),
                        timestamp=ts,
                        properties=_quality(q),
                    )
                )
        if update.machine is not None:
            new = _machine_values(update.machine)
            old, defs = self._machine, self.model.machine
            for f, d in defs.items():
                v = new.get(f)
                if f not in old or old[f] != v:
                    out.append(Metric(alias=d.alias, datatype=d.datatype, value=v, timestamp=ts))
            self._machine = new
        if update.job is not None and self.model.job:
            event = update.job_events[-1].event if update.job_events else self._job.get("event")
            out += self.job_metrics(update.job, event, ts)
        return out

    def job_metrics(self, record: JobRecord, event: str | None, ts: int) -> list[Metric]:
        """The job fields that changed (a job event's record, or the current one)."""
        new = {f: v for f, v in _job_values(record, event).items() if f in self.model.job}
        out = _changed(self.model.job, self._job, new, ts)
        self._job = new
        return out

    def oee_metrics(self, figures: Oee | None, shift: Oee | None, ts: int) -> list[Metric]:
        """The OEE figures (the hour's; the shift's with a calendar) that changed since
        they were last sent."""
        out: list[Metric] = []
        if figures is not None and self.model.oee:
            new = {f: v for f, v in _oee_values(figures).items() if f in self.model.oee}
            out += _changed({f: d for f, d in self.model.oee.items() if f in new}, self._oee, new, ts)
            self._oee.update(new)
        if self.model.oee_shift:
            values = _shift_values(shift)
            new = {f: values.get(f) for f in self.model.oee_shift}
            out += _changed(self.model.oee_shift, self._shift, new, ts)
            self._shift = new
        return out


def encode_safely(encode: Callable[[Sequence[Metric]], bytes], metrics: list[Metric]) -> tuple[bytes, int]:
    """Encode; a metric whose value does not fit its datatype (a driver returning the
    wrong type, an integer beyond Int64) is sent as null with Quality BAD and the reason,
    instead of losing the whole message. Returns (payload, metrics replaced)."""
    try:
        return encode(metrics), 0
    except EncodeError:
        pass
    fixed: list[Metric] = []
    bad = 0
    for m in metrics:
        try:
            encode([m])
            fixed.append(m)
        except EncodeError as exc:
            bad += 1
            props = {
                **quality_properties("bad"),
                QUALITY_REASON_KEY: PropertyValue(DataType.String, f"cannot encode: {exc.detail}"),
            }
            fixed.append(
                Metric(
                    name=m.name,
                    alias=m.alias,
                    datatype=m.datatype,
                    value=None,
                    timestamp=m.timestamp,
                    properties=props,
                )
            )
    return encode(fixed), bad


class BirthScheduler(Protocol):
    """The session side of a device's availability (deliver/sparkplug.py): a DBIRTH or a
    DDEATH placed in the record stream where the transition happened."""

    def device_birth(self, device_id: str, ts: int, metrics: list[Metric]) -> None: ...

    def device_death(self, device_id: str) -> None: ...


class SparkplugEncoder:
    """The engine's output as Sparkplug device messages. Implements the DeviceSink.

    DDATA goes into the outbox without a seq (the session assigns it when publishing);
    births and deaths are session messages, handed to the `BirthScheduler`."""

    def __init__(
        self, models: Mapping[str, DeviceModel], out: RecordSink, ddata_topics: Mapping[str, str]
    ) -> None:
        self.models = models  # the node's dict: a reload adds and removes devices in it
        self.out = out
        self.births: BirthScheduler | None = None
        self._ddata = dict(ddata_topics)
        self._builders = {device_id: DataBuilder(m) for device_id, m in models.items()}
        self._alive: dict[str, bool] = dict.fromkeys(models, False)  # at put time
        self._told: set[str] = set()  # devices with a birth scheduled since start
        self.encode_fallbacks = 0

    def device_update(self, update: DeviceUpdate) -> None:
        device_id = update.device_id
        if not self._alive.get(device_id):
            return  # a dead device has no DATA (its DDEATH said it)
        builder = self._builders[device_id]
        ts = update.ts_ms
        # Every job event but the last gets a DATA of its own, so a host sees each record
        # as it stood (a job that ends as the next one starts: its final counts, then the new job).
        for ev in update.job_events[:-1]:
            self._put(device_id, ts, builder.job_metrics(ev.record, ev.event, ts))
        self._put(device_id, ts, builder.metrics(update))

    def _put(self, device_id: str, ts: int, items: Sequence[Metric | PlainValue]) -> None:
        if not items:
            return
        try:
            payload, bad = encode_data_items(timestamp=ts, items=items), 0
        except EncodeError:  # a value that does not fit: the careful path, metric by metric
            metrics = [
                Metric(alias=i[0], datatype=DataType(i[1]), value=i[2], timestamp=ts) if isinstance(i, tuple) else i
                for i in items
            ]
            payload, bad = encode_safely(lambda ms: encode_data(timestamp=ts, metrics=ms), metrics)
        self.encode_fallbacks += bad
        self.out.put(Record(device_id, self._ddata[device_id], payload, 0, False, "sparkplug"))

    def device_state(self, snapshot: DeviceSnapshot) -> None:
        """Sparkplug has no retained state: BIRTH messages carry it. The state's moment
        is when the OEE figures (which move with time, not with readings) go out as DATA."""
        device_id = snapshot.device_id
        if (snapshot.oee is None and snapshot.oee_shift is None) or not self._alive.get(device_id):
            return
        builder = self._builders.get(device_id)
        if builder is not None:
            self._put(
                device_id, snapshot.ts_ms, builder.oee_metrics(snapshot.oee, snapshot.oee_shift, snapshot.ts_ms)
            )

    def device_removed(self, device_id: str) -> None:
        """A DDEATH if the device was ever birthed; then it is forgotten (the node's
        `remove_device` drops its model)."""
        if device_id in self._told and self.births is not None:
            self.births.device_death(device_id)
        for table in (self._alive, self._builders, self._ddata):
            table.pop(device_id, None)
        self._told.discard(device_id)

    def add_device(self, model: DeviceModel, ddata_topic: str) -> None:
        """A device added by a reload: birthed when it is first heard of."""
        self._builders[model.id] = DataBuilder(model)
        self._ddata[model.id] = ddata_topic
        self._alive[model.id] = False

    def device_available(self, snapshot: DeviceSnapshot) -> None:
        device_id = snapshot.device_id
        if device_id not in self.models or self.births is None:
            return
        if snapshot.available or device_id not in self._told:
            # a device whose first outcome is a failure is birthed too (with its points bad),
            # so hosts learn it exists, then declared dead
            self.births.device_birth(device_id, snapshot.ts_ms, self.birth(snapshot))
        if not snapshot.available:
            self._alive[device_id] = False
            self.births.device_death(device_id)

    def birth(self, snapshot: DeviceSnapshot) -> list[Metric]:
        """A DBIRTH's metrics for this snapshot; DATA counts its changes from here."""
        device_id = snapshot.device_id
        self._builders[device_id].reset(snapshot)
        self._alive[device_id] = snapshot.available
        self._told.add(device_id)
        return birth_metrics(self.models[device_id], snapshot, snapshot.ts_ms)
