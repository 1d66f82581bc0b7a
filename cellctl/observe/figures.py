"""One scrape's figures of a running daemon, as plain frozen data. The in-memory part is
read on the event loop (so no dict changes size under us); the outbox's SQLite figures
and the start history are read in the HTTP thread (so no file I/O blocks the loop)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cellctl import __version__
from cellctl.engine.points import BAD
from cellctl.lifecycle import recent_starts
from cellctl.outbox import OutboxStats

if TYPE_CHECKING:
    from cellctl.daemon import Daemon


@dataclass(frozen=True, slots=True)
class DeviceFigures:
    id: str
    driver: str
    available: bool
    reason: str | None  # why it is unavailable
    degraded: str | None  # why it is online but useless
    polls: int
    connects: int
    overruns: int
    errors: dict[str, int]  # by reason kind (cellctl.engine.figures.reason_kind)
    points: int
    points_bad: int
    latency_counts: tuple[int, ...]  # per bucket of LATENCY_BUCKETS, then +Inf; not cumulative
    latency_sum: float


@dataclass(frozen=True, slots=True)
class SessionFigures:
    fmt: str
    host: str
    port: int
    connected: bool
    connects: int
    published: int
    acked: int
    refused: int
    possible_duplicates: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class CommandFigures:
    accepted: int
    refused: dict[str, int]  # by reason
    written: int
    failed: dict[str, int]  # by reason
    overflowed: int


@dataclass(frozen=True, slots=True)
class LiveFigures:
    """What the event loop knows: devices, sessions, commands."""

    devices: tuple[DeviceFigures, ...]
    sessions: tuple[SessionFigures, ...]
    commands: CommandFigures
    writer_backlog: int
    reloads: int


@dataclass(frozen=True, slots=True)
class Figures:
    live: LiveFigures
    outbox: OutboxStats | None
    outbox_error: str | None
    recent_starts: int  # starts within lifecycle.STARTS_WINDOW_S, this one included
    taken_at: float  # wall clock
    version: str = __version__


def live_figures(daemon: Daemon) -> LiveFigures:
    """Event loop thread only."""
    devices = tuple(
        DeviceFigures(
            id=r.id,
            driver=r.device.config.driver,
            available=r.available,
            reason=None if r.available else r.last_reason,
            degraded=r.degraded,
            polls=r.polls,
            connects=r.connects,
            overruns=r.overruns,
            errors=dict(r.errors),
            points=len(r.table.ids),
            points_bad=sum(1 for q in r.table.quality if q == BAD),
            latency_counts=tuple(r.latency.counts),
            latency_sum=r.latency.sum,
        )
        for r in daemon.cell.runners
    )
    sessions = tuple(
        SessionFigures(
            fmt=d.fmt,
            host=d.session.node[0],
            port=d.session.node[1],
            connected=d.session.is_connected,
            connects=d.session.connects,
            published=d.session.published,
            acked=d.tracker.acked_total,
            refused=d.session.refused,
            possible_duplicates=d.possible_duplicates,
            last_error=d.session.last_error,
        )
        for d in daemon.deliveries
    )
    audit = daemon.audit  # every command of every source (cellctl/commands/audit.py)
    by_state: dict[str, dict[str, int]] = {"refused": {}, "failed": {}}
    for key, n in audit.reasons.items():
        state, _, reason = key.partition(":")
        if state in by_state:
            by_state[state][reason] = n
    commands = CommandFigures(
        accepted=audit.outcomes["accepted"],
        refused=by_state["refused"],
        written=audit.outcomes["done"],
        failed=by_state["failed"],
        overflowed=by_state["refused"].get("busy", 0),
    )
    return LiveFigures(devices, sessions, commands, daemon.writer.backlog, daemon.reloads)


class LoopNotResponding(Exception):
    """The event loop did not answer within the scrape's deadline."""


def take(daemon: Daemon, loop: asyncio.AbstractEventLoop, *, timeout: float = 2.0) -> Figures:
    """From a thread other than the loop's: the loop's figures (bounded wait), then the
    outbox's and the start history."""

    async def on_loop() -> LiveFigures:
        return live_figures(daemon)

    future = asyncio.run_coroutine_threadsafe(on_loop(), loop)
    try:
        live = future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise LoopNotResponding(f"the event loop did not answer within {timeout:g} s") from None
    outbox: OutboxStats | None = None
    error: str | None = None
    try:
        outbox = daemon.outbox.stats()
    except Exception as exc:  # closed at shutdown, or the disk went away
        error = str(exc)
    starts = len(recent_starts(daemon.state_dir))
    return Figures(live, outbox, error, starts, time.time())
