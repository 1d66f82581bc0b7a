"""The cell: every device runner under one TaskGroup, plus the task that keeps the
retained device states fresh. Devices can be added, removed and replaced while it runs
(a reload), each without touching the others."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path

from cellctl.config.loader import CompiledCell, CompiledDevice
from cellctl.engine.rounds import PollRounds
from cellctl.engine.runner import DeviceRunner, DeviceSink
from cellctl.model import DeviceSnapshot

# A device that is away is tried again at least this often (after three quick retries):
# a TCP connect to a machine that is off costs nothing, and a plant wants it back soon.
DEVICE_BACKOFF_MAX = 5.0
STOP_TIMEOUT = 5.0  # one device task's cleanup when it is removed
# The state refresher sleeps until the next retained state is due, within these bounds.
REFRESH_MIN = 0.05
REFRESH_MAX = 1.0


async def _cancel_all(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel until they end: Python 3.11's asyncio.wait_for (pymodbus connects with it)
    loses a cancellation that arrives as the connection completes. Bounded by the caller."""
    pending = tasks
    while pending:
        for t in pending:
            t.cancel()
        _done, pending = await asyncio.wait(pending, timeout=0.2)


class Cell:
    def __init__(
        self,
        compiled: CompiledCell,
        sink: DeviceSink,
        *,
        clock: Callable[[], float] = time.monotonic,
        state_dir: Path | None = None,
    ):
        self.compiled = compiled
        # job records survive restarts here (cellctl/jobs/device.py)
        self.job_dir = state_dir / "jobs" if state_dir is not None else None
        self.sink = sink
        self.clock = clock
        backbone = compiled.config.backbone
        self._backoff = (backbone.reconnect_min, max(backbone.reconnect_min, DEVICE_BACKOFF_MAX))
        # polls in flight, so the outbox writer can commit one round's scans together
        self.rounds = PollRounds()
        self.runners = [self._runner(d) for d in compiled.devices]
        self._by_id = {r.id: r for r in self.runners}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        publish = compiled.config.publish
        self.state_min_interval = publish.state_min_interval
        self.full_refresh = publish.full_refresh

    def _runner(self, device: CompiledDevice) -> DeviceRunner:
        low, high = self._backoff
        if self.job_dir is not None and device.profile.job is not None:
            self.job_dir.mkdir(parents=True, exist_ok=True)
        oee = self.compiled.config.oee
        shifts = None
        if oee.shifts:
            from cellctl.jobs.shifts import ShiftCalendar  # only when shifts are configured

            shifts = ShiftCalendar.of(oee.shifts, oee.timezone)
        runner = DeviceRunner(
            device,
            self.sink,
            backoff_min=low,
            backoff_max=high,
            job_dir=self.job_dir,
            shifts=shifts,
            rounds=self.rounds,
        )
        energy = device.config.energy
        if runner.jobs is not None and energy is not None:
            runner.jobs.energy_source = functools.partial(self._meter_reading, energy.meter, energy.point)
        return runner

    def _meter_reading(self, meter: str, point: str) -> float | None:
        """The energy meter's counter now (a device related by `energy:`), None while it
        is unknown; looked up at each call, so it follows reloads."""
        runner = self._by_id.get(meter)
        if runner is None:
            return None
        try:
            value, good = runner.point_value(point)
        except (KeyError, ValueError):
            return None
        if not good or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)

    def republish_all(self) -> None:
        """After a (re)connect: every retained state goes out again now."""
        for r in self.runners:
            self._publish_state(r)

    def _publish_state(self, runner: DeviceRunner) -> None:
        runner.state_dirty = False
        runner.state_published_at = self.clock()
        self.sink.device_state(runner.snapshot())

    def refresh_states(self) -> None:
        now = self.clock()
        for r in self.runners:
            age = now - r.state_published_at
            if (r.state_dirty and age >= self.state_min_interval) or age >= self.full_refresh:
                self._publish_state(r)

    def _refresh_delay(self) -> float:
        """Until the next retained state is due, between REFRESH_MIN and REFRESH_MAX s
        (never above `state_min_interval`): a state that changes becomes due at once if its
        last one is old, and is published at the latest that much later. A quiet cell wakes
        about once a second for this, not four times."""
        longest = max(REFRESH_MIN, min(REFRESH_MAX, self.state_min_interval or REFRESH_MAX))
        due = self.clock() + longest
        for r in self.runners:
            due = min(due, r.state_published_at + (self.state_min_interval if r.state_dirty else self.full_refresh))
        return max(REFRESH_MIN, due - self.clock())

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_delay())
            self.refresh_states()

    def _start(self, runner: DeviceRunner) -> None:
        assert self._tg is not None
        self._tasks[runner.id] = self._tg.create_task(runner.run(), name=f"device:{runner.id}")

    async def run(self, stop: asyncio.Event) -> None:
        """Run every device until `stop` is set, then cancel them all (bounded by the runners'
        own cleanup)."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for r in self.runners:
                self._start(r)
            refresher = tg.create_task(self._refresher(), name="state-refresher")
            await stop.wait()
            self._tg = None
            await _cancel_all({*self._tasks.values(), refresher})
        # Nothing is known about the machines once we stop: say so in the retained states.
        for r in self.runners:
            r.mark_stopped("cellctl stopped")
        self.republish_all()

    # -- changes while running (reload) -----------------------------------------------------

    def add(self, device: CompiledDevice) -> DeviceRunner:
        """A new device: its runner starts now (if the cell runs)."""
        runner = self._runner(device)
        self.runners.append(runner)
        self._by_id[runner.id] = runner
        if self._tg is not None:
            self._start(runner)
        return runner

    async def remove(self, device_id: str) -> DeviceRunner | None:
        """Stop one device's task (bounded) and forget it; the others run on untouched."""
        runner = self._by_id.pop(device_id, None)
        if runner is None:
            return None
        self.runners.remove(runner)
        task = self._tasks.pop(device_id, None)
        if task is not None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await _cancel_all({task})
            except TimeoutError:
                runner.log.warning("device_stop_timed_out", timeout=STOP_TIMEOUT)
        return runner

    def runner(self, device_id: str) -> DeviceRunner | None:
        return self._by_id.get(device_id)

    def snapshots(self) -> list[DeviceSnapshot]:
        return [r.snapshot() for r in self.runners]
