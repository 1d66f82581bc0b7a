"""A device as Sparkplug metrics: its BIRTH (every metric with name, alias, datatype and
current value) and its DATA (only what changed, by alias), from the engine's output.

Metric names: each point by its id; the normalised machine state as `Machine/...`
(`item_state`, `operation_mode`, `execution`, `raw_state`, `alarms` as a JSON string,
`counters/good|bad`, and `program/name|line|progress|eta` when the profile maps a job). Aliases come from the node's `AliasBook`, so they keep their
meaning across restarts (stored DATA refers to metrics by alias).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from cellctl.config.loader import CompiledDevice
from cellctl.engine.points import PointTable
from cellctl.model import MachineState
from cellctl.sparkplug.codec import (
    POINT_DATATYPES,
    QUALITY_REASON_KEY,
    DataType,
    EncodeError,
    Metric,
    MetricDef,
    MetricTable,
    PropertyValue,
    quality_properties,
)
from cellctl.sparkplug.state import AliasBook

MACHINE_PREFIX: Final = "Machine/"
MACHINE_STRINGS: Final = ("item_state", "operation_mode", "execution", "raw_state")
ALARMS: Final = "alarms"
PROGRAM_FIELDS: Final[Mapping[str, DataType]] = {
    "name": DataType.String,
    "line": DataType.Int64,
    "progress": DataType.Double,
    "eta": DataType.Double,
}


class DeviceView(Protocol):
    """What a BIRTH needs to know about a device now (the engine's DeviceRunner)."""

    id: str
    available: bool
    table: PointTable
    machine: MachineState


@dataclass(frozen=True, slots=True)
class DeviceModel:
    """One device's metrics as birthed; fixed for the life of the process."""

    id: str
    table: MetricTable
    points: tuple[MetricDef, ...]  # aligned with the device's PointTable
    by_point: Mapping[str, tuple[int, MetricDef]]  # point id -> (index, def)
    machine: Mapping[str, MetricDef]  # machine field ("item_state", "counters/good") -> def
    writable: Mapping[str, tuple[float | None, float | None]]  # point id -> (min, max)


def device_model(dev: CompiledDevice, aliases: AliasBook) -> DeviceModel:
    """Every metric of one device, with lasting aliases."""
    named: list[tuple[str, DataType]] = [(p.id, POINT_DATATYPES[p.type]) for p in dev.points]
    machine_fields: list[tuple[str, DataType]] = [(f, DataType.String) for f in (*MACHINE_STRINGS, ALARMS)]
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
    table = aliases.table(dev.config.id, named)
    points = tuple(table.by_name[p.id] for p in dev.points)
    return DeviceModel(
        id=dev.config.id,
        table=table,
        points=points,
        by_point={d.name: (i, d) for i, d in enumerate(points)},
        machine={f: table.by_name[MACHINE_PREFIX + f] for f, _ in machine_fields},
        writable={p.id: (p.min, p.max) for p in dev.points if p.access in ("w", "rw")},
    )


def _machine_values(machine: Mapping[str, Any]) -> dict[str, Any]:
    """A machine state dict (MachineState.as_dict) as metric values by field."""
    out: dict[str, Any] = {f: machine.get(f) for f in MACHINE_STRINGS}
    out[ALARMS] = orjson.dumps(machine.get("alarms") or []).decode()
    for name, value in (machine.get("counters") or {}).items():
        out[f"counters/{name}"] = value
    program = machine.get("program")
    if isinstance(program, Mapping):
        for name in PROGRAM_FIELDS:
            out[f"program/{name}"] = program.get(name)
    return out


def birth_metrics(model: DeviceModel, view: DeviceView, ts: int) -> list[Metric]:
    """A DBIRTH's metrics: every point's current value and quality, and the machine state."""
    t = view.table
    out = [
        Metric(
            name=d.name,
            alias=d.alias,
            datatype=d.datatype,
            value=t.value[i],
            timestamp=ts,
            properties=quality_properties(t.quality[i], t.reason[i]),
        )
        for i, d in enumerate(model.points)
    ]
    values = _machine_values(view.machine.as_dict())
    out += [
        Metric(name=d.name, alias=d.alias, datatype=d.datatype, value=values.get(f), timestamp=ts)
        for f, d in model.machine.items()
    ]
    return out


class DataBuilder:
    """DDATA metrics from one `device_data` call: changed values, quality changes (with the
    point's last value, as every DATA metric needs one) and changed machine fields."""

    __slots__ = ("_machine", "model", "view")

    def __init__(self, model: DeviceModel, view: DeviceView) -> None:
        self.model = model
        self.view = view
        self._machine: dict[str, Any] = {}  # machine values last put in DATA or BIRTH

    def reset_machine(self, machine: Mapping[str, Any]) -> None:
        self._machine = _machine_values(machine)

    def metrics(
        self,
        ts: int,
        values: Mapping[str, Any],
        quality: Mapping[str, Mapping[str, str]],
        machine: Mapping[str, Any] | None,
    ) -> list[Metric]:
        by_point = self.model.by_point
        out: list[Metric] = []
        for pid, v in values.items():
            d = by_point[pid][1]
            q = quality.get(pid)
            props = quality_properties(q["q"], q.get("reason")) if q is not None else None
            out.append(Metric(alias=d.alias, datatype=d.datatype, value=v, timestamp=ts, properties=props))
        if quality:
            current = self.view.table.value
            for pid, q in quality.items():
                if pid in values:
                    continue
                i, d = by_point[pid]
                out.append(
                    Metric(
                        alias=d.alias,
                        datatype=d.datatype,
                        value=current[i],
                        timestamp=ts,
                        properties=quality_properties(q["q"], q.get("reason")),
                    )
                )
        if machine is not None:
            new = _machine_values(machine)
            old, defs = self._machine, self.model.machine
            for f, d in defs.items():
                v = new.get(f)
                if f not in old or old[f] != v:
                    out.append(Metric(alias=d.alias, datatype=d.datatype, value=v, timestamp=ts))
            self._machine = new
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
