"""Derive the normalised machine state from a device's current point values, as the
profile's state map, counters and alarms say."""

from __future__ import annotations

from typing import Any

from cellctl.config.profile import AlarmDef, MachineStateValue, Profile
from cellctl.engine.points import GOOD, PointTable
from cellctl.model import Alarm, Execution, ItemState, MachineState, OperationMode, Program

_DEFAULT_EXECUTION = {
    ItemState.NOT_AVAILABLE: Execution.UNAVAILABLE,
    ItemState.OUT_OF_SERVICE: Execution.STOPPED,
    ItemState.NOT_EXECUTING: Execution.READY,
    ItemState.EXECUTING: Execution.ACTIVE,
}


def _raw_key(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class MachineMapper:
    """Knows which points feed the machine state, so it recomputes only when one changed."""

    def __init__(self, profile: Profile, table: PointTable) -> None:
        self.profile = profile
        self.table = table
        ids = set(table.ids)
        self.state_index = (
            table.index_of(profile.state.point) if profile.state and profile.state.point in ids else None
        )
        self.counter_index: dict[str, int] = {}
        if profile.counters:
            for name in ("good", "bad"):
                ref = getattr(profile.counters, name)
                if ref and ref in ids:
                    self.counter_index[name] = table.index_of(ref)
        self.alarms: list[tuple[int, AlarmDef]] = [
            (table.index_of(a.point), a) for a in profile.alarms if a.point in ids
        ]
        self.program_index: dict[str, int] = {}
        if profile.program:
            for name in ("name", "line", "progress", "eta", "state"):
                ref = getattr(profile.program, name)
                if ref and ref in ids:
                    self.program_index[name] = table.index_of(ref)
        # a profile that maps nothing of the machine (an energy meter) gives no machine state
        self.has_machine = bool(profile.state or profile.counters or profile.alarms or profile.program)
        self.watched = frozenset(
            table.ids[i]
            for i in [
                *([self.state_index] if self.state_index is not None else []),
                *self.counter_index.values(),
                *(i for i, _ in self.alarms),
                *self.program_index.values(),
            ]
        )

    def compute(self, available: bool) -> MachineState:
        if not available:
            return MachineState(ItemState.NOT_AVAILABLE, OperationMode.NONE, Execution.UNAVAILABLE)
        table = self.table
        counters = {
            name: table.value[i]
            for name, i in self.counter_index.items()
            if table.quality[i] == GOOD and table.value[i] is not None
        }
        alarms = tuple(self._alarms())
        raw: str | None = None
        mapped: MachineStateValue | None = None
        if self.profile.state is not None:
            i = self.state_index
            if i is None or table.quality[i] != GOOD or table.value[i] is None:
                # the device answers but its state cannot be read: claim no state
                why = table.reason[i] if i is not None else "not in this device's points"
                return MachineState(
                    ItemState.UNKNOWN,
                    OperationMode.NONE,
                    Execution.UNAVAILABLE,
                    alarms=alarms,
                    counters=counters,
                    reason=f"state point {self.profile.state.point!r} not readable: {why}",
                )
            raw = _raw_key(table.value[i])
            mapped = self.profile.state.map.get(raw, self.profile.state.default)
        if mapped is None:
            item, mode, execution = ItemState.NOT_EXECUTING, OperationMode.NONE, Execution.READY
        else:
            item, mode = ItemState(mapped.item_state), mapped.operation_mode
            execution = mapped.execution or _DEFAULT_EXECUTION[item]
        program: Program | None = None
        if self.program_index:
            program, execution = self._program(item, execution)
        return MachineState(item, mode, execution, raw, alarms, counters, program)

    def _alarms(self) -> list[Alarm]:
        table = self.table
        alarms: list[Alarm] = []
        for i, alarm in self.alarms:
            value = table.value[i]
            if table.quality[i] != GOOD or not value:
                continue
            if isinstance(value, bool):
                code = alarm.code or alarm.point
                text = alarm.text or alarm.point
            else:
                code = _raw_key(value)
                text = alarm.texts.get(code, alarm.text or f"{alarm.point} {code}")
            alarms.append(Alarm(code, text, alarm.severity))
        return alarms

    def _program(self, item: ItemState, execution: Execution) -> tuple[Program | None, Execution]:
        """The job the machine runs, and the execution state it implies."""
        table, prog = self.table, self.profile.program
        if prog is None:
            return None, execution
        got: dict[str, Any] = {
            name: table.value[i]
            for name, i in self.program_index.items()
            if table.quality[i] == GOOD and table.value[i] is not None
        }
        program = Program(
            name=str(got["name"]) if got.get("name") else None,
            line=int(got["line"]) if "line" in got else None,
            progress=float(got["progress"]) if "progress" in got else None,
            eta=float(got["eta"]) if "eta" in got else None,
        )
        job_state = _raw_key(got["state"]) if "state" in got else None
        if job_state is not None and item == ItemState.NOT_EXECUTING:
            if job_state in prog.completed:
                execution = Execution.PROGRAM_COMPLETED
            elif job_state in prog.stopped and execution == Execution.READY:
                execution = Execution.PROGRAM_STOPPED
        return program, execution
