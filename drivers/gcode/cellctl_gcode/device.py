"""One open G-code machine: the serial link, the dialect session, the published fields,
and the background work (status, watchdog, job progress), all owned here. The job
folder is the core's (cellctl/commands/folder.py): it uses `JobControl` and `JobWatcher`.

The daemon uses it as a `Subscriber` (status pushes become partial Readings) and a
`Writer` (control points); the CLI (`cellctl gcode send|console`) drives the same
object through `run_job`, `submit` and `realtime`. There is one implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog

from cellctl.driver import DeviceContext, DeviceUnavailable, Reading
from cellctl_gcode.config import GcodeAddress, GcodeConnection, GcodeOptions
from cellctl_gcode.fields import FIELDS, Dialect, dialect_of
from cellctl_gcode.grbl_session import GrblSession
from cellctl_gcode.job import Job, JobRejected, JobState
from cellctl_gcode.marlin_session import MarlinSession
from cellctl_gcode.program import Program
from cellctl_gcode.serialport import SerialLink
from cellctl_gcode.session import Command, FieldCache, Reply, Session
from cellctl_gcode.spool import start_named
from cellctl_gcode.timing import Ticker

log = structlog.get_logger("cellctl.gcode")

CLOSE_TIMEOUT = 2.0
FINISHED_KEPT = 16  # summaries of ended jobs kept for `job_wait`


def model(value: Any, cls: type[Any]) -> Any:
    """`value` as `cls`: the loader validated it already, but re-validate a foreign model."""
    if isinstance(value, cls):
        return value
    return cls.model_validate(value.model_dump())


def resolve_dialect(options: GcodeOptions, fields: list[str]) -> Dialect | None:
    """The dialect the profile's fields and the options agree on; None = detect at
    connect time. ValueError when they contradict each other."""
    allowed, specific = dialect_of(fields)
    if not allowed:
        raise ValueError(
            "the points mix GRBL-only and Marlin-only fields: "
            + ", ".join(f"{n} ({'/'.join(sorted(FIELDS[n].dialects))})" for n in specific)
        )
    if options.dialect != "auto":
        if options.dialect not in allowed:
            wrong = [n for n in specific if options.dialect not in FIELDS[n].dialects]
            raise ValueError(f"dialect {options.dialect!r} does not report field(s) {', '.join(wrong)}")
        return options.dialect
    if len(allowed) == 1:
        return next(iter(allowed))
    return None


class GcodeDevice:
    """An open machine. Create with `open_device(ctx)`; see the module docstring."""

    def __init__(self, ctx: DeviceContext, *, monitor: Callable[[str], None] | None = None) -> None:
        self.ctx = ctx
        self.connection: GcodeConnection = model(ctx.connection, GcodeConnection)
        self.options: GcodeOptions = model(ctx.options, GcodeOptions)
        self.port = self.connection.port
        self.baudrate = self.connection.baudrate
        self.timeout = ctx.timeout
        self.log = log.bind(device=ctx.device_id)
        self.fields = FieldCache(ctx.points)
        self._point_field = {p.index: model(p.address, GcodeAddress).field for p in ctx.points}
        self.link = SerialLink(
            self.port, self.baudrate, on_line=self._on_line, on_lost=self.lost, on_batch_end=self._batch_end
        )
        self.monitor = monitor
        self.session: Session | None = None
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.noise_lines = 0
        self.failed_lines = 0
        self._probe_lines: list[str] | None = None
        self._probe_event = asyncio.Event()
        self._flush_scheduled = False
        self._supervisor: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._job_event = asyncio.Event()
        self._finished: dict[str, dict[str, Any]] = {}  # the last jobs' summaries, by name
        self.fields.update(
            {
                "job.state": JobState.IDLE.value, "job.id": "", "job.name": "", "job.lines_total": 0, "job.lines_sent": 0,
                "job.lines_acked": 0, "job.progress": 0.0, "job.bytes_sent": 0, "job.bytes_total": 0,
                "job.elapsed": 0.0, "job.eta": None, "job.error": "", "job.error_code": 0, "job.resends": 0,
                "job.filament_mm": 0.0, "job.filament_diameter": None, "job.filament_density": None,
                "alarm_code": 0, "alarm_text": "", "message": "",
                "control.pause": False, "control.resume": False, "control.cancel": False, "control.start": "",
            }
        )

    # -- life cycle -----------------------------------------------------------------------

    @property
    def dialect(self) -> Dialect:
        return self._need_session().dialect

    def _need_session(self) -> Session:
        if self.session is None:
            raise RuntimeError("device is not open")
        return self.session

    async def start(self) -> None:
        fields = list(self._point_field.values())
        dialect = resolve_dialect(self.options, fields)
        self.link.open()
        if dialect is None:
            dialect = await self._detect()
        self.session = self._make_session(dialect)
        for name in self.fields.unsupported(dialect):
            self.log.warning("gcode_field_not_reported", field=name, dialect=dialect)
        await self.session.handshake()
        self.log.info("gcode_device_open", port=self.port, baudrate=self.baudrate, dialect=dialect)

    def _make_session(self, dialect: Dialect) -> Session:
        if dialect == "grbl":
            return GrblSession(self)
        return MarlinSession(self)

    async def _detect(self) -> Dialect:
        """Tell GRBL from Marlin: M115 makes Marlin name itself; GRBL answers error:20
        (or shows its banner or a status report)."""
        self._probe_lines = []
        loop = asyncio.get_running_loop()
        timeout = self.options.connect_timeout
        deadline = loop.time() + timeout
        probes = 0
        found: Dialect | None = None
        try:
            while loop.time() < deadline and found is None:
                self.link.write(b"M115\n")
                probes += 1
                wait_until = min(deadline, loop.time() + 1.0)
                while loop.time() < wait_until and found is None:
                    for line in self._probe_lines:
                        if "FIRMWARE_NAME:" in line:
                            found = "marlin"
                        elif line.startswith(("error:", "<", "Grbl", "ALARM:", "[MSG:")):
                            found = "grbl"
                    if found is None:
                        await self._probe_wait(wait_until)
            # Let every probe's answer end (ok / error:N) before the session starts counting.
            settle = loop.time() + 1.0
            while found is not None and loop.time() < settle:
                ends = sum(1 for t in self._probe_lines if t == "ok" or t.startswith(("ok ", "error:")))
                if ends >= probes:
                    break
                await self._probe_wait(settle)
        finally:
            self._probe_lines = None
        if found is None:
            raise DeviceUnavailable(f"no GRBL or Marlin firmware answered on {self.port!r} within {timeout:g} s")
        self.log.info("gcode_dialect_detected", dialect=found, port=self.port)
        return found

    async def _probe_wait(self, until: float) -> None:
        self._probe_event.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, until - asyncio.get_running_loop().time())):
                await self._probe_event.wait()
        if self.closed.is_set():
            raise DeviceUnavailable(self.close_reason)

    def lost(self, reason: str) -> None:
        """The machine is gone (port closed, silent): close, fail the job, end `subscribe`."""
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        self.log.warning("gcode_link_lost", port=self.port, reason=reason)
        self.link.close(reason)
        if self.session is not None:
            self.session.on_lost(reason)
        self._job_event.set()

    def close(self) -> None:
        if not self.closed.is_set():
            self.close_reason = "closed"
            self.closed.set()
            if self.session is not None:
                self.session.on_lost("device closed")
        self.link.close("closed")

    # -- background work -------------------------------------------------------------

    def start_background(self) -> None:
        self._supervisor = asyncio.get_running_loop().create_task(
            self._background(), name=f"gcode:{self.ctx.device_id}"
        )

    async def stop_background(self) -> None:
        task = self._supervisor
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.wait({task})  # never raises the task's own CancelledError

    def spawn(self, name: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `fn` in the device's task group (e.g. a cancel a host action asked for)."""
        tg = self._tg
        if tg is None:
            self.log.warning("gcode_task_not_started", task=name, reason="device not running")
            return
        tg.create_task(self._guard(name, fn), name=f"gcode-{name}:{self.ctx.device_id}")

    async def _background(self) -> None:
        session = self._need_session()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._guard("status", session.status_loop), name=f"gcode-status:{self.ctx.device_id}")
            tg.create_task(self._guard("watchdog", session.watchdog_loop), name=f"gcode-watchdog:{self.ctx.device_id}")
            tg.create_task(self._guard("progress", self._progress_loop), name=f"gcode-progress:{self.ctx.device_id}")

    async def _guard(self, name: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A background task's error boundary: a bug becomes a lost device, not a crash."""
        try:
            await fn()
        except DeviceUnavailable as exc:
            self.lost(exc.reason)
        except Exception as exc:
            self.log.exception("gcode_task_failed", task=name, error=repr(exc))
            self.lost(f"internal error in {name}: {exc!r}")

    async def _progress_loop(self) -> None:
        ticker = Ticker(self.options.progress_interval)
        while True:
            job = self._need_session().job
            if job is None or not job.active:
                self._job_event.clear()
                await self._job_event.wait()
                ticker.restart()
                continue
            self.fields.update(job.fields())
            self._schedule_flush()
            await ticker.tick()

    # -- input ------------------------------------------------------------------------

    def _on_line(self, text: str) -> None:
        if self.monitor is not None:
            self.monitor(text)
        session = self.session
        if session is None:
            if self._probe_lines is not None:
                if len(self._probe_lines) >= 512:  # noise while probing: keep the newest
                    del self._probe_lines[:256]
                self._probe_lines.append(text)
                self._probe_event.set()
            return
        try:
            session.on_line(text)
        except Exception as exc:  # a parser bug must not take the link (or the loop) down
            self.failed_lines += 1
            if self.failed_lines <= 3 or self.failed_lines % 1000 == 0:
                self.log.exception("gcode_line_failed", text=text[:80], error=repr(exc), count=self.failed_lines)

    def _batch_end(self) -> None:
        self.fields.flush()

    def noise(self, text: str) -> None:
        """A line no dialect rule understands (line noise, an unknown report)."""
        self.noise_lines += 1
        if self.noise_lines <= 5 or self.noise_lines % 1000 == 0:
            self.log.debug("gcode_unrecognised_line", text=text[:80], count=self.noise_lines)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.fields.flush()

    def job_changed(self) -> None:
        """A job started, paused, resumed or ended: publish its fields now."""
        job = self._need_session().job
        if job is not None:
            self.fields.update(job.fields())
            if not job.active:
                self._finished.pop(job.name, None)
                self._finished[job.name] = job.summary()
                while len(self._finished) > FINISHED_KEPT:
                    del self._finished[next(iter(self._finished))]
        self._job_event.set()
        self._schedule_flush()

    # -- capabilities -------------------------------------------------------------------

    async def subscribe(self, on_reading: Callable[[Reading], None]) -> None:
        """Deliver readings until the link ends; then raise DeviceUnavailable."""
        self.fields.sink = on_reading
        self.fields.flush(everything=True)
        try:
            await self.closed.wait()
        finally:
            self.fields.sink = None
        raise DeviceUnavailable(self.close_reason or "closed")

    async def write(self, index: int, raw_value: Any) -> None:
        """Control points: pause / resume / cancel the job, start a job from job_dir."""
        name = self._point_field.get(index)
        if name is None:
            raise ValueError(f"no point with index {index}")
        info = FIELDS[name]
        if not info.writable:
            raise ValueError(f"field {name!r} is read-only")
        session = self._need_session()
        if name == "control.start":
            await start_named(self, str(raw_value))
        elif not raw_value:
            return
        elif name == "control.pause":
            session.pause()
        elif name == "control.resume":
            session.resume()
        elif name == "control.cancel":
            await session.cancel()

    # -- jobs and commands (CLI, spool) ---------------------------------------------------

    def not_ready(self) -> str | None:
        """Why a job cannot start now, or None."""
        return "not connected" if self.session is None else self.session.not_ready()

    def load_program(self, path: Path, *, name: str | None = None) -> Program:
        return Program.from_file(path, dialect=self.dialect, name=name)

    def start_job(self, job: Job) -> None:
        if self.closed.is_set():
            raise JobRejected(f"job {job.name!r} not started: {self.close_reason}")
        self._need_session().start_job(job)

    async def run_job(
        self, program: Program, *, name: str | None = None, on_progress: Callable[[Job], Awaitable[None] | None] | None = None,
        progress_every: float = 0.1,
    ) -> Job:
        """Stream `program` to the end (completed, failed or cancelled) and return the job."""
        job = Job(program, name=name)
        self.start_job(job)
        while not job.done.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(progress_every):
                    await asyncio.shield(job.done)
            if on_progress is not None:
                r = on_progress(job)
                if r is not None:
                    await r
        return job

    # JobControl (cellctl.driver): the command router's way in.

    async def job_start(self, name: str, content: bytes) -> None:
        """Start `content` as job `name`: ValueError (ProgramError) if the job is refused,
        RuntimeError (JobRejected) if the machine is not ready; nothing sent then."""
        program = Program.from_lines(content.decode("latin-1").splitlines(), dialect=self.dialect, name=name)
        self.start_job(Job(program, name=name))

    # JobWatcher (cellctl.driver): what the core's job folder needs.

    def job_not_ready(self) -> str | None:
        return self.not_ready()

    async def job_wait(self, name: str) -> dict[str, Any]:
        """The summary of job `name` once it ends (a lost link fails it)."""
        job = self._need_session().job if self.session is not None else None
        if job is None or job.name != name:
            finished = self._finished.get(name)
            if finished is None:
                raise LookupError(f"no job {name!r}")
            return finished
        await asyncio.shield(job.done)
        return job.summary()

    async def job_pause(self) -> None:
        self.pause()

    async def job_resume(self) -> None:
        self.resume()

    async def job_cancel(self) -> None:
        await self.cancel()

    def pause(self) -> None:
        self._need_session().pause()

    def resume(self) -> None:
        self._need_session().resume()

    async def cancel(self) -> None:
        await self._need_session().cancel()

    @property
    def job(self) -> Job | None:
        return self._need_session().job

    def submit(self, line: str) -> Command:
        """Send one line (console): FIFO with everything else; await `.future`."""
        session = self._need_session()
        job = session.job
        if job is not None and job.active:
            raise JobRejected(f"job {job.name!r} is {job.state.value}: pause or cancel it, or use real-time commands")
        return session.submit(line)

    async def command(self, line: str, timeout: float = 10.0) -> Reply:
        cmd = self.submit(line)
        async with asyncio.timeout(timeout):
            return await cmd.future

    def realtime(self, data: bytes) -> None:
        self._need_session().realtime(data)

    def emergency_stop(self) -> None:
        self._need_session().emergency_stop()


@asynccontextmanager
async def open_device(ctx: DeviceContext, *, monitor: Callable[[str], None] | None = None) -> AsyncIterator[GcodeDevice]:
    """Open, identify and supervise one machine; close everything on exit."""
    dev = GcodeDevice(ctx, monitor=monitor)
    try:
        await dev.start()
        dev.start_background()
        yield dev
    finally:
        await dev.stop_background()
        dev.close()
