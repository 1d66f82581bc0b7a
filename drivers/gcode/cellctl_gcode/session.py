"""What every dialect session shares: the values it publishes (a field cache turned into
partial `Reading`s), ad-hoc commands with their replies, and the interface the device
drives. The dialects themselves live in `grbl_session` and `marlin_session`."""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cellctl.driver import PointSpec, Reading
from cellctl_gcode.bounds import check
from cellctl_gcode.fields import FIELDS, Dialect
from cellctl_gcode.job import Job

if TYPE_CHECKING:
    from cellctl_gcode.device import GcodeDevice

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


class Session(abc.ABC):
    """One dialect's protocol engine on an open link. All methods run on the loop."""

    dialect: Dialect

    def __init__(self, dev: GcodeDevice) -> None:
        self.dev = dev
        self.options = dev.options
        self.log = dev.log
        self.job: Job | None = None
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

    @abc.abstractmethod
    def not_ready(self) -> str | None:
        """Why a job cannot start now, or None."""

    @abc.abstractmethod
    def start_job(self, job: Job) -> None:
        """Begin streaming `job` (JobRejected if not ready)."""

    @abc.abstractmethod
    def pause(self) -> None: ...

    @abc.abstractmethod
    def resume(self) -> None: ...

    @abc.abstractmethod
    async def cancel(self) -> None: ...

    @abc.abstractmethod
    def submit(self, line: str, *, quiet: bool = False) -> Command:
        """Queue one command line in the FIFO; await its `future` for the reply."""

    def realtime(self, data: bytes) -> None:
        """Send real-time bytes (GRBL); other dialects refuse."""
        raise ValueError(f"{self.dialect} has no real-time commands")

    @abc.abstractmethod
    def emergency_stop(self) -> None:
        """Stop the machine now, whatever it is doing (GRBL soft reset, Marlin M112)."""

    @abc.abstractmethod
    def on_lost(self, reason: str) -> None:
        """The link is gone: fail the job and every pending command."""

    def job_changed(self) -> None:
        self.dev.job_changed()
