"""Configuration models: a point's ``address:`` block, a device's ``connection:`` and
``options:``. Validated once at load time and frozen, so the I/O path re-checks nothing."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cellctl.driver import Duration, PositiveDuration
from cellctl_gcode.fields import FIELDS

DialectChoice = Literal["auto", "grbl", "marlin"]
Streaming = Literal["character_counting", "ping_pong"]
OnError = Literal["hold", "stop_streaming", "reset"]
LostAck = Literal["auto", "fail", "resume"]
OkAfterResend = Literal["auto", "yes", "no"]
Autoreport = Literal["auto", "off"]

MIN_STATUS_INTERVAL = 0.2  # GRBL: poll at 5 Hz at most
DEFAULT_SUFFIXES = (".gcode", ".gco", ".g", ".nc", ".ngc", ".tap", ".cnc")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GcodeAddress(_Frozen):
    """Which driver value a point carries: ``{field: mpos.x}`` (see README for the list)."""

    field: str

    @field_validator("field")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in FIELDS:
            close = difflib.get_close_matches(value, list(FIELDS), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else " (see the gcode driver README)"
            raise ValueError(f"unknown G-code field {value!r}{hint}")
        return value


class GcodeConnection(_Frozen):
    """The serial port: a device path or a stable /dev/serial/by-id/... link."""

    port: Annotated[str, Field(min_length=1)]
    baudrate: Annotated[int, Field(gt=0)] = 115200

    def describe(self) -> str:
        return f"{self.port} at {self.baudrate} baud"


class GrblOptions(_Frozen):
    """GRBL streaming."""

    # RX buffer size; "auto" takes it from `$I` ([OPT:..,..,rx]) and falls back to 128.
    rx_buffer: Literal["auto"] | Annotated[int, Field(ge=90, le=65536)] = "auto"
    streaming: Streaming = "character_counting"
    # What to do when a job line is answered `error:N` (the lines already in the
    # machine's buffer would still run): feed hold, just stop streaming, or soft reset.
    on_error: OnError = "hold"


class MarlinOptions(_Frozen):
    """Marlin streaming and reports."""

    bufsize: Annotated[int, Field(ge=1, le=64)] = 4  # lines in flight (firmware BUFSIZE)
    ok_after_resend: OkAfterResend = "auto"
    max_resends_per_line: Annotated[int, Field(ge=1, le=1000)] = 10
    max_resend_ratio: Annotated[float, Field(gt=0, le=1)] = 0.10
    autoreport: Autoreport = "auto"  # use M155/M154/M27 S when M115 says the firmware can
    # Sent (ping-pong) after a cancel, once motion has stopped: heaters and fan off.
    cancel_gcode: list[str] = ["M104 S0", "M140 S0", "M107"]


class GcodeOptions(_Frozen):
    """How to talk to a G-code machine."""

    dialect: DialectChoice = "auto"
    status_interval: Annotated[Duration, Field(ge=MIN_STATUS_INTERVAL)] = 0.2
    connect_timeout: PositiveDuration = 5.0
    # No acknowledgement for this long while lines are in flight: query the machine and
    # either keep waiting (it is busy), resume, or fail the job.
    ack_timeout: PositiveDuration = 10.0
    # No status report (GRBL) / no output at all while polling (Marlin) for this long:
    # the machine is gone (quality bad, reconnect).
    silence_timeout: PositiveDuration = 5.0
    # After a watchdog query shows lines were executed but never acknowledged:
    # fail the job, or count them as done and go on ("auto": fail for GRBL, whose
    # lines carry no number; resume for Marlin, whose line numbers prove it).
    lost_ack: LostAck = "auto"
    progress_interval: PositiveDuration = 0.5
    # Jobs dropped into this directory are streamed one after the other (see README).
    job_dir: Path | None = None
    job_suffixes: list[str] = list(DEFAULT_SUFFIXES)
    grbl: GrblOptions = GrblOptions()
    marlin: MarlinOptions = MarlinOptions()

    @field_validator("job_suffixes")
    @classmethod
    def _suffixes(cls, value: list[str]) -> list[str]:
        for s in value:
            if not s.startswith(".") or len(s) < 2:
                raise ValueError(f"a job suffix starts with a dot, like '.gcode', got {s!r}")
        return [s.lower() for s in value]
