"""A simulated Marlin 2.x printer on a pseudo-terminal, faithful to the wire protocol.

What it models, because hosts get these wrong:

* **Line numbers and checksums**: a line starting with `N` must be the last number + 1
  (unless it carries M110) and end in `*<xor>`; otherwise `Error:...Last Line: n`, the
  serial input is flushed (lines behind it are silently lost) and `Resend: n+1` asks
  for the rest again. `ok_after_resend` chooses between firmwares that add an `ok`
  after the resend request and those that do not.
* **The command queue** (`bufsize`, 4) and the **planner** (16 moves): `ok` is sent when
  a command has been executed (a move: planned). A blocked command holds its slot; RX
  (`rx_size`, 128 bytes) fills behind a full queue and overflows are counted.
* **Heating**: temperatures move towards their targets (`heat_rate` degrees a second,
  times `speedup`); M109/M190 block until reached, with a temperature line every
  second and `echo:busy: processing` every `busy_interval` - the keep-alives a host
  must accept as progress.
* **Reports**: M105, M114, M27, M115 (with capabilities) and auto-reports (M155, M154,
  M27 S); ADVANCED_OK (`ok N<n> P<planner> B<queue>`) if `advanced_ok`.
* **Emergency parser**: M112, M108 and M410 act the moment they arrive.

Every command executed is appended to `executed` (without number and checksum).
Faults: `drop_ok`, `stall`, `reset` (a `start` banner mid-job), `kill` (thermal
runaway and friends), `unplug` / `replug`, and line noise (`line.noise_rx`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Self, Unpack

from cellctl_sim.grbl.gcode import WordError, parse_words, strip_block
from cellctl_sim.serialsim import LinkOptions, SerialMachine

log = logging.getLogger("cellctl_sim.marlin")

FIRMWARE: Final = "Marlin 2.1.2.1 (cellctl-sim)"
CAPABILITIES: Final[tuple[tuple[str, int], ...]] = (
    ("SERIAL_XON_XOFF", 0), ("BINARY_FILE_TRANSFER", 0), ("EEPROM", 1), ("VOLUMETRIC", 1),
    ("AUTOREPORT_POS", 1), ("AUTOREPORT_TEMP", 1), ("PROGRESS", 0), ("PRINT_JOB", 1),
    ("AUTOLEVEL", 0), ("RUNOUT", 0), ("Z_PROBE", 0), ("LEVELING_DATA", 0), ("BUILD_PERCENT", 0),
    ("SOFTWARE_POWER", 0), ("TOGGLE_LIGHTS", 0), ("CASE_LIGHT_BRIGHTNESS", 0), ("EMERGENCY_PARSER", 1),
    ("HOST_ACTION_COMMANDS", 1), ("PROMPT_SUPPORT", 0), ("SDCARD", 1), ("AUTOREPORT_SD_STATUS", 1),
    ("LONG_FILENAME", 0), ("THERMAL_PROTECTION", 1), ("MOTION_MODES", 0), ("ARCS", 1),
    ("BABYSTEPPING", 0), ("CHAMBER_TEMPERATURE", 0), ("COOLER_TEMPERATURE", 0), ("MEATPACK", 0),
)
AMBIENT: Final = 25.0
TEMP_WINDOW: Final = 1.0  # M109/M190 are done within this of the target
WAIT_REPORT_INTERVAL: Final = 1.0  # temperature line every second while waiting to heat
_EMERGENCY = re.compile(rb"M(112|108|410)(?!\d)")

ERR_LINE_NO: Final = "Line Number is not Last Line Number+1, Last Line: "
ERR_CHECKSUM: Final = "checksum mismatch, Last Line: "
ERR_NO_CHECKSUM: Final = "No Checksum with line number, Last Line: "

Vec = tuple[float, float, float, float]


@dataclass(slots=True)
class _Heater:
    temp: float = AMBIENT
    target: float = 0.0
    at: float = 0.0  # loop time of `temp`

    def update(self, now: float, rate: float) -> None:
        dt = max(0.0, now - self.at)
        self.at = now
        goal = self.target if self.target > 0 else AMBIENT
        if math.isinf(rate):
            self.temp = goal
            return
        step = (rate if goal > self.temp else rate / 2) * dt
        if abs(goal - self.temp) <= step:
            self.temp = goal
        else:
            self.temp += step if goal > self.temp else -step

    @property
    def power(self) -> int:
        return 127 if self.target > 0 and self.temp < self.target - 0.5 else (40 if self.target > 0 else 0)


@dataclass(slots=True)
class _Queued:
    number: int | None
    text: str
    from_sd: bool = False


class MarlinSim(SerialMachine):
    """One simulated printer. Use as `async with MarlinSim(...) as sim:`; clients open
    `sim.path`. Faults: `SerialMachine`'s, and `kill`, `user_continue`."""

    def __init__(
        self,
        *,
        bufsize: int = 4,
        planner_blocks: int = 16,
        rx_size: int = 128,
        ok_after_resend: bool = False,
        advanced_ok: bool = False,
        emergency_parser: bool = True,
        autoreport: bool = True,
        busy_interval: float = 2.0,
        heat_rate: float = 5.0,
        sd_files: dict[str, list[str]] | None = None,
        **link: Unpack[LinkOptions],
    ) -> None:
        self.bufsize = bufsize
        self.planner_blocks = planner_blocks
        self.rx_size = rx_size
        self.ok_after_resend = ok_after_resend
        self.advanced_ok = advanced_ok
        self.emergency_parser = emergency_parser
        self.autoreport = autoreport
        self.busy_interval = busy_interval
        self.heat_rate = heat_rate
        self.sd_files = dict(sd_files or {})
        super().__init__(**link)
        # what a test inspects
        self.executed: list[str] = []
        self.unknown: list[str] = []  # lines answered "Unknown command" (not executed)
        self.resend_requests = 0
        self.line_errors: list[str] = []
        self.rx_overflows = 0
        self.busy_sent = 0
        self.auto_reports = 0  # M155/M154/M27 S reports sent: a test's clock for "a report later"
        self._reset_state()

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._reset_state()  # the heaters start at the loop's time
        return await super().start()

    def _boot(self) -> None:
        self._boot_banner()

    def _reset_machine_state(self) -> None:
        self._reset_state()

    def _reset_state(self) -> None:
        now = self._loop.time() if self._loop is not None else 0.0
        self._rx = bytearray()
        self._queue: deque[_Queued] = deque()
        self.last_n = 0
        self.killed = False
        self.stopped = False
        self.hotend = _Heater(at=now)
        self.bed = _Heater(at=now)
        self.position: Vec = (0.0, 0.0, 0.0, 0.0)
        self._planned: Vec = self.position
        self.filament_mm = 0.0  # net E travel of the moves executed (retractions subtract)
        self._moves: deque[tuple[Vec, float]] = deque()  # (target, real seconds)
        self._move_timer: asyncio.TimerHandle | None = None
        self._wake_timer: asyncio.TimerHandle | None = None
        self._blocked_since: float | None = None
        self._wait_until: float | None = None
        self._user_wait = False
        self._break_wait = False
        self._em_tail = b""
        self._skip_line = False
        self._block_gen = 0
        self._next_wait_report = 0.0
        self._absolute = True
        self._e_absolute = True
        self.feed = 1500.0
        self.feedrate_percent = 100
        self._auto_temp: asyncio.TimerHandle | None = None
        self._auto_pos: asyncio.TimerHandle | None = None
        self._auto_sd: asyncio.TimerHandle | None = None
        self._sd_file: str | None = None
        self._sd_lines: list[str] = []
        self._sd_index = 0
        self._sd_pos = 0
        self._sd_size = 0
        self.sd_printing = False

    def _cancel_timers(self) -> None:
        for t in (self._move_timer, self._wake_timer, self._auto_temp, self._auto_pos, self._auto_sd):
            if t is not None:
                t.cancel()
        super()._cancel_timers()

    def _boot_banner(self) -> None:
        self._send("start")
        self._send(f"echo:{FIRMWARE}")
        self._send("echo: Free Memory: 4096  PlannerBufferBytes: 1232")

    def stats(self) -> dict[str, int]:
        """Counters a test or benchmark reads (also printed by the CLI on exit)."""
        return {
            "executed": len(self.executed), "unknown": len(self.unknown), "resend_requests": self.resend_requests,
            "rx_overflows": self.rx_overflows, "busy_sent": self.busy_sent, "resets": self.resets,
            "corrupted_rx": self.line.corrupted_rx, "bytes_in": self.line.bytes_in, "bytes_out": self.line.bytes_out,
        }

    # -- faults (and SerialMachine's) -------------------------------------------------------

    def kill(self, cause: str = "Thermal Runaway") -> None:
        """Halt as after a heater fault: nothing is answered until `reset()`."""
        if cause:
            self._send(f"Error:{cause}, system stopped! Heater_ID: 0")
        self._send("Error:Printer halted. kill() called!")
        self._halt()

    def _halt(self) -> None:
        self.killed = True
        self._cancel_timers()
        self._queue.clear()
        self._moves.clear()

    def user_continue(self) -> None:
        """The operator presses the button after M0."""
        if self._user_wait:
            self._user_wait = False
            self._process()


    # -- output -------------------------------------------------------------------------

    def _send(self, text: str) -> None:
        self.line.write(text.encode("ascii") + b"\n")

    def _ok(self, item: _Queued, extra: str = "") -> None:
        if item.from_sd:
            return
        if not self._take_ok():
            return
        text = "ok"
        if self.advanced_ok:
            if item.number is not None:
                text += f" N{item.number}"
            text += f" P{self.planner_blocks - len(self._moves)} B{self.bufsize - len(self._queue)}"
        self._send(text + extra)

    def temperature_report(self) -> str:
        now = self._now()
        rate = self.heat_rate * self.speedup
        self.hotend.update(now, rate)
        self.bed.update(now, rate)
        h, b = self.hotend, self.bed
        return f" T:{h.temp:.2f} /{h.target:.2f} B:{b.temp:.2f} /{b.target:.2f} @:{h.power} B@:{b.power}"

    def position_report(self) -> str:
        x, y, z, e = self._planned
        return f"X:{x:.2f} Y:{y:.2f} Z:{z:.2f} E:{e:.2f} Count X:{round(x * 80)} Y:{round(y * 80)} Z:{round(z * 400)}"

    def sd_report(self) -> str:
        if self._sd_file is None or (not self.sd_printing and self._sd_pos == 0):
            return "Not SD printing"
        return f"SD printing byte {self._sd_pos}/{self._sd_size}"

    # -- input --------------------------------------------------------------------------

    def _on_bytes(self, data: bytes) -> None:
        if self.killed:
            return
        if self.emergency_parser:
            # Only bytes that just arrived (with a few before them, for a word split
            # across reads): a command still waiting in RX must not act twice.
            buf = self._em_tail + data
            for m in _EMERGENCY.finditer(buf):
                if m.end() > len(self._em_tail):
                    self._emergency(m.group(1))
                    if self.killed:
                        return
            self._em_tail = buf[-5:]
        # The main loop empties RX into the command queue as bytes arrive, so a burst
        # overflows only when the queue is full and RX fills up behind it.
        while data and self._skip_line:
            nl = data.find(b"\n")
            if nl < 0:
                return
            data = data[nl + 1 :]
            self._skip_line = False
        while data:
            room = self.rx_size - len(self._rx)
            if room <= 0:
                self.rx_overflows += len(data)
                log.warning("marlin_rx_overflow: %d bytes lost", len(data))
                break
            self._rx += data[:room]
            data = data[room:]
            self._process()
            if self.killed:
                return
            while data and self._skip_line:
                nl = data.find(b"\n")
                if nl < 0:
                    return
                data = data[nl + 1 :]
                self._skip_line = False
        self._process()

    def _emergency(self, which: bytes) -> None:
        if which == b"112":
            self._send("Error:Emergency stop (M112)")
            self._send("Error:Printer halted. kill() called!")
            self._halt()
        elif which == b"108":
            self._user_wait = False
            self._break_wait = True  # M109/M190 stop waiting
            self._later(0.0, self._process)
        elif which == b"410":
            self._quick_stop()

    def _quick_stop(self) -> None:
        if self._move_timer is not None:
            self._move_timer.cancel()
            self._move_timer = None
        self._moves.clear()
        self._planned = self.position

    def _process(self) -> None:
        guard = 100_000
        while guard > 0 and not self.stalled and not self.killed:
            guard -= 1
            took = self._fill_queue()
            ran = self._run_queue()
            if not took and not ran:
                return

    def _fill_queue(self) -> bool:
        took = False
        while len(self._queue) < self.bufsize:
            nl = self._rx.find(b"\n")
            if nl < 0:
                break
            raw = bytes(self._rx[:nl]).decode("latin-1").strip("\r ")
            del self._rx[: nl + 1]
            if not raw:
                continue
            item = self._accept(raw)
            if item is None:
                return True  # a line error flushed the input
            self._queue.append(item)
            took = True
        if self.sd_printing and not self._queue and not self._rx.count(b"\n"):
            took = self._feed_sd() or took
        return took

    def _accept(self, raw: str) -> _Queued | None:
        """Check number and checksum; None after a line error (input flushed)."""
        if not raw.startswith("N"):
            return _Queued(None, raw.split(";", 1)[0].strip())
        star = raw.rfind("*")
        m110 = "M110" in raw
        npos = raw.find("N", 4) if m110 else 0
        if m110 and npos < 0:
            npos = 0
        num_m = re.match(r"N(-?\d+)", raw[npos:])
        if num_m is None:
            self._line_error(ERR_LINE_NO)
            return None
        n = int(num_m.group(1))
        if n != self.last_n + 1 and not m110:
            self._line_error(ERR_LINE_NO)
            return None
        if star < 0:
            self._line_error(ERR_NO_CHECKSUM)
            return None
        cs = 0
        for ch in raw[:star].encode("latin-1"):
            cs ^= ch
        try:
            given = int(raw[star + 1 :].strip())
        except ValueError:
            given = -1
        if given != cs:
            self._line_error(ERR_CHECKSUM)
            return None
        self.last_n = n
        body = raw[:star]
        body = re.sub(r"^N-?\d+\s*", "", body)
        return _Queued(n, body.split(";", 1)[0].strip())

    def _line_error(self, what: str) -> None:
        self.line_errors.append(what.split(",", maxsplit=1)[0])
        self._send(f"Error:{what}{self.last_n}")
        # Marlin flushes the serial input. Over USB a line arrives in one packet, so the
        # flush loses whole lines: the rest of a line cut short here is dropped too.
        self._skip_line = bool(self._rx) and not self._rx.endswith(b"\n")
        self._rx.clear()
        self.resend_requests += 1
        self._send(f"Resend: {self.last_n + 1}")
        if self.ok_after_resend:
            self._send("ok")

    # -- execution ----------------------------------------------------------------------

    def _run_queue(self) -> bool:
        ran = False
        while self._queue and not self.killed and not self.stalled:
            item = self._queue[0]
            done = self._execute(item)
            if not done:
                if self._blocked_since is None:
                    self._blocked_since = self._now()
                    self._block_gen += 1
                    self._schedule_keepalive(self._block_gen)
                return ran
            self._blocked_since = None
            if self._queue and self._queue[0] is item:
                self._queue.popleft()
            ran = True
        return ran

    def _schedule_keepalive(self, gen: int) -> None:
        if self.busy_interval <= 0:
            return

        def tick() -> None:
            if self._blocked_since is None or self._block_gen != gen or self.killed or self.stalled:
                return
            self.busy_sent += 1
            self._send("echo:busy: paused for user" if self._user_wait else "echo:busy: processing")
            self._later(self.busy_interval, tick)

        self._later(self.busy_interval, tick)

    def _execute(self, item: _Queued) -> bool:
        """Run the head command; False while it has to wait (it keeps its slot)."""
        text = item.text
        if not text:
            self._ok(item)
            return True
        word = text.split(None, 1)[0].upper()
        if self.stopped and word not in ("M999", "M105", "M114", "M115", "M27", "M110", "M155", "M154"):
            self._send("echo:Printer stopped due to errors. Fix the error and use M999 to restart.")
            self._ok(item)
            return True
        handler = self._HANDLERS.get(_normal(word))
        if handler is None:
            self.unknown.append(text)
            self._send(f'echo:Unknown command: "{text}"')
            self._ok(item)
            return True
        done: bool = handler(self, item, text)
        return done

    def _log_exec(self, item: _Queued) -> None:
        if not item.from_sd:
            self.executed.append(item.text)

    def _words(self, text: str) -> dict[str, float]:
        try:
            block = parse_words(strip_block(text))
        except WordError:
            return {}
        return dict(block.words)

    # motion

    def _move(self, item: _Queued, text: str) -> bool:
        if len(self._moves) >= self.planner_blocks:
            return False
        w = self._words(text)
        if "F" in w:
            self.feed = w["F"]
        cur = list(self._planned)
        for i, a in enumerate("XYZE"):
            if a in w:
                absolute = self._absolute if a != "E" else self._e_absolute
                cur[i] = w[a] if absolute else cur[i] + w[a]
        target: Vec = (cur[0], cur[1], cur[2], cur[3])
        dist = math.dist(self._planned[:3], target[:3]) or abs(target[3] - self._planned[3])
        seconds = dist / max(self.feed, 1.0) * 60.0 * 100.0 / max(self.feedrate_percent, 1)
        self.filament_mm += target[3] - self._planned[3]
        self._planned = target
        self._log_exec(item)
        if math.isinf(self.speedup):
            self.position = target
        else:
            self._moves.append((target, seconds / self.speedup))
            if self._move_timer is None:
                self._start_move()
        self._ok(item)
        return True

    def _start_move(self) -> None:
        if not self._moves:
            return
        _, real = self._moves[0]
        self._move_timer = self._need_loop().call_later(real, self._move_done)

    def _move_done(self) -> None:
        self._move_timer = None
        if self._moves:
            self.position = self._moves.popleft()[0]
        self._start_move()
        self._process()

    def _sync(self) -> bool:
        """True when the planner is empty (M400, G4, G28 wait for it)."""
        return not self._moves

    def _dwell(self, item: _Queued, text: str) -> bool:
        if not self._sync():
            return False
        w = self._words(text)
        if not self._waited(w.get("S", 0.0) + w.get("P", 0.0) / 1000.0):
            return False
        self._log_exec(item)
        self._ok(item)
        return True

    def _home(self, item: _Queued, text: str) -> bool:
        if not self._sync():
            return False
        if not self._waited(2.0):  # homing takes a while
            return False
        self.position = self._planned = (0.0, 0.0, 0.0, self._planned[3])
        self._log_exec(item)
        self._ok(item)
        return True

    def _m400(self, item: _Queued, text: str) -> bool:
        if not self._sync():
            return False
        self._log_exec(item)
        self._ok(item)
        return True

    def _modal(self, item: _Queued, text: str) -> bool:
        word = _normal(text.split(None, 1)[0].upper())
        if word == "G90":
            self._absolute = self._e_absolute = True
        elif word == "G91":
            self._absolute = self._e_absolute = False
        elif word == "M82":
            self._e_absolute = True
        elif word == "M83":
            self._e_absolute = False
        elif word == "G92":
            w = self._words(text)
            cur = list(self._planned)
            for i, a in enumerate("XYZE"):
                if a in w:
                    cur[i] = w[a]
            self._planned = self.position = (cur[0], cur[1], cur[2], cur[3])
        elif word == "M220":
            w = self._words(text)
            if "S" in w:
                self.feedrate_percent = int(w["S"])
        self._log_exec(item)
        self._ok(item)
        return True

    # heating

    def _set_temp(self, item: _Queued, text: str) -> bool:
        word = _normal(text.split(None, 1)[0].upper())
        w = self._words(text)
        heater = self.bed if word in ("M140", "M190") else self.hotend
        wait = word in ("M109", "M190")
        rate = self.heat_rate * self.speedup
        now = self._now()
        if self._wait_until is None:  # first time: set the target
            heater.update(now, rate)
            target = w.get("S", w.get("R"))
            if target is not None:
                heater.target = target
            if not wait:
                self._log_exec(item)
                self._ok(item)
                return True
            self._wait_until = now  # marks "waiting" for this command
            self._break_wait = False
            self._next_wait_report = now + WAIT_REPORT_INTERVAL
        heater.update(now, rate)
        heating_only = "S" in w
        reached = (
            heater.temp >= heater.target - TEMP_WINDOW
            if heating_only
            else abs(heater.temp - heater.target) <= TEMP_WINDOW
        )
        if not (reached or self._break_wait or heater.target <= 0):
            if now >= self._next_wait_report:
                self._send(self.temperature_report() + " W:?")
                self._next_wait_report = now + WAIT_REPORT_INTERVAL
            gap = abs(heater.target - heater.temp) - TEMP_WINDOW
            eta = now + max(0.0, gap) / max(rate if heater.target > heater.temp else rate / 2, 1e-9)
            self._wake_at(min(eta + 1e-3, self._next_wait_report))
            return False
        self._wait_until = None
        self._break_wait = False
        self._log_exec(item)
        self._ok(item)
        return True

    # reports

    def _m105(self, item: _Queued, text: str) -> bool:
        self._log_exec(item)
        self._ok(item, self.temperature_report())
        return True

    def _m114(self, item: _Queued, text: str) -> bool:
        self._log_exec(item)
        self._send(self.position_report())
        self._ok(item)
        return True

    def _m115(self, item: _Queued, text: str) -> bool:
        self._log_exec(item)
        self._send(
            f"FIRMWARE_NAME:{FIRMWARE} SOURCE_CODE_URL:github.com/MarlinFirmware/Marlin "
            "PROTOCOL_VERSION:1.0 MACHINE_TYPE:cellctl sim printer EXTRUDER_COUNT:1 "
            "UUID:cede2a2f-41a2-4748-9b12-c55c62f367ff"
        )
        for name, default in CAPABILITIES:
            value = default
            if name in ("AUTOREPORT_TEMP", "AUTOREPORT_POS", "AUTOREPORT_SD_STATUS"):
                value = 1 if self.autoreport else 0
            if name == "EMERGENCY_PARSER":
                value = 1 if self.emergency_parser else 0
            self._send(f"Cap:{name}:{value}")
        self._ok(item)
        return True

    def _autoreport(self, item: _Queued, text: str) -> bool:
        word = _normal(text.split(None, 1)[0].upper())
        w = self._words(text)
        seconds = w.get("S")
        self._log_exec(item)
        if word == "M27" and seconds is None:
            self._send(self.sd_report())
            self._ok(item)
            return True
        if not self.autoreport and seconds is not None:
            self._send(f'echo:Unknown command: "{text}"')
            self._ok(item)
            return True
        attr = {"M155": "_auto_temp", "M154": "_auto_pos", "M27": "_auto_sd"}[word]
        report: Callable[[], str] = {
            "M155": self.temperature_report, "M154": self.position_report, "M27": self.sd_report,
        }[word]
        old: asyncio.TimerHandle | None = getattr(self, attr)
        if old is not None:
            old.cancel()
        setattr(self, attr, None)
        if seconds:

            def tick(interval: float = seconds, attr: str = attr, report: Callable[[], str] = report) -> None:
                if self.killed or self.stalled:
                    setattr(self, attr, self._need_loop().call_later(interval, tick))
                    return
                self._send(report())
                self.auto_reports += 1
                setattr(self, attr, self._need_loop().call_later(interval, tick))

            setattr(self, attr, self._need_loop().call_later(seconds, tick))
        self._ok(item)
        return True

    # control

    def _m110(self, item: _Queued, text: str) -> bool:
        w = self._words(text)
        if "N" in w:
            self.last_n = int(w["N"])
        self._log_exec(item)
        self._ok(item)
        return True

    def _m112(self, item: _Queued, text: str) -> bool:
        self._emergency(b"112")
        return True

    def _m0(self, item: _Queued, text: str) -> bool:
        if not self._sync():
            return False
        if not self._user_wait and self._wait_until is None:
            self._user_wait = True
            self._wait_until = self._now()
            return False
        if self._user_wait:
            return False
        self._wait_until = None
        self._log_exec(item)
        self._ok(item)
        return True

    def _m999(self, item: _Queued, text: str) -> bool:
        self.stopped = False
        self._log_exec(item)
        self._ok(item)
        return True

    def _plain(self, item: _Queued, text: str) -> bool:
        self._log_exec(item)
        self._ok(item)
        return True

    def _m410(self, item: _Queued, text: str) -> bool:
        self._quick_stop()
        self._log_exec(item)
        self._ok(item)
        return True

    # SD card

    def _sd(self, item: _Queued, text: str) -> bool:
        word = _normal(text.split(None, 1)[0].upper())
        self._log_exec(item)
        if word == "M20":
            self._send("Begin file list")
            for name, lines in self.sd_files.items():
                self._send(f"{name} {sum(len(x) + 1 for x in lines)}")
            self._send("End file list")
        elif word == "M23":
            name = text.split(None, 1)[1].strip() if " " in text else ""
            if name in self.sd_files:
                self._sd_file, self._sd_lines = name, self.sd_files[name]
                self._sd_index = self._sd_pos = 0
                self._sd_size = sum(len(x) + 1 for x in self._sd_lines)
                self._send(f"File opened: {name} Size: {self._sd_size}")
                self._send("File selected")
            else:
                self._send(f"open failed, File: {name}.")
        elif word == "M24":
            if self._sd_file is not None:
                self.sd_printing = True
        elif word == "M25":
            self.sd_printing = False
        elif word == "M524" and (self.sd_printing or self._sd_pos):
            self.sd_printing = False
            self._sd_index = self._sd_pos = 0
            self._quick_stop()
        self._ok(item)
        return True

    def _feed_sd(self) -> bool:
        if self._sd_index >= len(self._sd_lines):
            self.sd_printing = False
            self._send("Done printing file")
            self._sd_file = None
            return False
        text = self._sd_lines[self._sd_index]
        self._sd_index += 1
        self._sd_pos += len(text) + 1
        self._queue.append(_Queued(None, text.split(";", 1)[0].strip(), from_sd=True))
        return True

    _HANDLERS: Final[dict[str, Callable[[MarlinSim, _Queued, str], bool]]] = {}


def _normal(word: str) -> str:
    """G01 -> G1, m104 -> M104."""
    m = re.match(r"([A-Z])0*(\d+)(\.\d+)?$", word)
    if not m:
        return word
    return m.group(1) + m.group(2) + (m.group(3) or "")


MarlinSim._HANDLERS.update(
    {
        "G0": MarlinSim._move, "G1": MarlinSim._move, "G2": MarlinSim._move, "G3": MarlinSim._move,
        "G4": MarlinSim._dwell, "G28": MarlinSim._home, "M400": MarlinSim._m400,
        "G20": MarlinSim._plain, "G21": MarlinSim._plain, "G90": MarlinSim._modal, "G91": MarlinSim._modal,
        "G92": MarlinSim._modal, "M82": MarlinSim._modal, "M83": MarlinSim._modal, "M220": MarlinSim._modal,
        "M104": MarlinSim._set_temp, "M109": MarlinSim._set_temp, "M140": MarlinSim._set_temp,
        "M190": MarlinSim._set_temp, "M105": MarlinSim._m105, "M114": MarlinSim._m114,
        "M115": MarlinSim._m115, "M155": MarlinSim._autoreport, "M154": MarlinSim._autoreport,
        "M27": MarlinSim._autoreport, "M110": MarlinSim._m110, "M112": MarlinSim._m112,
        "M108": MarlinSim._plain, "M410": MarlinSim._m410, "M0": MarlinSim._m0, "M1": MarlinSim._m0,
        "M999": MarlinSim._m999, "M106": MarlinSim._plain, "M107": MarlinSim._plain,
        "M84": MarlinSim._plain, "M18": MarlinSim._plain, "M117": MarlinSim._plain, "M221": MarlinSim._plain,
        "M201": MarlinSim._plain, "M203": MarlinSim._plain, "M204": MarlinSim._plain, "M205": MarlinSim._plain,
        "M500": MarlinSim._plain, "M501": MarlinSim._plain, "M502": MarlinSim._plain, "T0": MarlinSim._plain,
        "M20": MarlinSim._sd, "M21": MarlinSim._plain, "M23": MarlinSim._sd, "M24": MarlinSim._sd,
        "M25": MarlinSim._sd, "M524": MarlinSim._sd, "M73": MarlinSim._plain,
    }
)
