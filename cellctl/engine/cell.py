"""The cell: every device runner under one TaskGroup, plus the task that keeps the
retained device states fresh."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cellctl.config.loader import CompiledCell
from cellctl.engine.runner import DeviceRunner, DeviceSink
from cellctl.model import DeviceSnapshot

# A device that is away is tried again at least this often (after three quick retries):
# a TCP connect to a machine that is off costs nothing, and a plant wants it back soon.
DEVICE_BACKOFF_MAX = 5.0


class Cell:
    def __init__(
        self, compiled: CompiledCell, sink: DeviceSink, *, clock: Callable[[], float] = time.monotonic
    ):
        self.compiled = compiled
        self.sink = sink
        self.clock = clock
        backbone = compiled.config.backbone
        self.runners = [
            DeviceRunner(
                d, sink, backoff_min=backbone.reconnect_min, backoff_max=max(backbone.reconnect_min, DEVICE_BACKOFF_MAX)
            )
            for d in compiled.devices
        ]
        self._by_id = {r.id: r for r in self.runners}
        publish = compiled.config.publish
        self.state_min_interval = publish.state_min_interval
        self.full_refresh = publish.full_refresh

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

    async def _refresher(self) -> None:
        tick = max(0.05, min(0.25, self.state_min_interval or 0.25))
        while True:
            await asyncio.sleep(tick)
            self.refresh_states()

    async def run(self, stop: asyncio.Event) -> None:
        """Run every device until `stop` is set, then cancel them all (bounded by the runners'
        own cleanup)."""
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(r.run(), name=f"device:{r.id}") for r in self.runners]
            tasks.append(tg.create_task(self._refresher(), name="state-refresher"))
            await stop.wait()
            pending = set(tasks)
            while pending:  # bounded by the caller's timeout
                for t in pending:
                    t.cancel()
                # Again until they end: Python 3.11's asyncio.wait_for (pymodbus connects
                # with it) loses a cancellation that arrives as the connection completes.
                _done, pending = await asyncio.wait(pending, timeout=0.2)
        # Nothing is known about the machines once we stop: say so in the retained states.
        for r in self.runners:
            r.mark_stopped("cellctl stopped")
        self.republish_all()

    def runner(self, device_id: str) -> DeviceRunner | None:
        return self._by_id.get(device_id)

    def snapshots(self) -> list[DeviceSnapshot]:
        return [r.snapshot() for r in self.runners]
