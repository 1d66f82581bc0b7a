"""The local job folder: one more source of the command router. A file dropped into a
device's folder becomes a `job_start` command (source `folder`) that goes through the
same validation, policy, interlocks, worker and audit as a command from the MES; the
outcome is filed beside the file. Jobs run one after the other, oldest first, when the
machine is ready (`JobWatcher.job_not_ready`).

    <folder>/part-17.nc               waiting (write elsewhere, then rename into place)
    <folder>/running/part-17.nc       being streamed
    <folder>/done/part-17.nc          completed            + part-17.nc.result.json
    <folder>/failed/part-17.nc        failed or refused    + part-17.nc.result.json (why)
    <folder>/cancelled/part-17.nc     cancelled            + part-17.nc.result.json

A job found in running/ at start-up was interrupted (the connection or cellctl went away
while it ran): it goes to failed/ and never restarts by itself. The request id is derived
from the file (`folder-<name>-<mtime ns>`): the audit names the file, and a file copied
in again is a new request.

Configured by `commands.job_folders.<device>` (the consent for this source, see
docs/decisions/0014-job-folder-as-a-command-source.md), or by a driver option `job_dir`
(the gcode driver's, deprecated: it keeps working through this module).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from cellctl.commands.model import Command, CommandResult, Source
from cellctl.config.commands import JOB_SUFFIXES
from cellctl.config.loader import CompiledCell
from cellctl.driver import JobWatcher
from cellctl.engine.runner import DeviceRunner

log = structlog.get_logger("cellctl.commands")

SCAN_INTERVAL = 1.0
SUBDIRS = ("running", "done", "failed", "cancelled")
_DEST = {"completed": "done", "failed": "failed", "cancelled": "cancelled"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class FolderSpec:
    device_id: str
    path: Path
    suffixes: tuple[str, ...]
    legacy: bool = False  # from the driver option `job_dir`

    @property
    def running(self) -> Path:
        return self.path / "running"


def folder_specs(compiled: CompiledCell) -> dict[str, FolderSpec]:
    """The job folder of every device that has one: `commands.job_folders` (relative to
    the config file), else a driver option `job_dir` (deprecated; absolute or relative to
    the working directory, as it always was). Both for one device is refused at load
    (cellctl/config/commands_check.py)."""
    out: dict[str, FolderSpec] = {}
    configured = compiled.config.commands.job_folders
    for dev in compiled.devices:
        device_id = dev.config.id
        folder = configured.get(device_id)
        if folder is not None:
            path = folder.path if folder.path.is_absolute() else compiled.path.parent / folder.path
            out[device_id] = FolderSpec(device_id, path, tuple(folder.suffixes))
            continue
        legacy = legacy_job_dir(dev.context.options)
        if legacy is not None:
            out[device_id] = FolderSpec(device_id, legacy[0], legacy[1], legacy=True)
    return out


def legacy_job_dir(options: Any) -> tuple[Path, tuple[str, ...]] | None:
    """A driver options model with `job_dir` (and `job_suffixes`): the gcode driver's."""
    job_dir = getattr(options, "job_dir", None)
    if not isinstance(job_dir, Path):
        return None
    suffixes = getattr(options, "job_suffixes", None) or JOB_SUFFIXES
    return job_dir, tuple(str(s).lower() for s in suffixes)


def request_id(path: Path) -> str:
    """`folder-<name>-<mtime ns>`: printable, at most 128 characters, stable for one file."""
    safe = _UNSAFE.sub("_", path.name)[:80]
    return f"folder-{safe}-{path.stat().st_mtime_ns}"


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for i in range(1000):
        candidate = path.with_name(f"{path.name}.{stamp}{f'-{i}' if i else ''}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free name for {path}")


def settle(path: Path, directory: Path, subdir: str, result: dict[str, Any]) -> Path:
    """Move a job file to its final folder and write the result beside it."""
    target = _unique(directory / subdir / path.name)
    os.replace(path, target)
    target.with_name(target.name + ".result.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return target


Submit = Callable[[Command, Callable[[CommandResult], None]], CommandResult]


class JobFolder:
    """Watches one device's folder and feeds its files to the router, one at a time."""

    def __init__(self, spec: FolderSpec, submit: Submit, runners: Callable[[str], DeviceRunner | None]) -> None:
        self.spec = spec
        self.dir = spec.path
        self.submit = submit
        self.runners = runners
        self.log = log.bind(device=spec.device_id, job_dir=str(spec.path))
        self._waiting_logged: str | None = None

    def prepare(self) -> None:
        """Create the subfolders; file every job left in running/ as interrupted."""
        for sub in SUBDIRS:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for stale in sorted(self.spec.running.iterdir()):
            if stale.is_file() and not stale.name.endswith(".result.json"):
                settle(stale, self.dir, "failed", {
                    "name": stale.name, "state": "failed",
                    "error": "interrupted: the connection or cellctl went away while the job ran; it was not restarted",
                })
                self.log.warning("job_interrupted", job=stale.name)

    def waiting(self) -> list[Path]:
        files = [
            p for p in self.dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in self.spec.suffixes
        ]
        return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))

    def _watcher(self) -> JobWatcher | None:
        runner = self.runners(self.spec.device_id)
        conn = runner.conn if runner is not None else None
        return conn if isinstance(conn, JobWatcher) else None

    def not_ready(self) -> str | None:
        runner = self.runners(self.spec.device_id)
        if runner is None or runner.conn is None:
            return "not connected"
        watcher = self._watcher()
        if watcher is None:
            return "the driver cannot run jobs from a folder"
        return watcher.job_not_ready()

    async def run(self) -> None:
        """Scan every SCAN_INTERVAL until cancelled; never raises for a bad file or folder."""
        try:
            await asyncio.to_thread(self.prepare)
        except OSError as exc:
            self.log.warning("job_dir_unusable", error=str(exc))
            return
        if self.spec.legacy:
            self.log.warning(
                "job_dir_option_deprecated",
                hint=f"use commands.job_folders.{self.spec.device_id}: {{path: ...}} in the cell config",
            )
        while True:
            await asyncio.sleep(SCAN_INTERVAL)
            try:
                files = self.waiting()
            except OSError as exc:
                self.log.warning("job_dir_unreadable", error=str(exc))
                continue
            if not files:
                continue
            why = self.not_ready()
            if why:
                if self._waiting_logged != why:
                    self.log.info("job_waiting", job=files[0].name, reason=why)
                    self._waiting_logged = why
                continue
            self._waiting_logged = None
            try:
                await self.run_file(files[0])
            except OSError as exc:  # the file or folder went away under us
                self.log.warning("job_file_unavailable", job=files[0].name, error=str(exc))

    async def run_file(self, path: Path) -> str | None:
        """One job: running/, the router, then the job's end; filed. Its final folder."""
        rid = request_id(path)
        running = self.spec.running / path.name
        os.replace(path, running)
        name = path.name
        final: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()

        def reply(result: CommandResult) -> None:
            if result.final and not final.done():
                final.set_result(result)

        cmd = Command(rid, self.spec.device_id, "job_start", {"name": name}, Source("folder", str(self.dir)), _now_ms())
        outcome: dict[str, Any] = {"name": name, "request_id": rid}
        try:
            self.submit(cmd, reply)
            result = await final
            if result.state != "done" or result.duplicate:
                why = result.message or result.reason or result.state
                if result.duplicate:
                    why = f"request {rid} was handled before: not run again"
                outcome |= {"state": "failed", "error": why, "command": dict(result.as_dict())}
                return self._file(running, "failed", outcome)
            outcome["command"] = dict(result.as_dict())
            summary = await self._wait(name)
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                self._file(running, "failed", outcome | {
                    "state": "failed", "error": "interrupted: cellctl stopped while the job ran; it was not restarted",
                })
            raise
        outcome = {**summary, **outcome}
        return self._file(running, _DEST.get(str(summary.get("state")), "failed"), outcome)

    async def _wait(self, name: str) -> dict[str, Any]:
        watcher = self._watcher()
        if watcher is None:
            return {"state": "failed", "error": "interrupted: the connection went away as the job started"}
        try:
            return await watcher.job_wait(name)
        except LookupError:
            return {"state": "failed", "error": "interrupted: the machine no longer knows the job"}

    def _file(self, running: Path, subdir: str, outcome: dict[str, Any]) -> str:
        target = settle(running, self.dir, subdir, outcome)
        self.log.info("job_filed", job=outcome["name"], state=outcome.get("state"), file=str(target))
        return subdir


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
