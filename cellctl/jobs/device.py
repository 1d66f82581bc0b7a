"""The job side of one device: reads the points its profile's `job:` and `counters:`
name from the engine's point table and feeds the job tracker and the OEE window. Only
profiles that map a job pay for this, and only when one of those points or the machine
state changed."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import structlog

from cellctl.config.profile import Profile
from cellctl.engine.points import GOOD, PointTable
from cellctl.jobs.oee import OeeWindow
from cellctl.jobs.shifts import ShiftCalendar
from cellctl.jobs.tracker import JobTracker
from cellctl.model import Execution, JobEvent, JobRecord, MachineState, Oee
from cellctl.statefile import atomic_write

log = structlog.get_logger("cellctl.jobs")


# The job file is written at every job event and every change of the part counts (so a
# kill -9 loses no counted part: a job closed as interrupted keeps them all), and at most
# this often for other changes (running time, material amounts).
SAVE_INTERVAL_MS = 5000


class DeviceJobs:
    def __init__(
        self,
        profile: Profile,
        table: PointTable,
        *,
        store: Path | None = None,
        shifts: ShiftCalendar | None = None,
        clock: Callable[[], float] = time.time,
        lots: Mapping[str, str] | None = None,
    ) -> None:
        job = profile.job
        assert job is not None
        self.table = table
        self.store = store
        self.lots = dict(lots or {})  # the device config's lot per material (a lot point comes first)
        self._saved_at = 0
        self._saved_counts: tuple[int, int] | None = None
        self._restore: dict[str, Any] | None = self._load()
        # The cell's energy meter reading (kWh), when the device config relates one (`energy:`).
        self.energy_source: Callable[[], float | None] | None = None
        counters = profile.counters
        modulus = counters.modulus if counters is not None else None
        self.tracker = JobTracker(modulus=modulus, materials=job.materials, default_lots=self.lots)
        self.clock = clock  # wall clock, epoch seconds (injectable for tests)
        self.window = OeeWindow(ideal_cycle_s=job.ideal_cycle_time, modulus=modulus)
        self.shift_window = (
            OeeWindow(shifts, ideal_cycle_s=job.ideal_cycle_time, modulus=modulus) if shifts is not None else None
        )
        program = job.program or (profile.program.name if profile.program else None)
        names: dict[str, str | None] = {
            "id": job.id,
            "order": job.order,
            "program": program,
            "good": counters.good if counters else None,
            "bad": counters.bad if counters else None,
            **{f"material:{n}": m.point or m.per_part_point for n, m in job.materials.items()},
            **{f"lot:{n}": m.lot_point for n, m in job.materials.items()},
            **{f"diameter:{n}": m.diameter_point for n, m in job.materials.items()},
            **{f"density:{n}": m.density_point for n, m in job.materials.items()},
        }
        self.index = {k: table.index_of(v) for k, v in names.items() if v is not None and v in table.ids}
        self.watched = frozenset(table.ids[i] for i in self.index.values())

    def _value(self, name: str) -> Any:
        i = self.index.get(name)
        if i is None or self.table.quality[i] != GOOD:
            return None
        return self.table.value[i]

    def _count(self, name: str) -> int | None:
        v = self._value(name)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def _amount(self, name: str) -> float | None:
        v = self._value(name)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def _load(self) -> dict[str, Any] | None:
        if self.store is None:
            return None
        try:
            data = orjson.loads(self.store.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("job_state_unreadable", file=str(self.store), error=str(exc))
            return None
        return data if isinstance(data, dict) and data.get("job") else None

    def _save(self, now_ms: int, force: bool) -> None:
        record = self.tracker.current
        counts = (record.good, record.scrap) if record is not None else None
        if self.store is None or (
            not force and counts == self._saved_counts and now_ms - self._saved_at < SAVE_INTERVAL_MS
        ):
            return
        self._saved_at = now_ms
        self._saved_counts = counts
        state = self.tracker.dump()
        if state is None:
            return
        try:
            atomic_write(self.store, orjson.dumps(state))
        except OSError as exc:
            log.warning("job_state_not_saved", file=str(self.store), error=str(exc))

    def observe(self, machine: MachineState, now_ms: int) -> list[JobEvent]:
        events = self._observe(machine, now_ms)
        self._save(now_ms, force=bool(events))
        return events

    def _observe(self, machine: MachineState, now_ms: int) -> list[JobEvent]:
        good, bad = self._count("good"), self._count("bad")
        for window in (self.window, self.shift_window):
            if window is not None:
                window.observe(now_ms / 1000.0, machine.item_state, good, bad)
        resumed: list[JobEvent] = []
        if self._restore is not None:
            saved, self._restore = self._restore, None
            try:
                resumed = self.tracker.resume(saved, job_id=self._value("id"), now_ms=now_ms)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("job_state_unreadable", file=str(self.store), error=repr(exc))
        return resumed + self.tracker.observe(
            now_ms=now_ms,
            job_id=self._value("id"),
            order_id=self._value("order"),
            program=self._value("program"),
            good=good,
            bad=bad,
            machine=machine,
            completed=machine.execution == Execution.PROGRAM_COMPLETED,
            stopped=machine.execution == Execution.PROGRAM_STOPPED,
            materials={n: self._amount(f"material:{n}") for n in self.tracker.materials},
            material_params={
                n: (self._amount(f"diameter:{n}"), self._amount(f"density:{n}")) for n in self.tracker.materials
            },
            energy_kwh=self.energy_source() if self.energy_source is not None else None,
            lots={n: self._lot(n) for n in self.tracker.materials},
        )

    def _lot(self, name: str) -> str | None:
        """The lot the device's lot point gives (the tracker falls back to the job's and the config's)."""
        v = self._value(f"lot:{name}")
        return None if v in (None, "") else str(v)

    def expect_lots(self, name: str, lots: Mapping[str, str]) -> None:
        """A `job_start` for job `name` carries these lots: the job takes them when it starts."""
        self.tracker.expect_lots(name, lots)

    def forget_lots(self, name: str) -> None:
        self.tracker.forget_lots(name)

    @property
    def record(self) -> JobRecord | None:
        return self.tracker.current

    def oee(self) -> Oee | None:
        return self.window.figures(self.clock())

    def oee_shift(self) -> Oee | None:
        return self.shift_window.figures(self.clock()) if self.shift_window is not None else None
