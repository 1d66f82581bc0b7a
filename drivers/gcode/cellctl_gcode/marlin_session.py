"""Marlin 2.x on an open link: numbered, checksummed streaming with resends, reports
(auto-report where the firmware has it, polling otherwise), and a watchdog.

Flow control: every line goes out as ``N<n> <cmd>*<cs>`` and at most `bufsize` lines are
unacknowledged. Job lines, polls and console commands share one FIFO and one numbering.

Resends: ``Resend: n`` (or ``rs n``) means the firmware has every line before n and has
thrown away the rest, so every line from n on goes back to the front of the queue with
its number, and lines before n stay in flight (their ``ok`` is still to come). Lines
already on the wire behind the bad one each provoke one more, identical request; those
duplicates are recognised (at most one per such line) and ignored, which is what keeps a
noisy link from turning into a resend storm. An ``ok`` right after a resend request is
that request's own (older firmware sends one) unless the firmware has shown it does not;
`marlin.ok_after_resend` can say so up front. More than `max_resends_per_line` requests
for one line, or resends above `max_resend_ratio` of the lines sent, fail the job.

Watchdog: with lines in flight and neither an ``ok`` nor a ``busy:`` keep-alive for
`ack_timeout` (a heating or homing command at the head of the queue may take as long as
the machine keeps talking), the driver sends a line with a number the firmware cannot
expect. Its ``Resend: n`` reveals exactly which lines the firmware holds: those whose
``ok`` got lost are counted as done (or fail the job, per `lost_ack`) and the others
are resent. No answer at all: the machine is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from cellctl.driver import DeviceUnavailable
from cellctl_gcode import marlin
from cellctl_gcode.job import Job, JobState
from cellctl_gcode.program import FLAG_WAITS
from cellctl_gcode.session import Command, Session, SessionHost
from cellctl_gcode.timing import Ticker

RATIO_MIN_LINES = 100  # the resend ratio is judged only after this many lines
BUSY_RECENT = 5.0  # seconds a busy: message keeps the state "Busy"
HISTORY = 256  # acknowledged lines kept for resend requests
LEARN_OK_WAIT = 0.3  # an ok after a resend request comes at once, or not at all
MARKER_TIMEOUT = 1.0  # a resend marker unanswered this long (and nothing else moving) is lost
QUIET = 0.02  # seconds without an echo before the marker goes out


@dataclass(slots=True, eq=False)
class _Entry:
    cmd: bytes
    tag: Any = None  # job line index, a Command, or None
    job: Job | None = None
    n: int | None = None
    data: bytes = b""
    waits: bool = False  # blocking command: long silence is normal
    numbered: bool = True
    sync: bool = False  # sent only when nothing is in flight (M110: the firmware runs it late)
    resends: int = 0  # resend requests for this line
    barrier: bool = False  # nothing is sent after it until it is acknowledged


class MarlinSession(Session):
    dialect = "marlin"

    def __init__(self, dev: SessionHost) -> None:
        super().__init__(dev)
        opts = self.options.marlin
        self.window = opts.bufsize
        self.resend_ok_mode = opts.ok_after_resend
        # Does the firmware answer a resend request with an ok of its own? "auto" finds out
        # at connect time (a deliberately misnumbered line, nothing else in flight).
        self.resend_ok = opts.ok_after_resend != "no"
        self._learning: asyncio.Event | None = None
        self._learned_resend = False
        self._learned_ok = False
        self.max_per_line = opts.max_resends_per_line
        self.max_ratio = opts.max_resend_ratio
        self.lost_ack = "resume" if self.options.lost_ack == "auto" else self.options.lost_ack
        self.firmware = marlin.Firmware()
        self.outbox: deque[_Entry] = deque()
        self.sent: deque[_Entry] = deque()
        # Recently acknowledged numbered lines: if the firmware asks for one of them, an
        # ok was taken for the wrong line (noise can forge or eat one), and it is resent.
        self.history: deque[_Entry] = deque(maxlen=HISTORY)
        self.next_n = 1
        self.expect_resend_ok = False
        # After a resend request, a marker line goes out before the resent lines; until
        # its ok comes back, every resend request is the echo of a line sent earlier.
        self.marker: _Entry | None = None
        self.marker_hold_until = 0.0
        self.stale_requests = 0
        self._pump_timer: asyncio.TimerHandle | None = None
        self.resend_events = 0  # rewinds (repeated requests for the same line count once)
        self.lines_sent = 0
        self.probe_sent_at: float | None = None
        self.last_progress = time.monotonic()
        self.last_busy_at = -math.inf
        self.busy_text = ""
        self.killed = False
        self.stopped = False
        self.recent_errors: list[str] = []
        self.sd_printing = False
        self.auto: set[str] = set()  # auto-reports switched on: temp, pos, sd
        self.starts = 0
        self._start_event = asyncio.Event()
        self.state = "Idle"

    # -- input ----------------------------------------------------------------------------

    def on_line(self, text: str) -> None:
        self.last_rx = time.monotonic()
        if text.startswith("ok"):
            self._on_ok(text)
            return
        if self.expect_resend_ok:
            # Firmware that answers a resend request with an ok sends it right away:
            # anything else first proves this one does not.
            self.expect_resend_ok = False
            if self.resend_ok_mode == "auto" and self.resend_ok:
                self.log.info("marlin_no_ok_after_resend")
                self.resend_ok = False
        n = marlin.parse_resend(text)
        if n is not None:
            self._on_resend(n)
            return
        if text.startswith(("Error:", "error:", "!!")):
            self._on_error(text)
            return
        if text.startswith(("echo:busy:", "busy:")):
            self._on_busy(text.split("busy:", 1)[1].strip())
            return
        if text == "start":
            self._on_start()
            return
        f = self.dev.fields
        head = self.sent[0].tag if self.sent else None
        if marlin.is_temperature_report(text):
            f.update(marlin.parse_temperatures(text))
            if " W:" in text:
                self.last_progress = time.monotonic()  # M109/M190 waiting: progress
        elif marlin.is_position_report(text):
            f.update(marlin.parse_position(text))
        elif (sd := marlin.parse_sd(text)) is not None:
            self.sd_printing = sd.get("sd.printing") is True
            f.update(sd)
        elif marlin.parse_m115(text, self.firmware):
            if text.startswith("FIRMWARE_NAME:"):
                f.set("firmware", self.firmware.name)
                info = self.firmware.info
                f.set("build", " ".join(v for k, v in info.items() if k in ("MACHINE_TYPE", "SOURCE_CODE_URL")))
            else:
                f.set("capabilities", ",".join(k for k, v in self.firmware.caps.items() if v))
        elif text.startswith("//action:"):
            self._on_action(text[9:].strip())
        elif text.startswith("echo:"):
            msg = text[5:].strip()
            f.set("message", msg)
            if msg.startswith("Unknown command"):
                self.log.warning("marlin_unknown_command", text=msg)
        elif text == "wait":
            pass
        elif not isinstance(head, Command):
            self.dev.noise(text)
            return
        if isinstance(head, Command) and not head.quiet:
            head.add_line(text)

    def _on_ok(self, text: str) -> None:
        self.last_progress = time.monotonic()
        number = marlin.parse_ok_number(text)
        if self._learning is not None:
            if self._learned_resend:
                self._learned_ok = True
                self._learning.set()
            return
        if self.expect_resend_ok:
            self.expect_resend_ok = False
            if number is None and "T:" not in text:
                return  # the resend request's own ok
        if "T:" in text:
            self.dev.fields.update(marlin.parse_temperatures(text))
        if not self.sent:
            self.stray_acks += 1
            if self.stray_acks <= 3 or self.stray_acks % 100 == 0:
                self.log.warning("marlin_unexpected_ok", text=text[:40], count=self.stray_acks)
            return
        if number is None:
            self._ack(self.sent.popleft())
        else:
            while self.sent and (self.sent[0].n is None or self.sent[0].n <= number):
                self._ack(self.sent.popleft())
        self._pump()

    def _ack(self, e: _Entry) -> None:
        if e.n is not None:
            if e is self.marker:
                self.marker = None  # every echo of the old stream has arrived
                return
            self.history.append(e)
        tag = e.tag
        if isinstance(tag, Command):
            tag.finish(True)
            return
        job = e.job
        if job is None:
            return
        job.acked += 1
        job.account()
        if (
            job.acked >= job.total
            and job.next >= job.total
            and job.active
            and not job.cancel_requested
            and not any(x.job is job for x in self.outbox)
        ):
            job.finish(JobState.COMPLETED)
            self.log.info("job_completed", job=job.name, lines=job.total, resends=job.resends, elapsed=round(job.elapsed, 3))
            self._update_state()
            self.job_changed()

    def _on_resend(self, n: int) -> None:
        """The firmware holds every line before n and none from n on.

        Lines already on the wire behind the bad one are rejected too, each with the same
        request (and each rejection flushes the firmware's input again). To tell those
        echoes from a new request, a marker goes out first: an ordinary line (M105)
        numbered n, sent once nothing else is in flight and no echo has come for a short
        quiet time, with nothing behind it until its ok. A request before that ok is an
        echo and is ignored; the lines the firmware lacks follow the marker, renumbered
        from n + 1 (it never accepted them, so their numbers are free). A marker an echo
        may have flushed, or one lost to noise, is sent again.
        """
        if self._learning is not None:
            self._learned_resend = True
            self._learning.set()
            return
        self.expect_resend_ok = self.resend_ok
        marker = self.marker
        if marker is not None:
            self.stale_requests += 1
            self.marker_hold_until = time.monotonic() + QUIET
            if marker.n is not None and n > marker.n:
                # The firmware holds the marker's number (an earlier copy got in; its ok
                # was lost or taken for a resend's own): resending it would be refused
                # for ever. The marker is done; this request is an echo of a copy.
                self._marker_held(marker)
            elif marker in self.sent:
                self._resend_marker("echo after it")  # that echo's flush may have taken it
            else:
                self._pump()
            return
        probe_at = self.probe_sent_at
        self.probe_sent_at = None
        if probe_at is not None and self.last_progress <= probe_at:
            self._lost_oks(n)  # silent since the probe: the missing oks are lost, not late
        self.last_progress = time.monotonic()
        # Split every numbered line we hold by what the firmware just said.
        numbered = sorted((e for e in (*self.sent, *self.outbox) if e.n is not None), key=lambda e: e.n or 0)
        have = [e for e in numbered if (e.n or 0) < n]  # accepted: their oks are due
        resend = [e for e in numbered if (e.n or 0) >= n]
        self.sent = deque([*(e for e in self.sent if e.n is None), *have])
        if (not resend or resend[0].n != n) and n < self.next_n:
            back = self._unack_from(n)
            if back:
                # an ok was taken for the wrong line (noise forged or ate one): resend it
                self.log.warning("marlin_resend_of_acknowledged_line", line=n, lines=len(back))
                resend = back + resend
        if resend and resend[0].n not in (n, None):
            self.log.warning("marlin_renumbered", requested=n, ours=resend[0].n)
        for e in resend:
            e.n = None  # renumbered after the marker
        fresh = [e for e in self.outbox if e.n is None and e not in resend]
        self.marker = _Entry(b"M105", n=n, sync=True, barrier=True)
        self.marker.data = marlin.frame(n, self.marker.cmd)
        self.next_n = n + 1
        self.marker_hold_until = time.monotonic() + QUIET
        self.outbox = deque([self.marker, *resend, *fresh])
        self.resend_events += 1
        head = resend[0] if resend else None
        if head is not None:
            head.resends += 1
        job = head.job if head is not None else None
        if head is not None and job is not None and job.active:
            job.resends += 1
            if head.resends > self.max_per_line:
                self._fail_job(
                    f"{job.program.describe_line(head.tag)}: {head.resends} resend requests and the firmware "
                    f"still does not have it (Resend: {n}): the serial link is too noisy"
                )
                return
            if self.lines_sent >= RATIO_MIN_LINES and self.resend_events > self.max_ratio * self.lines_sent:
                ratio = self.resend_events / self.lines_sent
                self._fail_job(
                    f"{self.resend_events} resends for {self.lines_sent} lines sent ({ratio:.0%}, limit "
                    f"{self.max_ratio:.0%}): the serial link is too noisy"
                )
                return
        self._drop_finished_job_lines()
        self._pump()

    def _marker_held(self, marker: _Entry) -> None:
        self.log.info("marlin_marker_held", line=marker.n)
        with contextlib.suppress(ValueError):
            self.sent.remove(marker)
        with contextlib.suppress(ValueError):
            self.outbox.remove(marker)
        self.marker = None
        self.history.append(marker)
        self.last_progress = time.monotonic()
        self._pump()

    def _resend_marker(self, why: str) -> None:
        marker = self.marker
        if marker is None or marker not in self.sent:
            return
        self.log.info("marlin_marker_resent", line=marker.n, reason=why)
        self.sent.remove(marker)
        self.outbox.appendleft(marker)
        self.last_progress = time.monotonic()
        self._pump()

    def _unack_from(self, n: int) -> list[_Entry]:
        """Take acknowledged lines numbered n and up back out of the history."""
        back = [e for e in self.history if e.n is not None and e.n >= n]
        if not back or back[0].n != n:
            return []
        for e in back:
            self.history.remove(e)
            if e.job is not None and e.job.active:
                e.job.acked -= 1
        return back

    def _lost_oks(self, n: int) -> None:
        """The watchdog's probe showed the firmware holds every line before n."""
        accepted = [e for e in self.sent if e.n is not None and e.n < n]
        if not accepted:
            return
        if self.lost_ack == "fail":
            job = next((e.job for e in accepted if e.job is not None), None)
            first = next((e for e in accepted if e.job is not None), None)
            for e in accepted:
                self.sent.remove(e)
                if isinstance(e.tag, Command):
                    e.tag.abort("acknowledgement lost")
            if job is not None and first is not None:
                self._fail_job(
                    f"acknowledgement lost: the firmware received {len(accepted)} line(s) from "
                    f"{job.program.describe_line(first.tag)} on but never answered them"
                )
            return
        self.log.warning("acks_lost_resumed", lines=len(accepted), through=n - 1)
        for e in accepted:
            self.sent.remove(e)
            self._ack(e)

    def _on_error(self, text: str) -> None:
        low = text.lower()
        if "last line" in low:
            self.log.debug("marlin_line_error", text=text)
            return  # a Resend follows
        self.recent_errors = [*self.recent_errors[-4:], text]
        f = self.dev.fields
        if "kill()" in low or "printer halted" in low:
            code, meaning = marlin.kill_cause(self.recent_errors)
            self.killed = True
            self._halted(code, meaning, text)
        elif "printer stopped" in low:
            self.stopped = True
            self._halted(7, marlin.ALARM_TEXTS[7], text)
        else:
            f.set("message", text[6:].strip())
            self.log.warning("marlin_error", text=text)

    def _halted(self, code: int, meaning: str, text: str) -> None:
        f = self.dev.fields
        f.set("alarm_code", code)
        f.set("alarm_text", meaning)
        self.log.warning("marlin_halted", code=code, text=meaning, line=text)
        for e in self.sent:
            if isinstance(e.tag, Command):
                e.tag.abort(f"the printer halted: {meaning}")
        self.sent.clear()
        self.outbox = deque(e for e in self.outbox if not isinstance(e.tag, Command))
        self.fail_job(f"the printer halted: {meaning} ({text})")
        self._update_state()

    def _on_busy(self, what: str) -> None:
        self.last_progress = self.last_busy_at = time.monotonic()
        if what != self.busy_text:
            self.busy_text = what
            self._update_state()

    def _on_start(self) -> None:
        """The firmware (re)started: line counter 0, queue and settings gone."""
        self.starts += 1
        lost = len(self.sent)
        for e in [*self.sent, *self.outbox]:
            if isinstance(e.tag, Command):
                e.tag.abort("the printer reset ('start') before answering")
        self.sent.clear()
        self.outbox.clear()
        self.history.clear()
        self._resync_after_start()
        self.expect_resend_ok = False
        self.probe_sent_at = None
        self.killed = self.stopped = False
        self.busy_text = ""
        self.auto.clear()
        f = self.dev.fields
        f.set("alarm_code", 0)
        f.set("alarm_text", "")
        job = self.job
        if job is not None and job.active:
            self.fail_job(
                f"the printer reset ('start') after {job.acked} of {job.total} lines were acknowledged; "
                f"{lost} line(s) in flight were lost and the rest was not sent"
            )
        self.log.info("marlin_reset", lines_lost=lost)
        self._start_event.set()
        self._update_state()
        if self.starts > 0 and self.firmware.name:
            self._configure_reports()  # auto-reports are off after a reset
        self._pump()

    def _resync_after_start(self) -> None:
        """Lines already on the wire when the firmware restarted still reach it, each
        answered `Error:Line Number ... Last Line: 0` + `Resend: 1` (and a flush of its
        input). A line N1 of ours could be accepted between two of them, and the next
        echo taken for a request to send it again. So the first numbered line after a
        `start` is a marker (M105 N1, nothing behind it until its ok): every resend
        request before that ok is an echo of a stale line, as after any resend request."""
        self.marker = _Entry(b"M105", n=1, sync=True, barrier=True)
        self.marker.data = marlin.frame(1, self.marker.cmd)
        self.marker_hold_until = time.monotonic() + QUIET
        self.outbox.appendleft(self.marker)
        self.next_n = 2

    def _on_action(self, action: str) -> None:
        self.dev.fields.set("message", f"//action:{action}")
        self.log.info("marlin_host_action", action=action)
        name = action.split(maxsplit=1)[0] if action else ""
        if name in ("pause", "paused"):
            self.pause()
        elif name in ("resume", "resumed"):
            self.resume()
        elif name == "cancel":
            self.dev.spawn("host_action_cancel", self.cancel)

    # -- output ---------------------------------------------------------------------------

    def _pump(self) -> None:
        link = self.dev.link
        if not link.is_open or self.killed:
            return
        sent, outbox, window = self.sent, self.outbox, self.window
        while len(sent) < window:
            if sent and (sent[-1].sync or sent[-1].barrier):
                break
            if outbox:
                head = outbox[0]
                if head.sync and sent:
                    break
                if head is self.marker:
                    wait = self.marker_hold_until - time.monotonic()
                    if wait > 0:
                        self._pump_later(wait)
                        break
                e = outbox.popleft()
            elif self.commands:
                cmd = self.commands.popleft()
                e = _Entry(cmd.line, cmd)
            else:
                job = self.job
                if job is None or not job.streaming or job.next >= job.total:
                    break
                i = job.next
                program = job.program
                line = program.line(i)
                e = _Entry(line, i, job, waits=bool(program.flags[i] & FLAG_WAITS))
                job.next = i + 1
                job.bytes_sent += len(line) + 1
            if not e.numbered:
                e.data = e.cmd + b"\n"
            elif e.n is None:
                e.n = self.next_n
                self.next_n += 1
                e.data = marlin.frame(e.n, e.cmd)
            link.write(e.data)
            sent.append(e)
            self.lines_sent += 1

    def _pump_later(self, delay: float) -> None:
        if self._pump_timer is not None:
            self._pump_timer.cancel()
        self._pump_timer = asyncio.get_running_loop().call_later(delay, self._timed_pump)

    def _timed_pump(self) -> None:
        self._pump_timer = None
        self._pump()

    def submit(self, line: str, *, quiet: bool = False) -> Command:
        cmd = Command(line.strip().encode("ascii"), quiet=quiet)
        self.commands.append(cmd)
        self._pump()
        return cmd

    def _renumber_from(self, n: int) -> None:
        """Lines from n on were dropped: tell the firmware to expect n next (M110) and
        give the numbered lines still queued new numbers."""
        for e in self.outbox:
            if e.numbered:
                e.n = None
        self.outbox.appendleft(_Entry(b"M110 N%d" % (n - 1), numbered=False, sync=True))
        self.next_n = n
        self.history.clear()
        self.marker = None

    def _drop_finished_job_lines(self) -> None:
        """Queued lines of a job that has ended are never sent (or resent)."""
        dropped = [e for e in self.outbox if e.job is not None and (not e.job.active or e.job.cancel_requested)]
        if not dropped:
            return
        self.outbox = deque(e for e in self.outbox if e not in dropped)
        numbers = [e.n for e in dropped if e.n is not None]
        if numbers:
            self._renumber_from(min(numbers))

    def _fail_job(self, reason: str) -> None:
        self.fail_job(reason)
        self._drop_finished_job_lines()
        self._update_state()
        self._pump()

    def emergency_stop(self) -> None:
        link = self.dev.link
        link.write_urgent(b"M112\n")  # unnumbered: acted on even if numbering is off
        link.write_urgent(marlin.frame(self.next_n, b"M112"))

    # -- state ----------------------------------------------------------------------------

    def _update_state(self) -> None:
        job = self.job
        now = time.monotonic()
        busy = now - self.last_busy_at < BUSY_RECENT
        if self.killed:
            state = "Killed"
        elif self.stopped:
            state = "Stopped"
        elif busy and "paused" in self.busy_text:
            state = "Paused for user"
        elif job is not None and job.state == JobState.PAUSED:
            state = "Paused"
        elif self.sent and self.sent[0].waits and marlin.command_word(self.sent[0].cmd) in ("M109", "M190", "M191"):
            state = "Heating"
        elif job is not None and job.active:
            state = "Printing"
        elif self.sd_printing:
            state = "SD printing"
        elif busy:
            state = "Busy"
        else:
            state = "Idle"
        self.state = state
        self.dev.fields.set("state", state)

    # -- start-up and reports -----------------------------------------------------------

    async def _await(self, cmd: Command, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                reply = await cmd.future
        except TimeoutError:
            return False
        return reply.ok

    async def handshake(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.options.connect_timeout
        deadline = loop.time() + timeout
        while True:  # line numbers back to 0 (a board that resets on open may eat the first try)
            self.sent.clear()
            self.outbox.clear()
            self.next_n = 1
            self.marker = None
            self.outbox.append(_Entry(b"M110 N0", numbered=False, sync=True))
            cmd_probe = self.submit("M115")
            if await self._await(cmd_probe, min(1.5, max(0.1, deadline - loop.time()))):
                break
            if loop.time() >= deadline:
                raise DeviceUnavailable(
                    f"no answer to M110/M115 from {self.dev.port!r} within {timeout:g} s "
                    f"(a Marlin printer at {self.dev.baudrate} baud?)"
                )
        self.log.info(
            "marlin_connected",
            port=self.dev.port,
            firmware=self.firmware.name,
            autoreport_temp=self.firmware.cap("AUTOREPORT_TEMP"),
            emergency_parser=self.firmware.cap("EMERGENCY_PARSER"),
        )
        if self.resend_ok_mode == "auto":
            await self._learn_resend_ok()
        for cmd in self._configure_reports():
            await self._await(cmd, max(2.0, self.dev.timeout))
        self._update_state()

    async def _learn_resend_ok(self) -> None:
        """Send a line numbered one too far, with nothing else in flight: the firmware
        must ask for a resend, and an ok right behind that request is the resend's own."""
        self._learning = event = asyncio.Event()
        self._learned_resend = self._learned_ok = False
        try:
            self.dev.link.write(marlin.frame(self.next_n + 1, b"M105"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(2.0, self.dev.timeout)):
                    while not self._learned_resend:
                        event.clear()
                        await event.wait()
            if not self._learned_resend:
                self.log.warning("marlin_no_resend_request", port=self.dev.port)
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LEARN_OK_WAIT):
                    while not self._learned_ok:
                        event.clear()
                        await event.wait()
        finally:
            self._learning = None
        self.resend_ok = self._learned_ok
        self.log.info("marlin_resend_ok", sends_ok_after_resend=self.resend_ok)

    def _configure_reports(self) -> list[Command]:
        """Switch on the auto-reports the firmware has and the points need."""
        if self.options.marlin.autoreport == "off":
            return []
        seconds = max(1, round(self.options.status_interval))
        f = self.dev.fields
        cmds: list[Command] = []
        wanted = [
            ("temp", "AUTOREPORT_TEMP", "M155", True),
            ("pos", "AUTOREPORT_POS", "M154", f.wants_prefix("pos.")),
            ("sd", "AUTOREPORT_SD_STATUS", "M27", f.wants_prefix("sd.")),
        ]
        for key, cap, code, want in wanted:
            if want and self.firmware.cap(cap):
                cmds.append(self.submit(f"{code} S{seconds}", quiet=True))
                self.auto.add(key)
        return cmds

    async def status_loop(self) -> None:
        silence = self.options.silence_timeout
        f = self.dev.fields
        polls = [
            ("temp", "M105", True),
            ("pos", "M114", f.wants_prefix("pos.")),
            ("sd", "M27", f.wants_prefix("sd.")),
        ]
        pending: dict[str, Command] = {}
        ticker = Ticker(self.options.status_interval)
        while True:
            await ticker.tick()
            self._update_state()
            if self.killed:
                self.last_rx = time.monotonic()  # a halted Marlin says nothing: not a lost link
                continue
            for key, code, want in polls:
                if not want or key in self.auto:
                    continue
                prev = pending.get(key)
                if prev is None or prev.future.done():
                    pending[key] = self.submit(code, quiet=True)
            if time.monotonic() - self.last_rx > silence:
                reason = f"nothing heard from {self.dev.port!r} for {silence:g} s"
                self._fail_job(f"machine silent: {reason}")
                self.dev.lost(reason)
                return

    async def watchdog_loop(self) -> None:
        ack_timeout = self.options.ack_timeout
        probe_timeout = max(2.0, 2 * self.dev.timeout)
        period = min(1.0, ack_timeout / 4)
        while True:
            await asyncio.sleep(period)
            if self.killed or not self.sent:
                self.probe_sent_at = None
                continue
            now = time.monotonic()
            if self.probe_sent_at is not None:
                # One probe at a time. A machine that keeps talking (auto-reports) is busy,
                # not gone: its answer comes when the blocking command ends.
                if now - self.probe_sent_at > probe_timeout and now - self.last_rx > probe_timeout:
                    reason = f"machine silent: no acknowledgement for {now - self.last_progress:.1f} s and no answer to a probe"
                    self._fail_job(reason)
                    self.dev.lost(reason)
                    return
                continue
            marker = self.marker
            if marker is not None and marker in self.sent and now - self.last_progress > min(ack_timeout, MARKER_TIMEOUT):
                self._resend_marker("no answer")  # lost to noise
                continue
            head = self.sent[0]
            # heating, homing, dwelling: long silences are normal (keep-alives count as progress)
            limit = ack_timeout * (6 if head.waits else 1)
            if now - self.last_progress < limit:
                continue
            number = self.next_n + 1  # never what the firmware expects: it must ask for a resend
            self.log.info("watchdog_probe", waited=round(now - self.last_progress, 1), in_flight=len(self.sent), probe_line=number)
            self.probe_sent_at = now
            self.dev.link.write(marlin.frame(number, b"M105"))

    # -- jobs -----------------------------------------------------------------------------

    def _machine_not_ready(self) -> str | None:
        if self.killed:
            return "the printer is halted (kill); reset it"
        if self.stopped:
            return "the printer is stopped; send M999"
        if any(e.job is not None for e in self.sent):
            return "lines of the previous job are still unacknowledged"
        return None

    def _mark_progress(self) -> None:
        self.last_progress = time.monotonic()

    def _job_log(self) -> dict[str, Any]:
        return {"window": self.window}

    def _state_changed(self) -> None:
        self._update_state()

    def _answering(self) -> list[Command]:
        return [e.tag for e in [*self.sent, *self.outbox] if isinstance(e.tag, Command)]

    def _link_lost(self) -> None:
        if self._pump_timer is not None:
            self._pump_timer.cancel()

    async def _stop_for_cancel(self, job: Job) -> None:
        """Quick-stop the planner (M410, out of band when the firmware has an emergency
        parser), abort an SD print (M524), then run `cancel_gcode`."""
        self._drop_finished_job_lines()
        if self.firmware.cap("EMERGENCY_PARSER"):
            self.dev.link.write(b"M410\n")
            self.sent.append(_Entry(b"M410", numbered=False))  # it is queued too: its ok comes
        else:
            self.submit("M410", quiet=True)
        commands: list[Command] = []
        if self.sd_printing:
            commands.append(self.submit("M524", quiet=True))
        for line in self.options.marlin.cancel_gcode:
            commands.append(self.submit(line, quiet=True))
        for cmd in commands:
            await self._await(cmd, 10.0)
