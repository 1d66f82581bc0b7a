"""Device-type profiles: a device type's points and how its raw state maps to the
normalised machine state. Validated once at load time; frozen afterwards."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cellctl.model import Execution, ItemState, OperationMode


class MappedItemState(StrEnum):
    """What a profile may map a raw state to: OPC 40001's item states (cellctl's own
    `unknown` is for a state that cannot be read, never a mapping target)."""

    NOT_AVAILABLE = ItemState.NOT_AVAILABLE.value
    OUT_OF_SERVICE = ItemState.OUT_OF_SERVICE.value
    NOT_EXECUTING = ItemState.NOT_EXECUTING.value
    EXECUTING = ItemState.EXECUTING.value


ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID_RE = re.compile(ID_PATTERN)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Deadband(_Frozen):
    """Report a new value only when it moved more than this from the last reported one.

    `absolute` is in engineering units; `percent` is of the point's range (max - min)
    when both limits are declared, otherwise of the last reported value's magnitude.
    """

    absolute: Annotated[float, Field(ge=0)] | None = None
    percent: Annotated[float, Field(ge=0, le=100)] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Deadband:
        if (self.absolute is None) == (self.percent is None):
            raise ValueError("give exactly one of 'absolute' or 'percent'")
        return self


class PointDef(_Frozen):
    """One named point of a device type."""

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    type: Literal["bool", "int", "float", "string"]
    access: Literal["r", "w", "rw"] = "r"
    unit: str | None = None
    description: str | None = None
    scale: float | None = None
    offset: float | None = None
    min: float | None = None
    max: float | None = None
    deadband: Deadband | None = None
    # Round published values to this many decimals (float points): for sensors whose
    # resolution is coarser than their wire type.
    decimals: Annotated[int, Field(ge=0, le=15)] | None = None
    # Driver-specific address block, validated by the driver plugin named in the profile.
    address: dict[str, Any]

    @model_validator(mode="after")
    def _cross_checks(self) -> PointDef:
        numeric = self.type in ("int", "float")
        for name in ("scale", "offset", "min", "max", "deadband"):
            if not numeric and getattr(self, name) is not None:
                raise ValueError(f"a {self.type} point has no '{name}'")
        if self.decimals is not None and self.type != "float":
            raise ValueError(f"a {self.type} point has no 'decimals' (only float points are rounded)")
        if self.type == "int":
            for name in ("scale", "offset"):
                v = getattr(self, name)
                if v is not None and v != int(v):
                    raise ValueError(f"an int point cannot have a fractional {name}; use type: float")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.access != "r" and numeric and (self.min is None or self.max is None):
            raise ValueError("a writable numeric point needs 'min' and 'max' limits")
        return self


class MachineStateValue(_Frozen):
    item_state: MappedItemState
    operation_mode: OperationMode = OperationMode.NONE
    execution: Execution | None = None


class StateMap(_Frozen):
    """Raw state point value -> normalised machine state."""

    point: str
    map: dict[str, MachineStateValue]
    default: MachineStateValue = MachineStateValue(
        item_state=MappedItemState.NOT_EXECUTING, operation_mode=OperationMode.NONE
    )


class AlarmDef(_Frozen):
    """An alarm source. A bool point is active when true (use `code`/`text`); a numeric
    point is active when non-zero, and its value is the code (`texts` names them)."""

    point: str
    code: str | None = None
    text: str | None = None
    texts: dict[str, str] = {}
    severity: Literal["info", "warning", "error", "fatal"] = "error"


class ProgramMap(_Frozen):
    """Points that describe the running job, published as the machine's `program`.

    `state` names a point whose value says how the job stands: its `completed` values
    make the execution program_completed (its `stopped` values program_stopped) while the
    machine is not executing, as the machine-state vocabulary asks at the end of a job."""

    name: str | None = None
    line: str | None = None
    progress: str | None = None
    eta: str | None = None
    state: str | None = None
    completed: list[str] = ["completed"]
    stopped: list[str] = ["failed", "cancelled"]


class Counters(_Frozen):
    good: str | None = None
    bad: str | None = None
    # The counter registers' range (65536 for uint16): a fall of more than half of it is a
    # wrap-around, a smaller fall a reset. Without it every fall is a reset.
    modulus: Annotated[int, Field(ge=2)] | None = None


MaterialForm = Literal["bar", "block", "casting", "filament", "gas", "gel", "liquid", "powder", "sheet"]


class MaterialDef(_Frozen):
    """A material the job uses (docs/jobs.md), of one of three kinds: a device `counter`
    that only counts up (wrap/reset-safe deltas, like parts; `modulus` as in `counters`),
    a `job_total` the device itself resets at each job start (the gcode driver's
    `job.filament_mm`), or `per_part`: stock consumed per part produced (good + scrap),
    `per_part` units each, or the figure of `per_part_point` for the job (a CNC's bar or
    blank per part) when it is readable and positive. With `diameter_mm` a length becomes a
    volume (filament), and with `density_g_cm3` a mass; `diameter_point` / `density_point`
    name points that give them per job, used when readable and positive, else the
    constants. `form` and the lot (`lot_point`, else a `job_start`'s `lots`, else the
    device config's `lots`) follow MTConnect RawMaterial."""

    point: str | None = None
    unit: Annotated[str, Field(min_length=1, max_length=16)]
    kind: Literal["counter", "job_total", "per_part"] = "counter"
    modulus: Annotated[int, Field(ge=2)] | None = None
    per_part: Annotated[float, Field(gt=0)] | None = None
    per_part_point: str | None = None
    diameter_mm: Annotated[float, Field(gt=0)] | None = None
    density_g_cm3: Annotated[float, Field(gt=0)] | None = None
    diameter_point: str | None = None
    density_point: str | None = None
    form: MaterialForm | None = None
    lot_point: str | None = None  # a point carrying the lot id of the material in use
    description: Annotated[str, Field(max_length=256)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _per_part_kind(cls, data: Any) -> Any:
        """`per_part` (or `per_part_point`) alone says the kind."""
        if isinstance(data, dict) and "kind" not in data and ("per_part" in data or "per_part_point" in data):
            return {**data, "kind": "per_part"}
        return data

    @model_validator(mode="after")
    def _derived(self) -> MaterialDef:
        has_diameter = self.diameter_mm is not None or self.diameter_point is not None
        if has_diameter and self.unit not in ("mm", "m"):
            raise ValueError(f"a diameter needs a length unit ('mm' or 'm'), not {self.unit!r}")
        if (self.density_g_cm3 is not None or self.density_point is not None) and not has_diameter:
            raise ValueError("a density needs 'diameter_mm' or 'diameter_point' (mass comes from the volume)")
        if self.modulus is not None and self.kind != "counter":
            raise ValueError("'modulus' is for kind 'counter'")
        if self.kind == "per_part":
            if self.point is not None:
                raise ValueError("kind 'per_part' counts parts: give 'per_part' or 'per_part_point', not 'point'")
            if self.per_part is None and self.per_part_point is None:
                raise ValueError("kind 'per_part' needs 'per_part' (units per part) or 'per_part_point'")
        else:
            if self.per_part is not None or self.per_part_point is not None:
                raise ValueError(f"'per_part' is for kind 'per_part', not {self.kind!r}")
            if self.point is None:
                raise ValueError(f"kind {self.kind!r} needs 'point'")
        return self


class JobMap(_Frozen):
    """Points that identify the job a machine runs (docs/jobs.md): a new value of `id`
    starts a job record, whose parts come from `counters` and whose end from `program.state`."""

    id: str
    order: str | None = None
    program: str | None = None  # else `program.name`
    ideal_cycle_time: Annotated[float, Field(gt=0)] | None = None  # seconds per part, for OEE
    materials: dict[Annotated[str, Field(pattern=ID_PATTERN)], MaterialDef] = {}


class ArgDef(_Frozen):
    """One argument of a declared method: its name in a command, type and limits."""

    name: Annotated[str, Field(pattern=ID_PATTERN)]
    type: Literal["bool", "int", "float", "string"]
    min: float | None = None
    max: float | None = None
    max_length: Annotated[int, Field(ge=1, le=65536)] = 256  # string arguments
    description: str | None = None

    @model_validator(mode="after")
    def _numeric_limits(self) -> ArgDef:
        if self.type not in ("int", "float") and (self.min is not None or self.max is not None):
            raise ValueError(f"a {self.type} argument has no 'min'/'max'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class MethodDef(_Frozen):
    """A method the device offers (an OPC UA method): where it is, in the driver's own
    address form, its arguments in call order, and names for its results."""

    address: dict[str, Any]
    args: list[ArgDef] = []
    results: list[Annotated[str, Field(pattern=ID_PATTERN)]] = []
    description: str | None = None

    @model_validator(mode="after")
    def _unique_args(self) -> MethodDef:
        names = [a.name for a in self.args]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"argument names used twice: {twice}")
        return self


class JobsDef(_Frozen):
    """How `job_start` maps onto a declared method for devices without job control
    (OPC UA StartJob): `start` names the method; the job name is its argument `name_arg`."""

    start: Annotated[str, Field(pattern=ID_PATTERN)]
    name_arg: Annotated[str, Field(pattern=ID_PATTERN)]


RESERVED_COMMANDS = frozenset({"write", "call", "rebirth", "job_start", "job_pause", "job_resume", "job_cancel"})


class Profile(_Frozen):
    """A device type: its points, and how its raw state maps to the machine state."""

    name: Annotated[str, Field(pattern=ID_PATTERN)]
    driver: str
    description: str | None = None
    vendor: str | None = None
    model: str | None = None
    points: Annotated[list[PointDef], Field(min_length=1)]
    state: StateMap | None = None
    counters: Counters | None = None
    alarms: list[AlarmDef] = []
    program: ProgramMap | None = None
    job: JobMap | None = None
    commands: dict[Annotated[str, Field(pattern=ID_PATTERN)], MethodDef] = {}
    jobs: JobsDef | None = None

    @model_validator(mode="after")
    def _references(self) -> Profile:
        problems = reference_problems(self.model_dump(mode="json"))
        for name in self.commands:
            if name in RESERVED_COMMANDS:
                problems.append((f"commands.{name}", f"{name!r} is a built-in command name; choose another"))
        if self.jobs is not None:
            method = self.commands.get(self.jobs.start)
            if method is None:
                problems.append(("jobs.start", f"names command {self.jobs.start!r}, which the profile does not declare"))
            elif self.jobs.name_arg not in [a.name for a in method.args]:
                problems.append(
                    ("jobs.name_arg", f"command {self.jobs.start!r} has no argument {self.jobs.name_arg!r}")
                )
        if problems:
            raise ValueError("; ".join(f"{where}: {msg}" for where, msg in problems))
        return self

    def point(self, point_id: str) -> PointDef:
        for p in self.points:
            if p.id == point_id:
                return p
        raise KeyError(point_id)


_PROGRAM_REFS = ("name", "line", "progress", "eta", "state")
_MATERIAL_REFS = ("point", "per_part_point", "diameter_point", "density_point", "lot_point")


def _point_ids(points: list[Any]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    ids: dict[str, int] = {}
    problems: list[tuple[str, str]] = []
    for j, p in enumerate(points):
        pid = p.get("id") if isinstance(p, dict) else None
        if not isinstance(pid, str):
            continue
        if pid in ids:
            problems.append((f"points[{j}].id", f"duplicate point id {pid!r} (first at points[{ids[pid]}])"))
        else:
            ids[pid] = j
    return ids, problems


def _refs(data: dict[str, Any]) -> list[tuple[str, Any]]:
    refs: list[tuple[str, Any]] = []
    state, counters, alarms, program = (data.get(k) for k in ("state", "counters", "alarms", "program"))
    if isinstance(state, dict):
        refs.append(("state.point", state.get("point")))
    if isinstance(counters, dict):
        refs += [(f"counters.{k}", counters.get(k)) for k in ("good", "bad")]
    if isinstance(alarms, list):
        refs += [(f"alarms[{i}].point", a.get("point")) for i, a in enumerate(alarms) if isinstance(a, dict)]
    if isinstance(program, dict):
        refs += [(f"program.{k}", program.get(k)) for k in _PROGRAM_REFS]
    job = data.get("job")
    if isinstance(job, dict):
        refs += [(f"job.{k}", job.get(k)) for k in ("id", "order", "program")]
        materials = job.get("materials")
        if isinstance(materials, dict):
            for n, m in materials.items():
                if isinstance(m, dict):
                    refs += [(f"job.materials.{n}.{k}", m.get(k)) for k in _MATERIAL_REFS]
    return refs


def reference_problems(data: Any) -> list[tuple[str, str]]:
    """Duplicate point ids and references to points the profile does not define, as
    (field path, message). Works on raw YAML data, so the loader can report them even when
    other fields of the same profile are invalid (pydantic skips model checks then)."""
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        return []
    ids, problems = _point_ids(data["points"])
    for where, ref in _refs(data):
        if isinstance(ref, str) and ref not in ids:
            problems.append((where, f"names point {ref!r}, which the profile does not define"))
    return problems
