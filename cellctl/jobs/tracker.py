"""One device's job record, from the points its profile declares (`job:` and `counters:`)
and its machine state: a job starts when the job id point takes a new value, counts the
parts produced, good and scrap during the job from counter *deltas* (resets and wraps
survive, see counting.py), follows the machine (running / paused), and ends completed,
aborted or failed when the program state says so or when the next job starts.

Field names follow OPC 40001-3 (job management: JobId, OrderId, ProducedQuantity,
GoodQuantity, ScrapQuantity, result) and MTConnect (PartCount ALL/GOOD/BAD); docs/jobs.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cellctl.config.profile import MaterialDef
from cellctl.jobs.counting import MaterialCount, RunningCount
from cellctl.model import (
    ENDED,
    Execution,
    ItemState,
    JobEvent,
    JobRecord,
    JobState,
    MachineState,
    MaterialUse,
)

_EVENT_OF = {
    JobState.RUNNING: "resumed",
    JobState.PAUSED: "paused",
    JobState.COMPLETED: "completed",
    JobState.ABORTED: "aborted",
    JobState.FAILED: "failed",
}
_PAUSED = frozenset({Execution.FEED_HOLD, Execution.INTERRUPTED, Execution.OPTIONAL_STOP, Execution.STOPPED})


@dataclass(slots=True)
class JobTracker:
    """Feed `observe` with the job inputs whenever the machine state or a job point changes;
    it returns the events that happened (empty most of the time)."""

    modulus: int | None = None
    current: JobRecord | None = None
    _good: RunningCount = field(default_factory=RunningCount)
    _bad: RunningCount = field(default_factory=RunningCount)
    _running_since: float | None = None
    materials: Mapping[str, MaterialDef] = field(default_factory=dict)
    _mat: dict[str, MaterialCount] = field(default_factory=dict)  # kind counter: advance since the start
    _mat_total: dict[str, float] = field(default_factory=dict)  # kinds job_total, per_part: the amount
    _pp_last: dict[str, int] = field(default_factory=dict)  # kind per_part: parts produced when last counted
    # A material's lot comes from (first that has one): the device (a lot point; its last
    # readable value, kept across jobs), the job's start command, the device config.
    default_lots: Mapping[str, str] = field(default_factory=dict)  # the device config's `lots`
    _lot: dict[str, str] = field(default_factory=dict)  # the device's lot of each material in use
    # Lots given with the command that starts a job (`job_start` args), for the job whose id or
    # program is the command's name: taken when it starts, then the current job's own.
    _next_lots: tuple[str, dict[str, str]] | None = None
    _job_lots: dict[str, str] = field(default_factory=dict)
    _mat_in: Mapping[str, float | None] = field(default_factory=dict)  # this observation's raw values
    # per-job diameter and density (the job's own figures, e.g. from the slicer), by material
    _mat_params: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    _energy: MaterialCount = field(default_factory=MaterialCount)  # the meter's advance (kWh)
    _energy_in: float | None = None

    def __post_init__(self) -> None:
        self._good.modulus = self._bad.modulus = self.modulus
        self._reset_materials()

    def expect_lots(self, name: str, lots: Mapping[str, str]) -> None:
        """The next job named `name` (its id or program) runs on these lots (a command's)."""
        self._next_lots = (name, dict(lots)) if lots else None

    def forget_lots(self, name: str) -> None:
        """The command that would start job `name` failed: its lots apply to no job."""
        if self._next_lots is not None and self._next_lots[0] == name:
            self._next_lots = None

    def _lot_of(self, name: str) -> str | None:
        return self._lot.get(name) or self._job_lots.get(name) or self.default_lots.get(name)

    def _reset_materials(self) -> None:
        self._mat = {n: MaterialCount(d.modulus) for n, d in self.materials.items() if d.kind == "counter"}
        self._mat_total = {}
        self._pp_last = {}
        self._energy = MaterialCount()

    def observe(
        self,
        *,
        now_ms: int,
        job_id: Any,
        order_id: Any,
        program: Any,
        good: int | None,
        bad: int | None,
        machine: MachineState,
        completed: bool,
        stopped: bool,
        materials: Mapping[str, float | None] | None = None,
        energy_kwh: float | None = None,
        material_params: Mapping[str, tuple[float | None, float | None]] | None = None,
        lots: Mapping[str, str | None] | None = None,
    ) -> list[JobEvent]:
        events: list[JobEvent] = []
        self._mat_in = materials or {}
        for name, lot in (lots or {}).items():
            if lot:  # an unreadable or empty lot keeps the last one known
                self._lot[name] = lot
        if material_params:
            self._mat_params = material_params
        self._energy_in = energy_kwh
        job = None if job_id in (None, "", 0) else str(job_id)
        cur = self.current
        if cur is not None and cur.state not in ENDED and job != cur.job_id:
            # a new job id (or none) ends the job that ran: it was not seen to complete;
            # what was counted up to now is its
            self._count(good, bad, now_ms)
            events.append(
                self._end(now_ms, JobState.COMPLETED if completed else JobState.ABORTED, "next job")
            )
            cur = None
        if job is not None and (cur is None or (cur.job_id != job)) and not (completed or stopped):
            # (a job first seen when it has already ended, e.g. the last one of an OPC UA
            # machine at cellctl's start, is not one cellctl saw: no record of 0 parts)
            self.current = JobRecord(
                job_id=job,
                order_id=None if order_id in (None, "") else str(order_id),
                program=None if program in (None, "") else str(program),
                state=JobState.RUNNING,
                start_ms=now_ms,
            )
            self._good = RunningCount(self.modulus)
            self._bad = RunningCount(self.modulus)
            self._job_lots = {}
            if self._next_lots is not None and self._next_lots[0] in (job, self.current.program):
                self._job_lots, self._next_lots = self._next_lots[1], None
            self._reset_materials()
            self._running_since = None
            self._count(good, bad, now_ms)
            events.append(JobEvent("started", self._stamp(now_ms)))
            cur = self.current
        if cur is None or cur.state in ENDED:
            return events
        self._count(good, bad, now_ms)
        self._clock(machine, now_ms)
        if completed:
            events.append(self._end(now_ms, JobState.COMPLETED, None))
        elif stopped:
            events.append(self._end(now_ms, JobState.ABORTED, "program stopped"))
        elif machine.item_state == ItemState.OUT_OF_SERVICE and machine.alarms:
            events.append(
                self._end(
                    now_ms, JobState.FAILED, f"alarm {machine.alarms[0].code}: {machine.alarms[0].text}"
                )
            )
        else:
            state = JobState.PAUSED if machine.execution in _PAUSED else JobState.RUNNING
            if state != cur.state:
                self.current = replace(self._stamp(now_ms), state=state)
                events.append(JobEvent(_EVENT_OF[state], self.current))
        return events

    # -- durable state (a daemon restart or kill -9 mid-job) --------------------------------

    def dump(self) -> dict[str, Any] | None:
        """What it takes to continue the current job after a restart; None when no job."""
        if self.current is None:
            return None
        return {
            "job": self.current.as_dict(),
            "counts": [[c.last, c.total] for c in (self._good, self._bad)],
            "running": self._running_since is not None,
            "materials": {n: [c.last, c.total] for n, c in self._mat.items()},
            "energy": [self._energy.last, self._energy.total],
            "job_lots": dict(self._job_lots),
        }

    def resume(self, saved: dict[str, Any], *, job_id: Any, now_ms: int) -> list[JobEvent]:
        """After a restart: the saved job continues when the machine still runs that job
        (counting on from the saved raw counters, so nothing is counted twice or lost), and
        is closed as aborted with the reason otherwise. Never silently restarts at zero."""
        j = saved["job"]
        record = JobRecord(
            job_id=j["job_id"],
            order_id=j["order_id"],
            program=j["program"],
            state=JobState(j["state"]),
            start_ms=j["start_ts"],
            end_ms=j["end_ts"],
            reason=j["reason"],
            produced=j["produced"],
            good=j["good"],
            scrap=j["scrap"],
            running_s=j["running_s"],
            cycle_time_s=j["cycle_time_s"],
            energy_kwh=j.get("energy_kwh"),
            materials=tuple(
                MaterialUse(n, m["amount"], m["unit"], m["volume_cm3"], m["mass_g"], m.get("lot"), m.get("form"))
                for n, m in (j.get("materials") or {}).items()
            ),
        )
        self.current = record
        for count, (last, total) in zip((self._good, self._bad), saved["counts"], strict=True):
            count.last, count.total = last, total
        self._reset_materials()
        for name, (last, total) in (saved.get("materials") or {}).items():
            if name in self._mat:
                self._mat[name].last, self._mat[name].total = last, total
        if saved.get("energy"):
            self._energy.last, self._energy.total = saved["energy"]
        for m in record.materials:
            kind = name_kind(self.materials, m.name)
            if kind in ("job_total", "per_part"):
                self._mat_total[m.name] = m.amount
            if kind == "per_part":
                self._pp_last[m.name] = record.produced
        job_lots = saved.get("job_lots")  # absent in files written before lots per job
        self._job_lots = {str(n): str(v) for n, v in job_lots.items()} if isinstance(job_lots, dict) else {}
        for m in record.materials:
            d = self.materials.get(m.name)
            if m.lot is not None and d is not None and d.lot_point is not None and m.lot not in (
                self._job_lots.get(m.name), self.default_lots.get(m.name)
            ):
                self._lot.setdefault(m.name, m.lot)  # the machine's, as last read
        if record.state in ENDED:
            return []
        same = job_id not in (None, "", 0) and str(job_id) == record.job_id
        if same:
            return [JobEvent("resumed", record)]
        return [self._end(now_ms, JobState.ABORTED, "interrupted: cellctl restarted and the machine no longer runs it")]

    def _count(self, good: int | None, bad: int | None, now_ms: int) -> None:
        g = self._good.update(good) if good is not None else self._good.total
        b = self._bad.update(bad) if bad is not None else self._bad.total
        if self.current is not None:
            energy = self.current.energy_kwh
            if self._energy_in is not None:
                energy = self._energy.update(self._energy_in)
            self.current = replace(
                self.current, good=g, scrap=b, produced=g + b, materials=self._used(g + b), energy_kwh=energy
            )

    def _used(self, produced: int) -> tuple[MaterialUse, ...]:
        """Material used so far, one entry per declared material (0 until it is read)."""
        out: list[MaterialUse] = []
        for name, d in self.materials.items():
            raw = self._mat_in.get(name)
            if d.kind == "counter":
                count = self._mat[name]
                amount = count.update(raw) if raw is not None else count.total
            elif d.kind == "per_part":
                # each part made since the last count takes the job's current figure per part
                # (parts made while the figure is unknown wait for it: none is left out)
                per_part = raw if raw is not None and raw > 0 else d.per_part
                amount = self._mat_total.get(name, 0.0)
                if per_part is not None:
                    amount += (produced - self._pp_last.get(name, 0)) * per_part
                    self._pp_last[name] = produced
                    self._mat_total[name] = amount
            else:
                if raw is not None:
                    self._mat_total[name] = raw
                amount = self._mat_total.get(name, 0.0)
            diameter, density = self._mat_params.get(name, (None, None))
            out.append(_derive(name, amount, d, diameter, density, lot=self._lot_of(name)))
        return tuple(out)

    def _clock(self, machine: MachineState, now_ms: int) -> None:
        executing = machine.item_state == ItemState.EXECUTING
        now = now_ms / 1000.0
        if executing and self._running_since is None:
            self._running_since = now
        elif not executing and self._running_since is not None:
            self._add_running(now)
            self._running_since = None

    def _add_running(self, now: float) -> None:
        assert self.current is not None
        assert self._running_since is not None
        self.current = replace(self.current, running_s=self.current.running_s + (now - self._running_since))
        self._running_since = now

    def _stamp(self, now_ms: int) -> JobRecord:
        """The current record with running time and cycle time brought up to now."""
        assert self.current is not None
        if self._running_since is not None:
            self._add_running(now_ms / 1000.0)
        cur = self.current
        cycle = cur.running_s / cur.produced if cur.produced else None
        self.current = replace(cur, cycle_time_s=cycle)
        return self.current

    def _end(self, now_ms: int, state: JobState, reason: str | None) -> JobEvent:
        record = replace(self._stamp(now_ms), state=state, end_ms=now_ms, reason=reason)
        self._running_since = None
        self.current = record
        return JobEvent(_EVENT_OF[state], record)


def name_kind(materials: Mapping[str, MaterialDef], name: str) -> str | None:
    d = materials.get(name)
    return None if d is None else d.kind


def _derive(
    name: str,
    amount: float,
    d: MaterialDef,
    job_diameter: float | None = None,
    job_density: float | None = None,
    *,
    lot: str | None = None,
) -> MaterialUse:
    """Volume from a length and the filament diameter, mass from the volume and density;
    the job's own figures (when positive) before the profile's."""
    volume = mass = None
    diameter = job_diameter if job_diameter is not None and job_diameter > 0 else d.diameter_mm
    density = job_density if job_density is not None and job_density > 0 else d.density_g_cm3
    if diameter is not None:
        length_mm = amount * (1000.0 if d.unit == "m" else 1.0)
        volume = math.pi * (diameter / 2) ** 2 * length_mm / 1000.0  # mm3 -> cm3
        if density is not None:
            mass = volume * density
    return MaterialUse(name, amount, d.unit, volume, mass, lot, d.form)
