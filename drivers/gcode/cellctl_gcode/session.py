"""What every dialect session shares: the values it publishes (a field cache turned into
partial `Reading`s), ad-hoc commands with their replies, and the interface the device
drives. The dialects themselves live in `grbl_session` and `marlin_session`."""

from __future__ import annotations

import abc
import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cellctl.driver import PointSpec, Reading
from cellctl_gcode.bounds import check
from cellctl_gcode.config import GcodeOptions
from cellctl_gcode.fields import FIELDS, Dialect
from cellctl_gcode.job import Job, JobRejected, JobState
from cellctl_gcode.serialport import SerialLink

NOT_REPORTED = "not reported by the machine yet"
NOT_KNOWN = "not known yet"  # a job value that cannot be computed yet (eta before 1 %)


class FieldCache:
    """Latest value of every field some point uses; `flush` turns the changes since the
    last flush into one partial Reading (only the points whose field changed).

    A value may be `bounds.Bad(reason)`: the field's points go bad with that reason. Any
    other value that does not fit a point's type (an int beyond int64, an infinite float)
    makes that point bad too, so nothing unencodable ever leaves the driver."""

    def __init__(self, points: Sequence[PointSpec]) -> None:
        self.by_field: dict[str, list[tuple[int, str]]] = {}
        for p in points:
            name: str = getattr(p.address, "field", "")
            self.by_field.setdefault(name, []).append((p.index, p.type))
        self.values: dict[str, Any] = {}
        self.dirty: set[str] = set()
        self.sink: Callable[[Reading], None] | None = None
        self.readings = 0

    def wants(self, name: str) -> bool:
        return name in self.by_field

    def wants_prefix(self, prefix: str) -> bool:
        return any(name.startswith(prefix) for name in self.by_field)

    def set(self, name: str, value: Any) -> None:
        if name not in self.by_field:
            return
        if name in self.values and self.values[name] == value:
            return
        self.values[name] = value
        self.dirty.add(name)

    def update(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            self.set(name, value)

    def unsupported(self, dialect: Dialect) -> list[str]:
        """Fields in use that `dialect` never reports."""
        return [n for n in self.by_field if dialect not in FIELDS[n].dialects]

    def flush(self, everything: bool = False) -> None:
        if self.sink is None:
            return
        names = set(self.values) if everything else self.dirty
        if not names:
            return
        indexes: list[int] = []
        values: list[Any] = []
        errors: dict[int, str] | None = None
        for name in names:
            v = self.values.get(name)
            for index, kind in self.by_field[name]:
                indexes.append(index)
                reason = (NOT_KNOWN if name.startswith("job.") else NOT_REPORTED) if v is None else check(v, kind)
                if reason is None:
                    values.append(_coerce(v, kind))
                else:
                    errors = errors or {}
                    errors[index] = reason
                    values.append(None)
        self.dirty.clear()
        self.readings += 1
        self.sink(Reading(values=values, indexes=indexes, errors=errors))


def _coerce(v: Any, kind: str) -> Any:
    if kind == "float":
        return float(v)
    if kind == "int":
        return int(v)
    if kind == "bool":
        return bool(v)
    return v if isinstance(v, str) else str(v)


@dataclass(slots=True)
class Reply:
    """What the machine answered to a command: ok or an error, and the lines before it."""

    ok: bool
    lines: list[str] = field(default_factory=list)
    error: str = ""
    code: int = 0


class CommandFailed(Exception):
    """A command could not be completed (machine reset, link lost); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


MAX_REPLY_LINES = 1000  # an answer longer than this ($$ is ~35, M503 ~100) is noise: not kept


class Command:
    """One line sent on behalf of a caller (handshake, console, polls) awaiting its ok."""

    __slots__ = ("future", "line", "lines", "quiet", "sync")

    def __init__(self, line: bytes, *, sync: bool = False, quiet: bool = False) -> None:
        self.line = line
        self.sync = sync
        self.quiet = quiet  # a poll: its answer lines are reports, not a reply
        self.lines: list[str] = []
        self.future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    def add_line(self, text: str) -> None:
        """A line of the answer (at most MAX_REPLY_LINES are kept: a chatty link is bounded)."""
        if len(self.lines) < MAX_REPLY_LINES:
            self.lines.append(text)

    def finish(self, ok: bool, error: str = "", code: int = 0) -> None:
        if not self.future.done():
            self.future.set_result(Reply(ok, self.lines, error, code))

    def abort(self, reason: str) -> None:
        if not self.future.done():
            self.future.set_exception(CommandFailed(reason))
            self.future.exception()  # retrieved: nobody may be waiting any more


class SessionHost(Protocol):
    """What a session needs from its device, and all it may touch: the sessions never
    import the device (which creates them), so the dependency runs one way."""

    options: GcodeOptions
    log: Any
    fields: FieldCache
    link: SerialLink
    port: str
    baudrate: int
    timeout: float  # bounds each handshake command and the watchdog's probe

    def noise(self, text: str) -> None: ...

    def lost(self, reason: str) -> None: ...

    def job_changed(self) -> None: ...

    def spawn(self, name: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None: ...


class Session(abc.ABC):
    """One dialect's protocol engine on an open link. All methods run on the loop.

    The job lifecycle (start, pause, resume, cancel, failing on a lost link) is the same
    for every dialect and lives here; a dialect supplies its flow control (`_pump`), what
    a pause or cancel does on the machine, and which commands are waiting for an answer."""

    dialect: Dialect

    def __init__(self, dev: SessionHost) -> None:
        self.dev = dev
        self.options = dev.options
        self.log = dev.log
        self.job: Job | None = None
        self.commands: deque[Command] = deque()  # waiting to be sent
        self.last_rx = time.monotonic()
        self.stray_acks = 0

    @abc.abstractmethod
    def on_line(self, text: str) -> None:
        """Handle one line from the machine."""

    @abc.abstractmethod
    async def handshake(self) -> None:
        """Identify the firmware; raise DeviceUnavailable if it does not answer."""

    @abc.abstractmethod
    async def status_loop(self) -> None:
        """Keep the status fields fresh; call `dev.lost` if the machine goes silent."""

    @abc.abstractmethod
    async def watchdog_loop(self) -> None:
        """Notice a stalled stream and resynchronise (or fail the job)."""

    def not_ready(self) -> str | None:
        """Why a job cannot start now, or None."""
        if self.job is not None and self.job.active:
            return f"job {self.job.name!r} is {self.job.state.value}"
        return self._machine_not_ready()

    @abc.abstractmethod
    def _machine_not_ready(self) -> str | None:
        """Why the machine cannot take a job now (no job is active), or None."""

    @abc.abstractmethod
    def submit(self, line: str, *, quiet: bool = False) -> Command:
        """Queue one command line in the FIFO; await its `future` for the reply."""

    def realtime(self, data: bytes) -> None:
        """Send real-time bytes (GRBL); other dialects refuse."""
        raise ValueError(f"{self.dialect} has no real-time commands")

    @abc.abstractmethod
    def emergency_stop(self) -> None:
        """Stop the machine now, whatever it is doing (GRBL soft reset, Marlin M112)."""

    # -- what a dialect supplies to the job lifecycle ------------------------------------

    @abc.abstractmethod
    def _pump(self) -> None:
        """Send whatever flow control allows now."""

    @abc.abstractmethod
    def _mark_progress(self) -> None:
        """The stream (re)starts now: the watchdog counts its silence from here."""

    @abc.abstractmethod
    def _answering(self) -> list[Command]:
        """Commands sent and still waiting for their answer."""

    @abc.abstractmethod
    async def _stop_for_cancel(self, job: Job) -> None:
        """Stop the machine working on `job` (streaming has already stopped)."""

    def _job_log(self) -> dict[str, Any]:
        """Dialect details for the job_started log line."""
        return {}

    def _state_changed(self) -> None:
        """The job's state changed (a dialect that derives its machine state redoes it)."""
        return  # nothing by default

    def _hold(self) -> None:
        """What a pause does on the machine besides not streaming (GRBL: feed hold)."""
        return  # nothing by default

    def _release(self) -> None:
        """What a resume does on the machine (GRBL: cycle start)."""
        return  # nothing by default

    def _link_lost(self) -> None:
        """Drop the dialect's timers when the link goes."""
        return  # nothing by default

    # -- the job lifecycle ------------------------------------------------------------

    def start_job(self, job: Job) -> None:
        """Begin streaming `job` (JobRejected if not ready; nothing sent then)."""
        why = self.not_ready()
        if why:
            raise JobRejected(f"job {job.name!r} not started: {why}")
        self.job = job
        self._mark_progress()
        self.log.info("job_started", job=job.name, lines=job.total, bytes=job.program.bytes_total, **self._job_log())
        if job.program.lines_after_end:
            self.log.warning(
                "job_lines_after_program_end", job=job.name, program_end=job.program.end_word,
                not_sent=job.program.lines_after_end,
            )
        self._state_changed()
        self.job_changed()
        if job.total == 0:
            job.finish(JobState.COMPLETED)
            self.job_changed()
            return
        self._pump()

    def pause(self) -> None:
        job = self.job
        if job is None or job.state != JobState.RUNNING:
            return
        job.state = JobState.PAUSED
        self._hold()
        self.log.info("job_paused", job=job.name, acked=job.acked)
        self._state_changed()
        self.job_changed()

    def resume(self) -> None:
        job = self.job
        if job is None or job.state != JobState.PAUSED:
            return
        job.state = JobState.RUNNING
        self._mark_progress()
        self._release()
        self.log.info("job_resumed", job=job.name)
        self._state_changed()
        self.job_changed()
        self._pump()

    async def cancel(self) -> None:
        """Stop streaming, stop the machine as the dialect does, then end the job."""
        job = self.job
        if job is None or not job.active:
            return
        job.cancel_requested = True  # nothing more of it is sent
        self.log.info("job_cancelling", job=job.name, acked=job.acked)
        await self._stop_for_cancel(job)
        job.finish(JobState.CANCELLED, "cancelled")
        self.log.info("job_cancelled", job=job.name, acked=job.acked, total=job.total)
        self._state_changed()
        self.job_changed()

    def fail_job(self, reason: str) -> bool:
        """Fail the current job (the first cause wins); True if this call failed it."""
        job = self.job
        if job is None or not job.fail(reason):
            return False
        self.log.warning("job_failed", job=job.name, reason=reason)
        self.job_changed()
        return True

    def on_lost(self, reason: str) -> None:
        """The link is gone: fail the job and every pending command."""
        self._link_lost()
        for cmd in [*self._answering(), *self.commands]:
            cmd.abort(reason)
        self.commands.clear()
        self.fail_job(f"connection lost: {reason}")

    def job_changed(self) -> None:
        self.dev.job_changed()
