"""The driver interface: what a protocol plugin implements, and nothing more.

A driver speaks one protocol to one device. It knows addresses and wire types and
nothing about MQTT, scaling or deadbands: it returns *raw* values aligned with the
profile's point order, and the engine does the rest centrally.

Capabilities are small Protocols so a driver implements only what its protocol can
do: polling (Modbus), pushing (OPC UA subscriptions, G-code status streams), writing,
browsing. Third-party drivers register a `DriverPlugin` object in the entry-point group
``cellctl.drivers`` exactly as the built-in ones do.

This module is the whole SDK a driver touches: everything a driver needs from the core
(durations for its option models, logging set-up for its CLI commands) is re-exported
here (so is the CLI convention of `cellctl.exits`, for its commands), and a test keeps
the drivers from importing any other core module. See
docs/writing-a-driver.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TextIO, runtime_checkable

from pydantic import BaseModel

from cellctl.credentials import secret_path
from cellctl.durations import Duration, PositiveDuration
from cellctl.exits import ExitCode, implausible, json_text, print_json
from cellctl.floats import float32_shortest
from cellctl.model import Quality

if TYPE_CHECKING:
    from cellctl.exits import CommandFailed
    from cellctl.logs import LogLevel

__all__ = [
    "Access",
    "Browser",
    "Caller",
    "CommandFailed",
    "DeviceContext",
    "DeviceUnavailable",
    "DriverPlugin",
    "DriverRegistry",
    "Duration",
    "ExitCode",
    "JobControl",
    "PointSpec",
    "Poller",
    "PositiveDuration",
    "Quality",
    "Reading",
    "Subscriber",
    "ValueType",
    "WriteRejected",
    "Writer",
    "configure_logging",
    "float32_shortest",
    "implausible",
    "json_text",
    "print_json",
    "scoped_logging",
    "secret_path",
]

ValueType = Literal["bool", "int", "float", "string"]
Access = Literal["r", "w", "rw"]


class DeviceUnavailable(Exception):
    """The device (or the link to it) is gone: timeout, disconnect, refused connection.

    The engine answers by marking every point bad, closing the connection and
    reconnecting with backoff. A problem with a single point is *not* this: report it
    in `Reading.errors` instead.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WriteRejected(Exception):
    """The device answered a write and refused it (a Modbus exception response, an OPC UA
    Bad status): the link is fine, this one write failed. `reason` is the device's own
    word for it (``"modbus exception 2 (illegal data address)"``, ``"BadOutOfRange"``).

    The command path reports it to the sender and counts it; the device stays online.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One point as a driver sees it: its index in the profile, id, value type and the
    driver-specific address model (already validated by the plugin's `address_model`)."""

    index: int
    id: str
    type: ValueType
    access: Access
    address: BaseModel


@dataclass(slots=True)
class Reading:
    """Raw values from one poll or one push notification.

    `values[k]` belongs to point `indexes[k]`, or to point `k` when `indexes` is None
    (a full poll). A point whose value could not be read has an entry in `errors`
    (point index -> reason) and any placeholder in `values`.
    """

    values: list[Any]
    indexes: Sequence[int] | None = None
    errors: dict[int, str] | None = None
    source_ts: float | None = None  # epoch seconds from the device, if it has a clock
    # Per-value source timestamps (epoch seconds), aligned with `values`, when the
    # protocol carries one per value (OPC UA). Overrides `source_ts`.
    source_ts_each: list[float | None] | None = field(default=None)
    # Points whose value is usable but not trustworthy (point index -> reason, e.g. the
    # OPC UA status name UncertainLastUsableValue): the value is taken, quality=uncertain.
    uncertain: dict[int, str] | None = field(default=None)


@runtime_checkable
class Poller(Protocol):
    """A device the engine reads on a schedule."""

    async def poll(self) -> Reading:
        """Read every point once. Raise `DeviceUnavailable` when the device is gone."""
        ...


@runtime_checkable
class Subscriber(Protocol):
    """A device that pushes changes (OPC UA monitored items, a serial status stream)."""

    async def subscribe(self, on_reading: Callable[[Reading], None]) -> None:
        """Deliver readings until the connection ends; raise `DeviceUnavailable` then."""
        ...


@runtime_checkable
class Writer(Protocol):
    """A device whose points can be written (the command router's way in)."""

    async def write(self, index: int, raw_value: Any) -> None:
        """Write one raw (already unscaled) value to point `index`. Raise `WriteRejected`
        when the device refuses it, `DeviceUnavailable` when the device is gone."""
        ...


@runtime_checkable
class JobControl(Protocol):
    """A device that runs jobs (G-code programs): the command router's way to start,
    pause, resume and cancel them. Progress is published through the profile's
    `program` points; these calls return once the machine has been told."""

    async def job_start(self, name: str, content: bytes) -> None:
        """Start `content` as job `name`. ValueError if the job itself is refused (a line
        too long for the firmware ...), RuntimeError if another job runs or the machine
        is not ready. Nothing is sent in either case."""
        ...

    async def job_pause(self) -> None: ...

    async def job_resume(self) -> None: ...

    async def job_cancel(self) -> None: ...


@runtime_checkable
class JobWatcher(Protocol):
    """A `JobControl` device that can say whether a job could start now and how a job it
    started ended: what the local job folder (cellctl/commands/folder.py) needs to keep
    its queue waiting while the machine is busy and to file each job's outcome."""

    def job_not_ready(self) -> str | None:
        """Why a job cannot start now (another runs, an alarm, not connected), or None."""
        ...

    async def job_wait(self, name: str) -> dict[str, Any]:
        """Wait until the job started as `name` (the current or a recent one) ends;
        return its summary, at least `{"state": "completed" | "failed" | "cancelled",
        "error": str}`. A job the connection loss ends is `failed`. LookupError when no
        job of that name is known."""
        ...


@runtime_checkable
class Caller(Protocol):
    """A device that offers methods (OPC UA methods such as StartJob): the command
    router's way to call one a profile declares under `commands:`. A plugin that
    implements it also names the model of a method's address as `method_model`, so
    `cellctl check` validates the profile's addresses without I/O."""

    async def call(self, address: dict[str, Any], args: Sequence[Any]) -> list[Any]:
        """Call the method at `address` (the profile's address block) with `args` in
        declaration order; return its output arguments. ValueError when an argument does
        not fit (nothing sent), `WriteRejected` when the device refuses the call,
        `DeviceUnavailable` when the device is gone."""
        ...


@runtime_checkable
class Browser(Protocol):
    """A device whose address space can be listed for commissioning."""

    async def browse(self, depth: int) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """Everything a plugin needs to open one configured device."""

    device_id: str
    connection: BaseModel  # validated by the plugin's `connection_model`
    options: BaseModel  # validated by the plugin's `options_model`
    points: Sequence[PointSpec]
    timeout: float  # seconds: the device's request timeout from the cell config
    # Seconds between polls, the device's `poll_interval` from the cell config: the same
    # field means the same for every driver (a subscribing driver uses it for the points
    # it has to poll).
    poll_interval: float = 1.0


class DriverPlugin(Protocol):
    """The object a driver registers under the ``cellctl.drivers`` entry point."""

    name: str
    connection_model: type[BaseModel]
    options_model: type[BaseModel]
    address_model: type[BaseModel]

    def check_point(self, point: PointSpec) -> str | None:
        """Cross-check a point's value type against its address; return an error or None."""
        ...

    def plan_summary(self, ctx: DeviceContext) -> list[str]:
        """Describe the requests a device will issue (for `cellctl check`), no I/O."""
        ...

    def open(self, ctx: DeviceContext) -> AbstractAsyncContextManager[Any]:
        """Connect to the device; the context value implements Poller and/or Subscriber,
        and optionally Writer and Browser. Raise `DeviceUnavailable` if it cannot connect."""
        ...


DriverRegistry = Mapping[str, DriverPlugin]


def configure_logging(
    level: LogLevel = "info", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Set up structlog and stdlib logging the daemon's way, for a driver's own CLI
    commands (JSON lines off a terminal, a readable console on one). Imported lazily so
    loading a plugin does not load the logging stack. Loggers are not cached (a
    short-lived command gains nothing, and a command run inside another process, such as a
    test's CliRunner, must not pin every logger to its own output)."""
    from cellctl import logs

    logs.configure(level, json=json, stream=stream, cache=False)


@contextmanager
def scoped_logging(
    level: LogLevel = "warning", *, json: bool | None = None, stream: TextIO | None = None
) -> Iterator[None]:
    """`configure_logging` for the length of one CLI command, restoring the previous
    set-up afterwards (a command may run in-process: the demo, a test's CliRunner)."""
    from cellctl import logs

    with logs.scoped(level, json=json, stream=stream):
        yield


def __getattr__(name: str) -> Any:
    """`CommandFailed` (a click exception), imported when a driver's CLI names it, so
    loading a plugin for the daemon does not import click."""
    if name == "CommandFailed":
        from cellctl.exits import CommandFailed

        return CommandFailed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
