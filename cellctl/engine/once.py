"""One reading of one configured device through the engine's own code (the driver's
`open`, `PointTable` for scaling and quality, `MachineMapper` for the machine state),
and the commissioning traps it shows: what `cellctl poll` prints.

A polling driver is read once; a subscribing one (OPC UA, G-code) is listened to
until every point has been heard from or the wait is over.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from cellctl.config.loader import CompiledDevice
from cellctl.driver import DeviceUnavailable, Poller, Reading, Subscriber
from cellctl.engine.machine import MachineMapper
from cellctl.engine.points import BAD, NOT_YET_READ, PointTable
from cellctl.exits import implausible
from cellctl.model import MachineState, PointState, Quality


@dataclass(slots=True)
class PolledDevice:
    id: str
    driver: str
    profile: str
    error: str | None = None  # the device could not be opened or read
    points: tuple[PointState, ...] = ()
    machine: MachineState | None = None
    traps: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "driver": self.driver,
            "profile": self.profile,
            "reachable": self.error is None,
            "error": self.error,
            "points": [
                {"id": p.id, "value": p.value, "unit": p.unit, "quality": p.quality.value, "reason": p.reason}
                for p in self.points
            ],
            "machine": self.machine.as_dict() if self.machine is not None else None,
            "traps": self.traps,
        }


async def poll_once(device: CompiledDevice, *, wait: float) -> PolledDevice:
    """Open `device`, take one reading (or listen up to `wait` seconds for a pushing
    driver), and say what looks wrong. Never raises for anything the device does."""
    result = PolledDevice(device.config.id, device.config.driver, device.profile.name)
    table = PointTable(device.points)
    mapper = MachineMapper(device.profile, table)
    guard = 3 * device.config.timeout + 2.0
    try:
        async with asyncio.timeout(guard + wait), device.plugin.open(device.context) as conn:
            if isinstance(conn, Poller):
                table.apply(await conn.poll())
            elif isinstance(conn, Subscriber):
                await _listen(conn, table, wait)
            else:
                raise DeviceUnavailable("driver connection is neither a Poller nor a Subscriber")
    except DeviceUnavailable as exc:
        result.error = exc.reason
    except TimeoutError:
        result.error = f"no answer within {guard + wait:g} s"
    except Exception as exc:  # a driver bug: report it as this device's problem
        result.error = f"internal error: {exc!r}"
    if result.error is not None:
        table.mark_all_bad(result.error)
    result.points = table.states()
    if mapper.has_machine:
        result.machine = mapper.compute(result.error is None)
    result.traps = traps(device, result)
    return result


async def _listen(conn: Subscriber, table: PointTable, wait: float) -> None:
    heard: set[int] = set()
    everything = asyncio.Event()
    n = len(table.ids)

    def on_reading(reading: Reading) -> None:
        table.apply(reading)
        heard.update(reading.indexes if reading.indexes is not None else range(len(reading.values)))
        if len(heard) >= n:
            everything.set()

    task = asyncio.create_task(conn.subscribe(on_reading), name="poll-once-subscribe")
    try:
        done = asyncio.create_task(everything.wait(), name="poll-once-heard")
        await asyncio.wait({task, done}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        if task.done():
            task.result()  # the subscription ended: its DeviceUnavailable says why
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, DeviceUnavailable):
            await task


def traps(device: CompiledDevice, result: PolledDevice) -> list[str]:
    """The commissioning traps a reading shows, each with its likely cause."""
    if result.error is not None:
        return [f"device unreachable: {result.error}"]
    found: list[str] = []
    points = result.points
    if points and all(p.quality == BAD for p in points):
        first = points[0].reason
        found.append(
            f"every point is bad (first: {first}): wrong unit id or address, or a profile for another device type"
        )
    state = device.profile.state
    if state is not None and len(found) == 0:
        sp = next((p for p in points if p.id == state.point), None)
        if sp is not None and sp.quality == BAD:
            found.append(f"state point {sp.id!r} is bad ({sp.reason}): the machine state cannot be known")
    for p in points:
        if p.quality != Quality.GOOD:
            if p.reason == NOT_YET_READ:
                found.append(f"point {p.id!r} was not heard from within the wait")
            continue
        why = implausible(p.value)
        if why is not None:
            found.append(
                f"point {p.id!r} = {p.value!r}: {why}; probably the wrong word order or type "
                "(check it with `cellctl read`)"
            )
    return found
