"""The cell's command policy (`commands:` in the cell config): what the backbone may ask
of which machine, within which limits, how often and in which machine state. Validated
once at load time; the router (cellctl/commands/) only looks things up. Nothing is
allowed unless it is listed: commands are off until `enabled: true`, and a device, point
or command missing from `devices` is refused. See docs/commands.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cellctl.config.profile import ID_PATTERN
from cellctl.durations import PositiveDuration
from cellctl.model import Execution, ItemState, OperationMode

# Job commands every device may be allowed (the driver must implement JobControl, or the
# profile must map `jobs.start` onto one of its methods).
JOB_COMMANDS = ("job_start", "job_pause", "job_resume", "job_cancel")
Scalar = bool | int | float | str


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimit(_Frozen):
    """At most `count` accepted commands in any window of `per` seconds."""

    count: Annotated[int, Field(ge=1, le=100_000)]
    per: PositiveDuration


class Condition(_Frozen):
    """One interlock condition on the device's normalised state or one point's value.
    Exactly one subject: `item_state`, `operation_mode`, `execution` (any of the listed
    values), `alarms: none`, or `point` with `equals`, `one_of`, `min` and/or `max`."""

    item_state: list[ItemState] | None = None
    operation_mode: list[OperationMode] | None = None
    execution: list[Execution] | None = None
    alarms: Literal["none"] | None = None
    point: Annotated[str, Field(pattern=ID_PATTERN)] | None = None
    equals: Scalar | None = None
    one_of: list[Scalar] | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_subject(self) -> Condition:
        subjects = [
            n for n in ("item_state", "operation_mode", "execution", "alarms", "point") if getattr(self, n) is not None
        ]
        if len(subjects) != 1:
            raise ValueError(
                "give exactly one of 'item_state', 'operation_mode', 'execution', 'alarms' or 'point'"
                + (f" (got {subjects})" if subjects else "")
            )
        tests = [n for n in ("equals", "one_of", "min", "max") if getattr(self, n) is not None]
        if self.point is None and tests:
            raise ValueError(f"{tests} only go with 'point'")
        if self.point is not None and not tests:
            raise ValueError(f"point {self.point!r}: give 'equals', 'one_of', 'min' or 'max'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class PointPolicy(_Frozen):
    """A point the backbone may write, within limits that narrow the profile's."""

    min: float | None = None
    max: float | None = None
    step: Annotated[float, Field(gt=0)] | None = None  # the value must be min (or 0) + k * step
    one_of: list[Scalar] | None = None  # allowed values (enum), for any type
    rate_limit: RateLimit | None = None
    interlocks: list[Condition] = []
    # verify: after the write, wait for the device to report the value (the result
    # carries it; a different value fails the command). none: trigger points whose
    # read value is not what was written (a G-code `control.pause`).
    readback: Literal["verify", "none"] = "verify"

    @model_validator(mode="after")
    def _limits(self) -> PointPolicy:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class CommandPolicy(_Frozen):
    """A method the profile declares, or a job command, that the backbone may run."""

    rate_limit: RateLimit | None = None
    interlocks: list[Condition] = []


class DevicePolicy(_Frozen):
    points: dict[Annotated[str, Field(pattern=ID_PATTERN)], PointPolicy] = {}
    commands: dict[Annotated[str, Field(pattern=ID_PATTERN)], CommandPolicy] = {}
    rate_limit: RateLimit | None = None  # every command to the device together
    interlocks: list[Condition] = []  # checked before every command to the device


JOB_SUFFIXES = (".gcode", ".gco", ".g", ".nc", ".ngc", ".tap", ".cnc")


class JobFolder(_Frozen):
    """A local folder whose files become `job_start` commands for one device (see
    docs/commands.md and docs/decisions/0014-job-folder-as-a-command-source.md)."""

    path: Path  # relative to the config file; created with its subfolders at start
    suffixes: list[str] = list(JOB_SUFFIXES)  # files with other names are left alone

    @field_validator("suffixes")
    @classmethod
    def _suffixes(cls, value: list[str]) -> list[str]:
        for s in value:
            if not s.startswith(".") or len(s) < 2 or "/" in s:
                raise ValueError(f"a job suffix starts with a dot, like '.gcode', got {s!r}")
        return [s.lower() for s in value]


class CommandsConfig(_Frozen):
    """`commands:` — off unless enabled; then only what `devices` lists."""

    enabled: bool = False
    devices: dict[Annotated[str, Field(pattern=ID_PATTERN)], DevicePolicy] = {}
    # A request id seen within this window gets its first result again; nothing runs.
    idempotency_window: PositiveDuration = 600.0
    # Inline G-code programs above this size are refused (bytes).
    max_program_bytes: Annotated[int, Field(ge=1, le=64 * 2**20)] = 2**20
    # Where `job_start` by name finds programs (relative to the config file).
    job_store: Path | None = None
    # How long a command may take at the device, and how long a write waits for the
    # device to report the written value.
    execute_timeout: PositiveDuration = 10.0
    readback_timeout: PositiveDuration = 3.0
    # Accepted commands waiting per device; more are refused (`busy`).
    max_queued_per_device: Annotated[int, Field(ge=1, le=1000)] = 16
    # Local job folders by device: a file dropped there is a job_start command from the
    # folder. Configuring one is the consent for that source, whatever `enabled` says.
    job_folders: dict[Annotated[str, Field(pattern=ID_PATTERN)], JobFolder] = {}
