"""GRBL 1.1 on an open link: status polling, character-counting streaming, and the
watchdog that resynchronises instead of hanging.

Flow control (one FIFO for job lines, handshake and console commands):

* **character counting**: the bytes of unacknowledged lines (each line + newline) stay
  within the RX buffer less one byte; every `ok`/`error:N` releases the oldest line;
* **ping-pong** for lines that must be alone in the buffer: `$` commands (sent only once
  a status report newer than the last ack says Idle) and EEPROM-writing G-code
  (`G10 L2/L20`, `G28.1`, `G30.1`), during whose write GRBL loses serial input;
  `streaming: ping_pong` sends every line that way.

Status comes from `?` every `status_interval`; a report may leave fields out, so the
last known value of each is kept. Work position is derived (WPos = MPos - WCO) when the
machine reports MPos, and the other way round.

A job halts at the first `error:N` (and holds, resets or just stops streaming, as
`grbl.on_error` says), at `ALARM:N`, and at a reset banner; each names the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

from cellctl.driver import DeviceUnavailable
from cellctl_gcode import grbl
from cellctl_gcode.bounds import Bad, small_int
from cellctl_gcode.grbl import LineKind, StatusReport
from cellctl_gcode.job import Job, JobState
from cellctl_gcode.program import FLAG_KIND_MASK, FLAG_WAITS
from cellctl_gcode.session import Command, Session, SessionHost
from cellctl_gcode.timing import Ticker

DEFAULT_RX = 128
RX_MIN, RX_MAX = 90, 65536  # an RX size learnt from the machine outside this is noise
NO_BF = Bad("not reported by this machine ($10 status mask has no buffer data)")
_AXES = "xyzabc"
_READY_STATES = frozenset({"Idle", "Check"})
# (bytes, tag, job): tag is the job line index, or the Command
_Entry = tuple[int, Any, Job | None]


def _code(text: str, default: int) -> int:
    """The N of ``error:N`` / ``ALARM:N`` (`default` when it is not a sane number)."""
    code = small_int(text, default)
    return code if 0 <= code <= 0xFFFF else default


class GrblSession(Session):
    dialect = "grbl"

    def __init__(self, dev: SessionHost) -> None:
        super().__init__(dev)
        opts = self.options.grbl
        self.streaming = opts.streaming
        self.on_error = opts.on_error
        self.rx_auto = opts.rx_buffer == "auto"
        self.rx_size = DEFAULT_RX if isinstance(opts.rx_buffer, str) else opts.rx_buffer
        self.planner_size: int | None = None
        self.lost_ack = "fail" if self.options.lost_ack == "auto" else self.options.lost_ack
        self.in_flight: deque[_Entry] = deque()
        self.in_flight_bytes = 0
        self.max_in_flight_bytes = 0
        self.sync_in_flight = False
        self.state: str | None = None
        self.status: StatusReport | None = None
        self.status_seq = 0
        self.status_at = 0.0
        self.status_asked_at: float | None = None
        self._status_event = asyncio.Event()
        self.banners = 0
        self._banner_event = asyncio.Event()
        self.critical = False
        self.homing = False
        self.expect_reset = False
        # After a reset banner: the `$G` whose `[GC:...]` report marks where the answers to
        # lines written before the reset end (see _on_banner); None when in step.
        self.resync: Command | None = None
        self._resync_report = False
        self.stale_answers = 0
        self.last_ack_at = time.monotonic()
        self.wco: tuple[float, ...] | None = None

    @property
    def window(self) -> int:
        """Bytes that may be unacknowledged at once (RX size less one)."""
        return self.rx_size - 1

    # -- input ----------------------------------------------------------------------------

    def on_line(self, text: str) -> None:
        if self.resync is not None and self._stale(text):
            return
        if text == "ok":
            self._ack(0)
            return
        c = text[0]
        if c == "<":
            rep = grbl.parse_status(text)
            if rep is None:
                self.dev.noise(text)
            else:
                self._on_status(rep)
            return
        if text.startswith("error:"):
            self._ack(_code(text[6:], -1))
            return
        if text.startswith("ALARM:"):
            self._on_alarm(_code(text[6:], 0))
            return
        m = grbl.BANNER_RE.match(text)
        if m:
            self._on_banner(text, m.group(1))
            return
        if c == "[":
            self._on_bracket(text)
        elif c not in "$>":
            self.dev.noise(text)
            return
        if self.in_flight:
            tag = self.in_flight[0][1]
            if isinstance(tag, Command):
                tag.add_line(text)

    def _stale(self, text: str) -> bool:
        """While resynchronising: True for the answer to a line written before the reset."""
        resync = self.resync
        if text.startswith("[GC:") and self.in_flight and self.in_flight[0][1] is resync:
            self._resync_report = True
            return False
        if (text == "ok" or text.startswith("error:")) and not self._resync_report:
            self.stale_answers += 1
            if self.stale_answers <= 3 or self.stale_answers % 100 == 0:
                self.log.info("grbl_stale_answer", answer=text, count=self.stale_answers)
            return True
        return False

    def _ack(self, code: int) -> None:
        if not self.in_flight:
            self.stray_acks += 1
            if self.stray_acks <= 3 or self.stray_acks % 100 == 0:
                self.log.warning("grbl_unexpected_ack", answer="ok" if code == 0 else f"error:{code}", count=self.stray_acks)
            return
        size, tag, job = self.in_flight.popleft()
        self.in_flight_bytes -= size
        if tag is self.resync:
            self.resync = None  # in step again: every stale line has been answered
        self.last_ack_at = time.monotonic()
        if self.sync_in_flight and not self.in_flight:
            self.sync_in_flight = False
            self.homing = False
        if job is not None:
            job.acked += 1
            if code:
                self._job_line_failed(job, tag, code)
            elif job.acked >= job.total and job.next >= job.total and job.active and not job.cancel_requested:
                job.finish(JobState.COMPLETED)
                # with M2/M30 as the last line, this ok came once the program's motion ended
                end = {"program_end": job.program.end_word} if job.program.end_word else {}
                self.log.info("job_completed", job=job.name, lines=job.total, elapsed=round(job.elapsed, 3), **end)
                self.job_changed()
        elif isinstance(tag, Command):
            if code:
                tag.finish(False, f"error:{code} ({grbl.error_text(code)})", code)
            else:
                tag.finish(True)
        self._pump()

    def _job_line_failed(self, job: Job, index: int, code: int) -> None:
        if job.cancel_requested:
            return
        reason = f"{job.program.describe_line(index)} was rejected: error:{code} ({grbl.error_text(code)})"
        if not job.fail(reason, code):
            return
        self.log.warning("job_failed", job=job.name, reason=reason, halt=self.on_error)
        if self.on_error == "hold":
            self.dev.link.write_realtime(grbl.FEED_HOLD)
        elif self.on_error == "reset":
            self.expect_reset = True
            self.dev.link.write_realtime(grbl.SOFT_RESET)
        self.job_changed()

    def _on_status(self, rep: StatusReport) -> None:
        now = time.monotonic()
        self.status = rep
        self.status_seq += 1
        self.status_at = now
        self.status_asked_at = None
        previous, self.state = self.state, rep.state
        f = self.dev.fields
        f.set("state", rep.state)
        if rep.wco is not None:
            self.wco = rep.wco
            for a, v in zip(_AXES, rep.wco, strict=False):
                f.set(f"wco.{a}", v)
        wco = self.wco
        if rep.mpos is not None:
            for a, v in zip(_AXES, rep.mpos, strict=False):
                f.set(f"mpos.{a}", v)
            if wco is not None:
                for a, v, o in zip(_AXES, rep.mpos, wco, strict=False):
                    f.set(f"wpos.{a}", round(v - o, 4))
        elif rep.wpos is not None:
            for a, v in zip(_AXES, rep.wpos, strict=False):
                f.set(f"wpos.{a}", v)
            if wco is not None:
                for a, v, o in zip(_AXES, rep.wpos, wco, strict=False):
                    f.set(f"mpos.{a}", round(v + o, 4))
        if rep.planner_free is not None:
            f.set("buffer.planner", rep.planner_free)
            f.set("buffer.rx", rep.rx_free)
        elif "buffer.rx" not in rep.errors:
            # $10 decides whether reports carry Bf:, and GRBL's default leaves it out; it
            # is an EEPROM setting, so it is not changed behind the operator's back.
            f.set("buffer.planner", NO_BF)
            f.set("buffer.rx", NO_BF)
        if rep.feed is not None:
            f.set("feed", rep.feed)
        if rep.spindle is not None:
            f.set("spindle", rep.spindle)
        if rep.line is not None:
            f.set("line", rep.line)
        f.set("pins", rep.pins)
        if rep.overrides is not None:
            f.set("ov.feed", rep.overrides[0])
            f.set("ov.rapid", rep.overrides[1])
            f.set("ov.spindle", rep.overrides[2])
            f.set("accessories", rep.accessories)  # A: rides with Ov:; absent there = none
        for name, reason in rep.errors.items():
            f.set(name, Bad(reason))
            if name.startswith(("mpos.", "wpos.")):  # the other one is derived from it
                f.set(("wpos." if name[0] == "m" else "mpos.") + name[5:], Bad(reason))
        if rep.base_state != "Alarm":
            self.critical = False
            f.set("alarm_code", 0)
            f.set("alarm_text", "")
        if (
            self.rx_auto
            and rep.rx_free is not None
            and rep.state == "Idle"
            and not self.in_flight
            and self.planner_size is None  # $I did not tell us
            and rep.rx_free > self.rx_size
            and rep.rx_free <= RX_MAX
        ):
            self.rx_size = rep.rx_free
            self.log.info("grbl_rx_buffer", size=self.rx_size, source="Bf")
        if previous != rep.state:
            self.log.debug("grbl_state", state=rep.state, was=previous)
        self._status_event.set()
        self._pump()

    def _on_alarm(self, code: int) -> None:
        self.state = "Alarm"
        if code in grbl.CRITICAL_ALARMS:
            self.critical = True
        text = grbl.alarm_text(code)
        f = self.dev.fields
        f.set("state", "Alarm")
        f.set("alarm_code", code)
        f.set("alarm_text", text)
        self.log.warning("grbl_alarm", code=code, text=text)
        job = self.job
        if job is not None and job.active and not job.cancel_requested:
            near = self._oldest_job_line()
            self.fail_job(f"ALARM:{code} ({text})" + (f" near {near}" if near else ""))

    def _on_banner(self, text: str, version: str) -> None:
        self.banners += 1
        self.dev.fields.set("firmware", f"Grbl {version}")
        lost = len(self.in_flight)
        for cmd in self._answering():
            cmd.abort(f"the machine reset ({text!r}) before answering")
        self.in_flight.clear()
        self.in_flight_bytes = 0
        self.sync_in_flight = False
        self.critical = False
        self.homing = False
        self.status_asked_at = None
        job = self.job
        if job is not None and job.active:
            if self.expect_reset or job.cancel_requested:
                pass  # our own reset: cancel() finishes the job
            else:
                self.fail_job(
                    f"the machine reset (banner {text!r}) after {job.acked} of {job.total} lines were "
                    f"acknowledged; {lost} line(s) in its buffer were lost and the rest was not sent"
                )
        self.expect_reset = False
        self.log.info("grbl_reset", banner=text, lines_lost=lost)
        # Lines written before the reset may still be on their way (the pty, the USB
        # adapter) and are answered by the new firmware with an ok or error each, which
        # would be taken for the answers to what is sent next. GRBL's answers carry no
        # line number, so a `$G` (allowed in any state) goes first, alone: every ok or
        # error before its `[GC:...]` report answers a stale line and is dropped.
        if self.resync is not None:
            with contextlib.suppress(ValueError):
                self.commands.remove(self.resync)
            self.resync.abort("the machine reset again")
        self.resync = Command(b"$G", sync=True, quiet=True)
        self._resync_report = False
        self.commands.appendleft(self.resync)
        # the state before the reset (Run) no longer holds: ask now, so the report (a
        # real-time answer) is in before the answer to $G and what follows it
        self.ask_status(force=True)
        self._banner_event.set()
        self._pump()

    def _on_bracket(self, text: str) -> None:
        f = self.dev.fields
        if text.startswith("[MSG:"):
            msg = text[5:-1]
            f.set("message", msg)
            if "Reset to continue" in msg:
                self.critical = True
        elif text.startswith("[VER:"):
            build = text[5:-1].rstrip(":")
            f.set("build", build)
            f.set("firmware", "Grbl " + build.split(".2", 1)[0] if "." in build else f"Grbl {build}")
        elif text.startswith("[OPT:"):
            planner, rx = grbl.parse_opt(text)
            if planner is not None:
                self.planner_size = planner
            if rx is not None and self.rx_auto and RX_MIN <= rx <= RX_MAX:
                self.rx_size = rx
                self.log.info("grbl_rx_buffer", size=rx, source="$I")

    # -- output ---------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send whatever flow control allows now. Called after every ack and status."""
        link = self.dev.link
        if not link.is_open or self.critical:
            return
        ping_pong = self.streaming == "ping_pong"
        window = self.window
        while not self.sync_in_flight:
            if self.commands:
                cmd = self.commands[0]
                size = len(cmd.line) + 1
                if cmd.sync or ping_pong:
                    if self.in_flight:
                        return
                    self.commands.popleft()
                    self._send(cmd.line, size, cmd, None, True)
                    return
                if self.in_flight_bytes + size > window:
                    return
                self.commands.popleft()
                self._send(cmd.line, size, cmd, None, False)
                continue
            job = self.job
            if job is None or not job.streaming or job.next >= job.total:
                return
            i = job.next
            program = job.program
            line = program.line(i)
            kind = program.flags[i] & FLAG_KIND_MASK
            size = len(line) + 1
            if kind or ping_pong:
                if self.in_flight:
                    return
                if kind == LineKind.SETTING and not (self.state in _READY_STATES and self.status_at > self.last_ack_at):
                    self.ask_status()  # a fresh report saying Idle first
                    return
                self._send(line, size, i, job, True)
                job.next = i + 1
                job.bytes_sent += size
                return
            if self.in_flight_bytes + size > window:
                return
            self._send(line, size, i, job, False)
            job.next = i + 1
            job.bytes_sent += size

    def _send(self, line: bytes, size: int, tag: Any, job: Job | None, sync: bool) -> None:
        self.dev.link.write(line + b"\n")
        self.in_flight.append((size, tag, job))
        self.in_flight_bytes += size
        self.max_in_flight_bytes = max(self.max_in_flight_bytes, self.in_flight_bytes)
        if sync:
            self.sync_in_flight = True
            if line[:2].upper() == b"$H":
                self.homing = True  # no status reports until it ends: silence is expected

    def ask_status(self, *, force: bool = False) -> None:
        """Send `?` unless one is outstanding (GRBL ignores a second one)."""
        now = time.monotonic()
        asked = self.status_asked_at
        if not force and asked is not None and now - asked < max(0.5, 2 * self.options.status_interval):
            return
        self.status_asked_at = now
        self.dev.link.write_realtime(grbl.STATUS)

    def realtime(self, data: bytes) -> None:
        self.dev.link.write_realtime(data)

    def emergency_stop(self) -> None:
        self.expect_reset = True
        self.dev.link.write_realtime(grbl.SOFT_RESET)

    def submit(self, line: str, *, quiet: bool = False) -> Command:
        data = line.strip().encode("ascii")
        cmd = Command(data, sync=grbl.line_kind(data) != LineKind.STREAM, quiet=quiet)
        self.commands.append(cmd)
        self._pump()
        return cmd

    # -- waiting for the machine ------------------------------------------------------

    async def fresh_status(self, timeout: float) -> StatusReport | None:
        """A status report asked for now (None if none came within `timeout`)."""
        seq = self.status_seq
        self.ask_status(force=True)
        return await self._status_after(seq, timeout)

    async def _status_after(self, seq: int, timeout: float) -> StatusReport | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.status_seq <= seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self._status_event.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._status_event.wait()
            except TimeoutError:
                return None
        return self.status

    async def handshake(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.options.connect_timeout
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeviceUnavailable(
                    f"no GRBL status report from {self.dev.port!r} within {timeout:g} s "
                    f"(a GRBL controller at {self.dev.baudrate} baud? in a critical alarm, it answers only a reset)"
                )
            if await self.fresh_status(min(0.5, remaining)) is not None:
                break
        cmd = self.submit("$I")
        try:
            async with asyncio.timeout(max(2.0, self.dev.timeout)):
                reply = await cmd.future
        except TimeoutError:
            self.log.warning("grbl_no_build_info", port=self.dev.port)
            return
        self.log.info(
            "grbl_connected",
            port=self.dev.port,
            build=next((t[5:-1] for t in reply.lines if t.startswith("[VER:")), None),
            state=self.state,
            rx_buffer=self.rx_size,
            planner=self.planner_size,
        )

    # -- background tasks -------------------------------------------------------------

    async def status_loop(self) -> None:
        silence = self.options.silence_timeout
        ticker = Ticker(self.options.status_interval)
        while True:
            await ticker.tick()
            if self.critical or self.homing or self.state == "Home":
                self.status_at = time.monotonic()  # silence is expected: GRBL answers nothing
                continue
            self.ask_status()
            if time.monotonic() - self.status_at > silence:
                reason = f"no status report from {self.dev.port!r} for {silence:g} s"
                self.fail_job(f"machine silent: {reason}")
                self.dev.lost(reason)
                return

    def _oldest_job_line(self) -> str:
        for _, tag, job in self.in_flight:
            if job is not None:
                return job.program.describe_line(tag)
        job = self.job
        if job is not None and job.next > 0:
            return job.program.describe_line(job.next - 1)
        return ""

    def _dwell_allowance(self) -> float:
        total = 0.0
        for _, tag, job in self.in_flight:
            if job is not None and job.program.flags[tag] & FLAG_WAITS:
                total += grbl.dwell_seconds(job.program.line(tag))
        return total

    async def watchdog_loop(self) -> None:
        ack_timeout = self.options.ack_timeout
        period = min(1.0, ack_timeout / 4)
        while True:
            await asyncio.sleep(period)
            if not self.in_flight or self.critical:
                continue
            idle_for = time.monotonic() - self.last_ack_at
            if idle_for < ack_timeout + self._dwell_allowance():
                continue
            await self._resync(idle_for)

    async def _resync(self, idle_for: float) -> None:
        """No ack for a while with lines in flight: ask the machine what it is doing."""
        rep = await self.fresh_status(max(2.0, 3 * self.options.status_interval))
        if rep is None:
            reason = f"machine silent: no acknowledgement for {idle_for:.1f} s and no answer to a status query"
            self.fail_job(reason)
            self.dev.lost(reason)
            return
        base = rep.base_state
        if base in grbl.BUSY_STATES:
            self.log.info("watchdog_machine_busy", state=rep.state, waited=round(idle_for, 1))
            self.last_ack_at = time.monotonic()
            return
        if base == "Alarm":
            self.fail_job(f"the machine is in Alarm with {len(self.in_flight)} line(s) unacknowledged")
            return
        empty = rep.rx_free is None or (
            rep.rx_free >= self.rx_size - 1
            and (rep.planner_free is None or self.planner_size is None or rep.planner_free >= self.planner_size)
        )
        if not empty:
            self.last_ack_at = time.monotonic()
            return
        n = len(self.in_flight)
        first = self._oldest_job_line() or "a command"
        if self.lost_ack == "fail" or any(isinstance(tag, Command) for _, tag, _ in self.in_flight):
            reason = (
                f"acknowledgement lost: the machine is {rep.state} with empty buffers, but {n} line(s) "
                f"from {first} were never answered; they may or may not have run"
            )
            for cmd in self._answering():
                cmd.abort(reason)
            self.in_flight.clear()
            self.in_flight_bytes = 0
            self.sync_in_flight = False
            self.fail_job(reason)
            return
        self.log.warning("acks_lost_resumed", lines=n, first=first)
        for _ in range(n):
            self._ack(0)

    # -- jobs ---------------------------------------------------------------------------

    def _machine_not_ready(self) -> str | None:
        if self.critical or self.state not in _READY_STATES:
            return f"the machine is {self.state or 'in an unknown state'}, not Idle"
        if any(job is not None for _, _, job in self.in_flight):
            return "lines of the previous job are still unacknowledged"
        return None

    def _mark_progress(self) -> None:
        self.last_ack_at = time.monotonic()

    def _job_log(self) -> dict[str, Any]:
        return {"streaming": self.streaming}

    def _hold(self) -> None:
        self.dev.link.write_realtime(grbl.FEED_HOLD)

    def _release(self) -> None:
        self.dev.link.write_realtime(grbl.CYCLE_START)

    def _answering(self) -> list[Command]:
        return [tag for _, tag, _job in self.in_flight if isinstance(tag, Command)]

    async def _stop_for_cancel(self, job: Job) -> None:
        """Feed-hold until motion stops (a reset in motion loses the position), then
        soft-reset to flush GRBL's buffers."""
        loop = asyncio.get_running_loop()
        if not (self.in_flight or (self.state not in _READY_STATES and self.state != "Alarm")):
            return
        self.dev.link.write_realtime(grbl.FEED_HOLD)
        deadline = loop.time() + 5.0
        while loop.time() < deadline:
            rep = await self.fresh_status(0.5)
            if rep is not None and (rep.state in ("Hold:0", "Idle", "Alarm", "Check") or rep.base_state == "Door"):
                break
        self.expect_reset = True
        banners = self.banners
        self._banner_event.clear()
        self.dev.link.write_realtime(grbl.SOFT_RESET)
        try:
            async with asyncio.timeout(5.0):
                while self.banners == banners:
                    await self._banner_event.wait()
                    self._banner_event.clear()
        except TimeoutError:
            self.log.warning("grbl_no_banner_after_reset", job=job.name)
