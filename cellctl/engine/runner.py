"""One device's life: connect, poll on monotonic deadlines (or take pushed readings),
apply the profile, publish changes, back off and reconnect when the device goes away.

A runner is an error boundary: nothing a device does escapes into the daemon's task
group, so one failing device never stops another.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from cellctl.config.loader import CompiledDevice
from cellctl.driver import DeviceUnavailable, Poller, Reading, Subscriber, Writer, WriteRejected
from cellctl.engine.backoff import Backoff, worth_repeating
from cellctl.engine.figures import LatencyHistogram, reason_kind
from cellctl.engine.machine import MachineMapper
from cellctl.engine.points import BAD, GOOD, PointTable
from cellctl.engine.rounds import PollRounds, first_slot, next_slot
from cellctl.model import DeviceSnapshot, DeviceUpdate, JobEvent, JobRecord, MachineState

if TYPE_CHECKING:
    from cellctl.jobs.device import DeviceJobs
    from cellctl.jobs.shifts import ShiftCalendar

log = structlog.get_logger("cellctl.engine")


class DeviceSink(Protocol):
    """Where a runner's output goes (the encoders, or a test's collector).

    `device_update` gets each scan's changes; `device_state` a full snapshot when the
    retained state is due; `device_available` the transitions only, with the snapshot
    at that moment: available once the first reading after the device (re)appeared is
    taken (the snapshot holds its values) and before that reading's update; unavailable
    after the update that marked it bad, and also on the very first failure of a device
    never read, so a consumer learns it exists."""

    def device_update(self, update: DeviceUpdate) -> None: ...

    def device_state(self, snapshot: DeviceSnapshot) -> None: ...

    def device_available(self, snapshot: DeviceSnapshot) -> None: ...

    def device_removed(self, device_id: str) -> None:
        """The device left the cell's configuration (a reload): it is gone, not merely
        unavailable."""
        ...


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class DeviceRunner:
    def __init__(
        self,
        device: CompiledDevice,
        sink: DeviceSink,
        *,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        job_dir: Path | None = None,
        shifts: ShiftCalendar | None = None,
        rounds: PollRounds | None = None,
    ) -> None:
        self.device = device
        self.rounds = rounds  # polls in flight, for the outbox's group commit
        self.id = device.config.id
        self.sink = sink
        self.table = PointTable(device.points)
        self.mapper = MachineMapper(device.profile, self.table)
        self.machine: MachineState = self.mapper.compute(False)
        self.has_machine = self.mapper.has_machine
        self.jobs: DeviceJobs | None = None
        if device.profile.job is not None:
            from cellctl.jobs.device import DeviceJobs  # only for profiles with jobs (start-up time)

            store = job_dir / f"{self.id}.json" if job_dir else None
            self.jobs = DeviceJobs(device.profile, self.table, store=store, shifts=shifts, lots=device.config.lots)
        self.available = False
        self.known = False  # a first reading or failure happened
        self.degraded: str | None = None  # why the device is online but useless
        self.last_reason: str | None = "not connected yet"
        self.failures = 0
        self.successes = 0
        self.polls = 0
        self.overruns = 0
        self.rejected_readings = 0
        self.connects = 0  # connections opened (metrics: reconnects)
        self.errors: Counter[str] = Counter()  # failures by reason_kind (metrics)
        self.latency = LatencyHistogram()  # of polls (metrics)
        self.state_dirty = True
        self.machine_stale = True  # recompute the machine state at the next reading
        self.state_published_at = 0.0  # monotonic
        self.conn: object | None = None  # the driver's open connection, while there is one
        self._reading_waiters: list[asyncio.Future[None]] = []  # `next_reading` callers
        self.backoff = Backoff(min(backoff_min, backoff_max), backoff_max)
        self.log = log.bind(device=self.id)
        cfg = device.config
        self.interval = cfg.poll_interval
        # Guard against a driver that never returns; drivers time out per request themselves.
        self.poll_guard = max(10 * cfg.timeout + 1.0, cfg.timeout + 2 * cfg.poll_interval)
        self.connect_guard = 3 * cfg.timeout + 2.0

    # -- the task -------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled. Never raises anything but CancelledError."""
        while True:
            try:
                async with AsyncExitStack() as stack:
                    try:
                        async with asyncio.timeout(self.connect_guard):
                            conn = await stack.enter_async_context(
                                self.device.plugin.open(self.device.context)
                            )
                    except TimeoutError:
                        raise DeviceUnavailable(f"connect timed out after {self.connect_guard:g} s") from None
                    self.conn = conn
                    self.connects += 1
                    try:
                        if isinstance(conn, Poller):
                            await self._poll_loop(conn)
                        elif isinstance(conn, Subscriber):
                            await conn.subscribe(self.on_reading)
                            raise DeviceUnavailable("subscription ended")
                        else:
                            raise DeviceUnavailable("driver connection is neither a Poller nor a Subscriber")
                    finally:
                        self.conn = None
            except DeviceUnavailable as exc:
                self._on_failure(exc.reason)
            except Exception as exc:  # the error boundary: a driver bug must not kill the daemon
                self.log.exception("device_error", error=repr(exc))
                self._on_failure(f"internal error: {exc!r}")
            await asyncio.sleep(self.backoff.next_delay())

    async def _poll_loop(self, conn: Poller) -> None:
        """Poll at once, then on monotonic deadlines: the multiples of the interval on the
        event loop's clock (`poll_phase: aligned`: devices with the same interval wake in
        the same loop turn and their scans share a commit) or every interval from this
        first poll on (`connect`)."""
        loop = asyncio.get_running_loop()
        interval = self.interval
        aligned = self.device.config.poll_phase == "aligned"
        rounds = self.rounds
        slot = 0
        next_at = loop.time()
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                # the deadline is next_at exactly: equal deadlines fire in one loop turn
                await asyncio.sleep(delay)
            started = loop.time()
            took = time.monotonic()  # the loop's clock may count whole ms (uvloop)
            gen = rounds.begin() if rounds is not None else 0
            try:
                try:
                    async with asyncio.timeout(self.poll_guard):
                        reading = await conn.poll()
                except TimeoutError:
                    raise DeviceUnavailable(f"poll did not finish within {self.poll_guard:g} s") from None
                self.latency.observe(time.monotonic() - took)
                self.on_reading(reading)
            finally:
                if rounds is not None:
                    rounds.end(gen)
            now = loop.time()
            if aligned:
                before = slot
                slot = first_slot(started, interval) if slot == 0 else next_slot(slot, now, interval)
                if before and slot > before + 1:
                    self.overruns += 1  # overran: the missed slots are skipped, not made up
                next_at = slot * interval
                continue
            next_at += interval
            if next_at < now:  # overran: skip the missed slots instead of bursting
                self.overruns += 1
                next_at = now

    async def write(self, point_id: str, value: Any) -> None:
        """Write one point in engineering units (the command path has validated it):
        undo the profile's scale and offset, then the driver's Writer. DeviceUnavailable
        when the device is not connected, WriteRejected when its driver cannot write or
        the device refuses."""
        conn = self.conn
        if conn is None:
            raise DeviceUnavailable(f"device {self.id!r} is not connected")
        writer = conn if isinstance(conn, Writer) else None
        if writer is None:
            raise WriteRejected(f"driver {self.device.config.driver!r} of device {self.id!r} cannot write")
        i = self.table.index_of(point_id)
        p = self.device.points[i]
        raw = value
        if p.type in ("int", "float") and (p.scale is not None or p.offset is not None):
            raw = (value - (p.offset or 0.0)) / (p.scale or 1.0)
            if p.type == "int":
                raw = round(raw)
        await writer.write(self.device.context.points[i].index, raw)

    async def next_reading(self) -> None:
        """Return once the next reading has been taken (a write's read-back waits for
        the device to report the value; the caller bounds the wait)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reading_waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._reading_waiters:
                self._reading_waiters.remove(fut)

    def point_value(self, point_id: str) -> tuple[Any, bool]:
        """A point's current engineering value and whether its quality is good."""
        i = self.table.index_of(point_id)
        return self.table.value[i], self.table.quality[i] == GOOD

    # -- state transitions ------------------------------------------------------------

    def on_reading(self, reading: Reading) -> None:
        """Take one reading (from the poll loop, or a driver's push callback). A reading
        the engine cannot take (a driver bug: wrong value types) is dropped and logged
        once; it never raises into the driver's callback."""
        try:
            self._take(reading)
            if self._reading_waiters:
                waiters, self._reading_waiters = self._reading_waiters, []
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)
        except Exception as exc:
            self.rejected_readings += 1
            if self.rejected_readings == 1 or self.rejected_readings % 1000 == 0:
                self.log.exception("reading_rejected", error=repr(exc), count=self.rejected_readings)

    def _take(self, reading: Reading) -> None:
        self.polls += 1
        self.failures = 0
        appeared = False
        if not self.available:
            self.successes += 1
            if self.successes < self.device.config.availability.online_after:
                return
            self.available = appeared = self.known = True
            self.machine_stale = True
            self.backoff.reset()
            self.log.info("device_online", was=self.last_reason)
            self.last_reason = None
        values, quality = self.table.apply(reading)
        if quality:
            self._check_degraded()
        machine = None
        if self.has_machine and (quality or self.machine_stale or not self.mapper.watched.isdisjoint(values)):
            self.machine_stale = False
            new_state = self.mapper.compute(True)
            if new_state != self.machine:
                self.machine = machine = new_state
        ts = now_ms()
        job: JobRecord | None = None
        job_events: tuple[JobEvent, ...] = ()
        jobs = self.jobs
        if jobs is not None and (machine is not None or quality or not jobs.watched.isdisjoint(values)):
            before = jobs.record
            job_events = tuple(jobs.observe(self.machine, ts))
            if jobs.record is not before:
                job = jobs.record
        if appeared:  # after taking the reading, so a birth carries its values
            self.sink.device_available(self.snapshot())
        if values or quality or machine is not None or appeared or job is not None:
            self.state_dirty = True
            self.sink.device_update(
                DeviceUpdate(
                    self.id, ts, values, quality, machine, True if appeared else None, job, job_events
                )
            )

    def _check_degraded(self) -> None:
        """Online with every point bad looks healthy but is not: say so once, with the
        likely causes, and put it in the device state until a point is good again."""
        table = self.table
        all_bad = bool(table.ids) and all(q == BAD for q in table.quality)
        if all_bad and self.degraded is None:
            first = table.reason[0]
            self.degraded = f"every point is bad (first: {first})"
            self.log.warning(
                "device_all_points_bad",
                reason=first,
                likely_causes="wrong unit id or address, or a profile for another device type",
            )
            self.state_dirty = True
        elif not all_bad and self.degraded is not None:
            self.degraded = None
            self.log.info("device_points_readable_again")
            self.state_dirty = True

    def mark_stopped(self, reason: str) -> None:
        """The daemon is stopping: nothing is known about the machine any more."""
        self.failures = self.device.config.availability.offline_after
        self._on_failure(reason, expected=True)

    def _on_failure(self, reason: str, *, expected: bool = False) -> None:
        first = not self.known and not expected  # the first thing learned is that it is down
        self.known = self.known or first
        self.successes = 0
        self.failures += 1
        if not expected:
            self.errors[reason_kind(reason)] += 1
        if reason != self.last_reason:
            level = self.log.info if expected else self.log.warning
            level("device_unavailable", reason=reason, was_available=self.available)
        elif not self.available and worth_repeating(self.failures):
            self.log.warning("device_still_unavailable", reason=reason, attempts=self.failures)
        self.last_reason = reason
        if self.available and self.failures < self.device.config.availability.offline_after:
            return
        was_available, self.available = self.available, False
        quality = self.table.mark_all_bad(reason)
        machine = self.mapper.compute(False)
        machine_changed = self.has_machine and machine != self.machine
        self.machine = machine
        if quality or machine_changed or was_available:
            self.state_dirty = True
            self.sink.device_update(
                DeviceUpdate(
                    self.id,
                    now_ms(),
                    {},
                    quality,
                    machine if machine_changed else None,
                    False if was_available else None,
                )
            )
        if was_available or first:
            self.sink.device_available(self.snapshot())

    def snapshot(self) -> DeviceSnapshot:
        """Everything known about the device now (retained state, births)."""
        return DeviceSnapshot(
            device_id=self.id,
            ts_ms=now_ms(),
            profile=self.device.profile.name,
            driver=self.device.config.driver,
            available=self.available,
            reason=self.last_reason,
            known=self.known,
            machine=self.machine if self.has_machine else None,
            points=self.table.states(),
            degraded=self.degraded if self.available else None,
            job=self.jobs.record if self.jobs is not None else None,
            oee=self.jobs.oee() if self.jobs is not None else None,
            oee_shift=self.jobs.oee_shift() if self.jobs is not None else None,
        )
