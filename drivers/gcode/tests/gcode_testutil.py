"""Helpers for the gcode driver tests: device contexts, jobs, readings, waits."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

from cellctl_gcode.config import GcodeAddress, GcodeConnection, GcodeOptions
from cellctl_gcode.device import GcodeDevice
from cellctl_gcode.fields import FIELDS

from cellctl.driver import DeviceContext, DeviceUnavailable, PointSpec, Reading
from cellctl.testing import async_wait_until as until

__all__ = ["until"]

_KIND_TO_TYPE = {"bool": "bool", "int": "int", "float": "float", "string": "string"}


def points(*fields: str) -> list[PointSpec]:
    """One point per field, named after it, of the field's own kind."""
    out = []
    for i, f in enumerate(fields):
        info = FIELDS[f]
        access = "w" if info.writable else "r"
        out.append(PointSpec(i, f.replace(".", "_"), _KIND_TO_TYPE[info.kind], access, GcodeAddress(field=f)))  # type: ignore[arg-type]
    return out


def ctx(port: str, pts: list[PointSpec] | None = None, *, timeout: float = 1.0, **options: Any) -> DeviceContext:
    return DeviceContext(
        device_id="m1",
        connection=GcodeConnection(port=port),
        options=GcodeOptions.model_validate(options),
        points=pts or [],
        timeout=timeout,
    )


class Values:
    """Applies partial readings the way the engine does: latest value per point id."""

    def __init__(self, pts: list[PointSpec]) -> None:
        self.ids = {p.index: p.id for p in pts}
        self.values: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.readings: list[Reading] = []

    def __call__(self, reading: Reading) -> None:
        self.readings.append(reading)
        idx = reading.indexes if reading.indexes is not None else range(len(reading.values))
        for k, i in enumerate(idx):
            pid = self.ids[i]
            if reading.errors and i in reading.errors:
                self.errors[pid] = reading.errors[i]
                self.values.pop(pid, None)
            else:
                self.values[pid] = reading.values[k]
                self.errors.pop(pid, None)


@contextlib.asynccontextmanager
async def subscribed(dev: GcodeDevice, values: Values) -> AsyncIterator[asyncio.Task[None]]:
    """The device's subscription running in the background, feeding `values`."""
    task = asyncio.get_running_loop().create_task(dev.subscribe(values), name="subscribe")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, DeviceUnavailable):
            await task


def grbl_job(n: int, *, seed: int = 1) -> list[str]:
    """Short G1 segments (a random walk of up to 2 mm steps inside the simulator's work
    area, like CAM output), canonical GRBL form."""
    rng = random.Random(seed)
    lines = ["G21G90", "G1X100Y100F3000"]
    x, y = 100.0, 100.0
    for _ in range(n - 2):
        x = min(290.0, max(10.0, x + rng.uniform(-2, 2)))
        y = min(190.0, max(10.0, y + rng.uniform(-2, 2)))
        lines.append(f"G1X{x:.3f}Y{y:.3f}Z{rng.uniform(-1, 1):.2f}")
    return lines


def marlin_job(n: int, *, seed: int = 1) -> list[str]:
    """Short extruding moves (a random walk of up to 2 mm steps), Marlin form."""
    rng = random.Random(seed)
    lines = ["G21", "G90", "M83"]
    x, y = 100.0, 100.0
    for _ in range(n - 3):
        x = min(190.0, max(10.0, x + rng.uniform(-2, 2)))
        y = min(190.0, max(10.0, y + rng.uniform(-2, 2)))
        lines.append(f"G1 X{x:.2f} Y{y:.2f} E{rng.uniform(0, 0.1):.3f} F{rng.randint(1200, 6000)}")
    return lines
