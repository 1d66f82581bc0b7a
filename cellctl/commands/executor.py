"""Accepted writes, carried out through the device's driver: the one place where a command
meets a machine, and an error boundary. Whatever the driver raises — the device refused
the write (`WriteRejected`), it is gone (`DeviceUnavailable`), it timed out, or a driver
bug — is logged with the device's reason and counted; nothing here ends the daemon."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from cellctl.driver import DeviceUnavailable, WriteRejected

log = structlog.get_logger("cellctl.commands")

WRITE_TIMEOUT = 5.0
MAX_QUEUED = 64  # batches of writes waiting; more are refused (counted), never queued without bound
MAX_QUEUED_PER_DEVICE = 16  # writes waiting for one device: a slow machine cannot hoard the queue


@dataclass(frozen=True, slots=True)
class PointWrite:
    """A validated write of one point, in engineering units."""

    device_id: str
    point_id: str
    value: Any


class WriteTarget(Protocol):
    """A device that takes writes in engineering units (the engine's DeviceRunner)."""

    async def write(self, point_id: str, value: Any) -> None: ...


class WriteExecutor:
    """Runs accepted write batches one after the other, in arrival order."""

    def __init__(self, targets: Callable[[str], WriteTarget | None], *, max_queued: int = MAX_QUEUED) -> None:
        self.targets = targets
        self.queue: asyncio.Queue[list[PointWrite]] = asyncio.Queue(maxsize=max_queued)
        self.per_device: Counter[str] = Counter()  # writes queued, by device
        self.written = 0
        self.failed: Counter[str] = Counter()  # by reason: rejected, unavailable, timeout, error
        self.overflowed = 0

    def submit(self, writes: list[PointWrite]) -> bool:
        """Queue a batch (from an MQTT callback); False, counted, when the queue or a
        device's share of it is full."""
        mine = Counter(w.device_id for w in writes)
        crowded = [d for d, n in mine.items() if self.per_device[d] + n > MAX_QUEUED_PER_DEVICE]
        try:
            if crowded:
                raise asyncio.QueueFull
            self.queue.put_nowait(writes)
        except asyncio.QueueFull:
            self.overflowed += 1
            if self.overflowed == 1 or self.overflowed % 100 == 0:
                log.warning(
                    "command_queue_full", writes=len(writes), devices=crowded, refused_total=self.overflowed
                )
            return False
        self.per_device.update(mine)
        return True

    async def run(self) -> None:
        """Run as a named task until cancelled."""
        while True:
            batch = await self.queue.get()
            for w in batch:
                try:
                    await self.execute(w)
                finally:
                    self.per_device[w.device_id] -= 1

    async def execute(self, w: PointWrite) -> bool:
        target = self.targets(w.device_id)
        if target is None:
            self._failed("unknown_device", w, "no such device")
            return False
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await target.write(w.point_id, w.value)
        except WriteRejected as exc:
            self._failed("rejected", w, exc.reason)
            return False
        except DeviceUnavailable as exc:
            self._failed("unavailable", w, exc.reason)
            return False
        except TimeoutError:
            self._failed("timeout", w, f"no answer within {WRITE_TIMEOUT:g} s")
            return False
        except Exception as exc:  # the boundary: a driver bug must not end the daemon
            self._failed("error", w, repr(exc))
            return False
        self.written += 1
        log.info("command_written", device=w.device_id, point=w.point_id, value=w.value)
        return True

    def _failed(self, kind: str, w: PointWrite, reason: str) -> None:
        self.failed[kind] += 1
        log.warning("command_write_failed", device=w.device_id, point=w.point_id, kind=kind, reason=reason)
