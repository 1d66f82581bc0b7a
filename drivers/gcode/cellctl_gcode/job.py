"""A job being streamed: its program, where streaming stands, and how it ended."""

from __future__ import annotations

import asyncio
import time
from enum import StrEnum
from typing import Any

from cellctl_gcode.extrusion import ExtrusionTracker
from cellctl_gcode.program import Program


class JobState(StrEnum):
    IDLE = "idle"  # no job yet (published before the first job)
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})


class JobRejected(RuntimeError):
    """A job cannot start now (another runs, the machine is not ready); nothing was sent."""


class Job:
    """Counters are updated by the dialect session on the event loop; `done` resolves
    when the job reaches a final state (it never raises: read `state` and `error`)."""

    def __init__(self, program: Program, *, name: str | None = None) -> None:
        self.program = program
        self.name = name or program.name
        self.total = len(program)
        self.state = JobState.RUNNING
        self.next = 0  # index of the next line to send
        self.acked = 0
        self.bytes_sent = 0
        self.resends = 0
        self.error = ""
        self.error_code = 0
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.ended: float | None = None
        self.cancel_requested = False
        self.extrusion = ExtrusionTracker()
        self._fed = 0  # lines given to `extrusion` (a prefix of the program)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def active(self) -> bool:
        return self.state in (JobState.RUNNING, JobState.PAUSED)

    @property
    def streaming(self) -> bool:
        """May lines be sent now?"""
        return self.state == JobState.RUNNING and not self.cancel_requested

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def progress(self) -> float:
        return self.acked / self.total if self.total else 1.0

    @property
    def eta(self) -> float | None:
        """Seconds to go, extrapolated from the rate so far (None until 1 % is done)."""
        if self.state == JobState.COMPLETED:
            return 0.0
        p = self.progress
        if p < 0.01 or not self.active:
            return None
        return self.elapsed * (1.0 - p) / p

    def account(self) -> None:
        """Give the extrusion tracker the lines acknowledged since the last call. Lines
        are acknowledged in program order; one taken back for a resend is counted when it
        is acknowledged again, never twice."""
        program, tracker = self.program, self.extrusion
        while self._fed < self.acked:
            tracker.feed(program.line(self._fed).decode("ascii"))
            self._fed += 1

    @property
    def run_id(self) -> str:
        """This run of the job: its name and start time (UTC, ms), so printing the same
        file twice gives two job records."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.started_wall))
        return f"{self.name}@{stamp}.{int(self.started_wall * 1000) % 1000:03d}Z"

    @property
    def filament_mm(self) -> float:
        """Net filament pushed by the acknowledged lines (retractions subtracted)."""
        return round(self.extrusion.net_mm, 4)

    def finish(self, state: JobState, error: str = "", code: int = 0) -> bool:
        """Move to a final state once; later calls are ignored (the first cause wins)."""
        if self.state in FINAL:
            return False
        self.state = state
        self.error = error
        self.error_code = code
        self.ended = time.monotonic()
        if not self.done.done():
            self.done.set_result(None)
        return True

    def fail(self, error: str, code: int = 0) -> bool:
        return self.finish(JobState.FAILED, error, code)

    def fields(self) -> dict[str, Any]:
        """The job.* field values (fields.py)."""
        eta = self.eta
        return {
            "job.state": self.state.value,
            "job.id": self.run_id,
            "job.name": self.name,
            "job.lines_total": self.total,
            "job.lines_sent": self.next,
            "job.lines_acked": self.acked,
            "job.progress": round(self.progress, 4),
            "job.bytes_sent": self.bytes_sent,
            "job.bytes_total": self.program.bytes_total,
            "job.elapsed": round(self.elapsed, 2),
            "job.eta": None if eta is None else round(eta, 1),
            "job.error": self.error,
            "job.error_code": self.error_code,
            "job.resends": self.resends,
            "job.filament_mm": self.filament_mm,
            "job.filament_diameter": self.program.filament_diameter_mm,
            "job.filament_density": self.program.filament_density_g_cm3,
        }

    def summary(self) -> dict[str, Any]:
        """What a job leaves behind (spool sidecar, CLI --json)."""
        return {
            "name": self.name,
            "state": self.state.value,
            "error": self.error,
            "error_code": self.error_code,
            "lines_total": self.total,
            "lines_sent": self.next,
            "lines_acked": self.acked,
            "bytes_sent": self.bytes_sent,
            "resends": self.resends,
            "filament_mm": self.filament_mm,
            "started": self.started_wall,
            "elapsed": round(self.elapsed, 3),
            **({"program_end": self.program.end_word} if self.program.end_word else {}),
            **({"lines_after_end": self.program.lines_after_end} if self.program.lines_after_end else {}),
        }
