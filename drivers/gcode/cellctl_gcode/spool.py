"""The job folder (`options.job_dir`): how the daemon streams jobs without a command
channel. A file dropped into the folder is a job; they run one after the other, oldest
first, when the machine is ready.

    job_dir/part-17.nc                  waiting (write elsewhere, then rename into place)
    job_dir/running/part-17.nc          being streamed
    job_dir/done/part-17.nc             completed        + part-17.nc.result.json
    job_dir/failed/part-17.nc           failed           + part-17.nc.result.json (the reason)
    job_dir/cancelled/part-17.nc        cancelled        + part-17.nc.result.json

A job found in running/ at start-up was interrupted (the connection or cellctl went
away while it ran): it goes to failed/, never restarts by itself.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from cellctl_gcode.config import GcodeOptions
from cellctl_gcode.job import Job, JobRejected, JobState
from cellctl_gcode.program import Program, ProgramError
from cellctl_gcode.timing import Ticker

SCAN_INTERVAL = 1.0
SUBDIRS = ("running", "done", "failed", "cancelled")
_DEST = {JobState.COMPLETED: "done", JobState.FAILED: "failed", JobState.CANCELLED: "cancelled"}


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for i in range(1000):
        candidate = path.with_name(f"{path.name}.{stamp}{f'-{i}' if i else ''}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free name for {path}")


def _settle(path: Path, directory: Path, subdir: str, result: dict[str, Any]) -> Path:
    """Move a job file to its final folder and write the result beside it."""
    target = _unique(directory / subdir / path.name)
    os.replace(path, target)
    target.with_name(target.name + ".result.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return target


class JobHost(Protocol):
    """What the job folder needs from the device (it never imports the device)."""

    options: GcodeOptions
    log: Any

    def not_ready(self) -> str | None: ...

    def load_program(self, path: Path, *, name: str | None = None) -> Program: ...

    def start_job(self, job: Job) -> None: ...

    def job_changed(self) -> None: ...


class JobSpool:
    def __init__(self, dev: JobHost, directory: Path, suffixes: list[str]) -> None:
        self.dev = dev
        self.dir = directory
        self.suffixes = tuple(s.lower() for s in suffixes)
        self.log = dev.log.bind(job_dir=str(directory))
        self._waiting_logged: str | None = None

    def _prepare(self) -> None:
        for sub in SUBDIRS:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for stale in sorted((self.dir / "running").iterdir()):
            if stale.is_file() and not stale.name.endswith(".result.json"):
                _settle(stale, self.dir, "failed", {
                    "name": stale.name, "state": "failed",
                    "error": "interrupted: the connection or cellctl went away while the job ran; it was not restarted",
                })
                self.log.warning("job_interrupted", job=stale.name)

    def waiting(self) -> list[Path]:
        files = [
            p for p in self.dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in self.suffixes
        ]
        return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))

    async def run(self) -> None:
        self._prepare()
        ticker = Ticker(SCAN_INTERVAL)
        while True:
            await ticker.tick()
            try:
                files = self.waiting()
            except OSError as exc:
                self.log.warning("job_dir_unreadable", error=str(exc))
                continue
            if not files:
                continue
            why = self.dev.not_ready()
            if why:
                if self._waiting_logged != why:
                    self.log.info("job_waiting", job=files[0].name, reason=why)
                    self._waiting_logged = why
                continue
            self._waiting_logged = None
            await self.run_file(files[0])

    async def run_file(self, path: Path) -> Job | None:
        running = self.dir / "running" / path.name
        try:
            os.replace(path, running)
        except OSError as exc:
            self.log.warning("job_file_unavailable", job=path.name, error=str(exc))
            return None
        try:
            program = self.dev.load_program(running, name=path.name)
        except ProgramError as exc:
            _settle(running, self.dir, "failed", {"name": path.name, "state": "failed", "error": str(exc)})
            self.log.warning("job_refused", job=path.name, reason=str(exc))
            return None
        job = Job(program, name=path.name)
        try:
            self.dev.start_job(job)
        except JobRejected as exc:
            os.replace(running, path)  # not started: back in the queue
            self.log.info("job_waiting", job=path.name, reason=str(exc))
            return None
        try:
            await job.done
        finally:
            if job.active:
                job.fail("interrupted: the connection or cellctl went away while the job ran")
                with contextlib.suppress(Exception):
                    self.dev.job_changed()
            with contextlib.suppress(OSError):
                final = _settle(running, self.dir, _DEST.get(job.state, "failed"), job.summary())
                self.log.info("job_filed", job=job.name, state=job.state.value, file=str(final))
        return job


async def start_named(dev: JobHost, name: str) -> None:
    """`control.start`: put the waiting job `name` at the head of the job folder's queue,
    so it is the next to run (ValueError unless it is a plain file name there)."""
    directory = dev.options.job_dir
    if directory is None:
        raise ValueError("control.start needs options.job_dir")
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"job name must be a plain file name inside job_dir, got {name!r}")
    path = directory / name
    if not path.is_file():
        raise ValueError(f"no job {name!r} waiting in {str(directory)!r}")
    os.utime(path, (0, 0))  # oldest first: this one is next
