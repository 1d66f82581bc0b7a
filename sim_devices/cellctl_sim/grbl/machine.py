"""A simulated GRBL 1.1 machine on a pseudo-terminal, faithful to the wire protocol.

What it models, because hosts get these wrong:

* **The serial RX buffer** (`rx_size`, 127 usable bytes of 128): line bytes wait there
  until the main loop takes the next line. Bytes beyond its capacity are lost and counted
  in `rx_overflows`: a host that over-fills it is caught, not forgiven.
* **The planner** (`planner_blocks`, 15): a motion line is answered `ok` once planned;
  with the planner full the main loop stops taking lines, and RX fills up behind it.
  Moves take distance / feed, divided by `speedup` (`math.inf`: instantly).
* **EEPROM writes** (`$x=`, `$N`, `$RST`, `G10 L2/L20`, `G28.1`, `G30.1`): for
  `eeprom_write_time` the serial interrupt is off, so bytes arriving meanwhile are lost
  (`lost_bytes`). Hosts must send these ping-pong.
* **Real-time bytes** (`?`, `!`, `~`, 0x18, 0x84, 0x85, 0x90-0xA1) act at once, never
  enter RX, never get an `ok`.
* **Status reports** in every state, with `FS:`, `WCO:`/`Ov:` every tenth report or on
  change, `Pn:`, `A:`, `Ln:`; none during homing or a critical alarm. `$10` starts at
  GRBL's default, 1 (MPos, no `Bf:`), as real machines ship; `report_buffer=True` (or
  `$10=3`) adds `Bf:planner,rx`.
* **Errors and alarms**: `error:N` for bad blocks, and a critical soft-limit `ALARM:2`
  when a move would leave `work_area` (nothing but a soft reset is accepted after it).

Every line answered `ok` is appended to `executed` (as GRBL buffers it: no spaces or
comments, upper case), so a test can compare it with the file it streamed.

Faults: `drop_ok`, `fail_lines`, `stall`, `reset` (a banner mid-job), `alarm`, `unplug`
/ `replug`, and line noise through `line.noise_rx` / `line.noise_tx`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Unpack

from cellctl_sim.grbl.gcode import Block, WordError, parse_words, strip_block
from cellctl_sim.serialsim import LinkOptions, SerialMachine

log = logging.getLogger("cellctl_sim.grbl")

VERSION: Final = "1.1h"
BUILD_DATE: Final = "20190830"
BANNER: Final = f"Grbl {VERSION} ['$' for help]"
LINE_BUFFER: Final = 80
HOLD_DECEL_TIME: Final = 0.02  # real seconds a feed hold takes to stop (Hold:1 -> Hold:0)

# Real-time command bytes.
RT_STATUS, RT_HOLD, RT_RESUME, RT_RESET = 0x3F, 0x21, 0x7E, 0x18
RT_DOOR, RT_JOG_CANCEL = 0x84, 0x85
_RT_ASCII = re.compile(rb"[?!~\x18\x80-\xff]")

# GRBL error numbers the simulator produces.
E_EXPECTED_LETTER, E_BAD_NUMBER, E_INVALID_STATEMENT = 1, 2, 3
E_SETTING_DISABLED, E_NOT_IDLE, E_LOCKED, E_LINE_OVERFLOW = 5, 8, 9, 11
E_TRAVEL_EXCEEDED, E_INVALID_JOG = 15, 16
E_UNSUPPORTED, E_UNDEFINED_FEED, E_WORD_REPEATED, E_NO_AXIS_WORDS = 20, 22, 25, 26
E_AXIS_WORDS_EXIST, E_NO_OFFSETS = 31, 35

_SUPPORTED_G: Final = frozenset(
    {0, 1, 2, 3, 4, 10, 17, 18, 19, 20, 21, 28, 28.1, 30, 30.1, 38.2, 38.3, 40, 43.1, 49, 53,
     54, 55, 56, 57, 58, 59, 61, 80, 90, 91, 91.1, 92, 92.1, 93, 94}
)
_SUPPORTED_M: Final = frozenset({0, 1, 2, 3, 4, 5, 7, 8, 9, 30, 56})
_MOTION_G: Final = frozenset({0, 1, 2, 3, 38.2, 38.3, 80})
_AXES: Final = ("X", "Y", "Z")

Vec = tuple[float, float, float]


@dataclass(slots=True)
class _Move:
    start: Vec
    target: Vec
    duration: float  # simulated seconds at 100 % override
    feed: float
    rapid: bool
    line_no: int | None
    jog: bool = False
    probe: bool = False


@dataclass(slots=True)
class _Settings:
    values: dict[int, float] = field(
        default_factory=lambda: {
            0: 10, 1: 25, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 10: 1, 11: 0.010, 12: 0.002, 13: 0,
            20: 1, 21: 0, 22: 0, 23: 0, 24: 25, 25: 500, 26: 250, 27: 1, 30: 1000, 31: 0, 32: 0,
            100: 250, 101: 250, 102: 250, 110: 3000, 111: 3000, 112: 1000,
            120: 10, 121: 10, 122: 10, 130: 300, 131: 200, 132: 100,
        }
    )


class GrblSim(SerialMachine):
    """One simulated GRBL controller. Use as `async with GrblSim(...) as sim:`; clients
    open `sim.path`. Faults: `SerialMachine`'s, and `trigger_alarm`, `fail_lines`."""

    alarm: int | None  # the active alarm (0: locked at boot, homing enabled)

    def __init__(
        self,
        *,
        rx_size: int = 128,
        planner_blocks: int = 15,
        soft_limits: bool = True,
        work_area: tuple[Vec, Vec] = ((0.0, 0.0, -100.0), (300.0, 200.0, 50.0)),
        report_buffer: bool = False,
        eeprom_write_time: float = 0.01,
        homing: bool = False,
        **link: Unpack[LinkOptions],
    ) -> None:
        if rx_size < 16:
            raise ValueError(f"rx_size must be at least 16, got {rx_size!r}")
        self.rx_size = rx_size
        self.planner_blocks = planner_blocks
        self.work_area = work_area
        self.eeprom_write_time = eeprom_write_time
        super().__init__(**link)
        self.settings = _Settings()
        self.settings.values[20] = 1 if soft_limits else 0
        self.settings.values[22] = 1 if homing else 0
        self.settings.values[10] = 3 if report_buffer else 1
        # what a test inspects
        self.executed: list[str] = []
        self.errors: list[tuple[str, int]] = []
        self.rx_overflows = 0  # bytes lost because RX was full: the host over-sent
        self.lost_bytes = 0  # bytes lost during an EEPROM write: the host did not ping-pong
        self.max_rx_used = 0
        self.status_reports = 0
        self.realtime_received = 0
        self.underruns = 0  # times the planner ran dry while running (Run -> Idle)
        self.fail_lines: dict[str, int] = {}  # fault: stripped block -> error code to answer instead
        self._reset_machine(power_on=True)

    # -- life cycle -----------------------------------------------------------------------

    def _boot(self) -> None:
        self._send(BANNER)
        if self.resets and self.settings.values[22]:
            self.alarm = 0
            self._send("[MSG:'$H'|'$X' to unlock]")

    def _reset_machine_state(self) -> None:
        self._reset_machine(power_on=False)

    def _reset_machine(self, *, power_on: bool = False) -> None:
        self._rx = bytearray()
        self._pending: str | None = None
        self._queue: deque[_Move] = deque()
        self._active: _Move | None = None
        self._active_t0 = 0.0
        self._active_done = 0.0  # fraction completed before the current run segment
        self._active_end = 0.0
        self._move_timer: asyncio.TimerHandle | None = None
        self._wake_timer: asyncio.TimerHandle | None = None
        self._eeprom_until = 0.0
        self._eeprom_ok: str | None = None
        self._hold: int | None = None
        self._door: int | None = None
        self._homing = False
        self._sleeping = False
        self._check = False
        self._prog_pause = False
        self.alarm = None
        self.critical = False
        if power_on:
            self.position: Vec = (0.0, 0.0, 0.0)
            self._wcs: list[Vec] = [(0.0, 0.0, 0.0)] * 6
            self._stored = {28: (0.0, 0.0, 0.0), 30: (0.0, 0.0, 0.0)}
            self.feed_override = 100
            self.rapid_override = 100
            self.spindle_override = 100
        self._planned: Vec = self.position
        self._g92: Vec = (0.0, 0.0, 0.0)
        self._wcs_index = 0
        self._motion = 0.0
        self._absolute = True
        self._inches = False
        self._inverse_time = False
        self.feed = 0.0
        self.spindle_speed = 0.0
        self.spindle: str = ""  # "", "S" (cw) or "C" (ccw)
        self.flood = False
        self.mist = False
        self._line_no: int | None = None
        self._reports_since_wco = 99
        self._reports_since_ov = 99
        self._last_wco: Vec | None = None
        self._last_ov: tuple[int, int, int] | None = None
        if self.settings.values[22] and power_on:
            self.alarm = 0  # homing enabled: locked at boot until $H or $X

    def _cancel_timers(self) -> None:
        for t in (self._move_timer, self._wake_timer):
            if t is not None:
                t.cancel()
        self._move_timer = self._wake_timer = None
        super()._cancel_timers()

    def stats(self) -> dict[str, int]:
        """Counters a test or benchmark reads (also printed by the CLI on exit)."""
        return {
            "executed": len(self.executed), "errors": len(self.errors), "rx_overflows": self.rx_overflows,
            "lost_bytes": self.lost_bytes, "max_rx_used": self.max_rx_used, "underruns": self.underruns,
            "status_reports": self.status_reports, "resets": self.resets,
            "bytes_in": self.line.bytes_in, "bytes_out": self.line.bytes_out,
        }

    # -- faults (and SerialMachine's) -------------------------------------------------------

    def trigger_alarm(self, code: int, *, critical: bool = True) -> None:
        """Raise `ALARM:code` (1 hard limit, 2 soft limit, ...) as the firmware would."""
        self._stop_motion()
        self.alarm = code
        self.critical = critical
        self._send(f"ALARM:{code}")
        if critical:
            self._send("[MSG:Reset to continue]")

    # -- state ------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self._sleeping:
            return "Sleep"
        if self.alarm is not None:
            return "Alarm"
        if self._homing:
            return "Home"
        if self._door is not None:
            return f"Door:{self._door}"
        if self._hold is not None:
            return f"Hold:{self._hold}"
        if self._active is not None or self._queue:
            return "Jog" if (self._active or self._queue[0]).jog else "Run"
        if self._check:
            return "Check"
        return "Idle"

    @property
    def wco(self) -> Vec:
        w = self._wcs[self._wcs_index]
        return (w[0] + self._g92[0], w[1] + self._g92[1], w[2] + self._g92[2])

    def current_position(self) -> Vec:
        m = self._active
        if m is None:
            return self.position
        frac = self._fraction()
        return tuple(s + (t - s) * frac for s, t in zip(m.start, m.target, strict=True))  # type: ignore[return-value]

    def _real_duration(self, m: _Move) -> float:
        ov = self.rapid_override if m.rapid else self.feed_override
        return m.duration / self.speedup * 100.0 / max(ov, 1)

    def _fraction(self) -> float:
        m = self._active
        if m is None:
            return 0.0
        if self._hold is not None or self._door is not None or self._move_timer is None:
            return self._active_done
        dur = self._real_duration(m)
        if dur <= 0:
            return 1.0
        return min(1.0, self._active_done + (self._now() - self._active_t0) / dur)

    @property
    def planner_free(self) -> int:
        return self.planner_blocks - len(self._queue) - (1 if self._active else 0)

    # -- output -------------------------------------------------------------------------

    def _send(self, text: str) -> None:
        self.line.write(text.encode("ascii") + b"\r\n")

    def _ok(self, block: str) -> None:
        self.executed.append(block)
        if self._take_ok():
            self.line.write(b"ok\r\n")

    def _error(self, block: str, code: int) -> None:
        self.errors.append((block, code))
        self._send(f"error:{code}")

    def status_report(self) -> str:
        pos = self.current_position()
        parts = [self.state]
        mask = int(self.settings.values[10])
        if mask & 1:
            parts.append("MPos:" + ",".join(f"{v:.3f}" for v in pos))
        else:
            w = self.wco
            parts.append("WPos:" + ",".join(f"{p - o:.3f}" for p, o in zip(pos, w, strict=True)))
        if mask & 2:
            parts.append(f"Bf:{self.planner_free},{self.rx_size - len(self._rx)}")
        m = self._active
        if m is not None and m.line_no is not None:
            parts.append(f"Ln:{m.line_no}")
        running = m is not None and self._hold is None and self._door is None
        feed = (m.feed if not m.rapid else 0.0) if (m is not None and running) else 0.0
        speed = self.spindle_speed if self.spindle else 0.0
        parts.append(f"FS:{feed:g},{speed:g}")
        pins = ("D" if self._door is not None else "")
        if pins:
            parts.append(f"Pn:{pins}")
        self._reports_since_wco += 1
        self._reports_since_ov += 1
        wco = self.wco
        if wco != self._last_wco or self._reports_since_wco >= 10:
            parts.append("WCO:" + ",".join(f"{v:.3f}" for v in wco))
            self._last_wco = wco
            self._reports_since_wco = 0
        else:
            ov = (self.feed_override, self.rapid_override, self.spindle_override)
            if ov != self._last_ov or self._reports_since_ov >= 10:
                parts.append(f"Ov:{ov[0]},{ov[1]},{ov[2]}")
                self._last_ov = ov
                self._reports_since_ov = 0
                acc = self.spindle + ("F" if self.flood else "") + ("M" if self.mist else "")
                if acc:
                    parts.append(f"A:{acc}")
        return "<" + "|".join(parts) + ">"

    # -- input --------------------------------------------------------------------------

    def _on_bytes(self, data: bytes) -> None:
        if _RT_ASCII.search(data) is None:
            self._take_lines(data)
        else:
            start = 0
            for m in _RT_ASCII.finditer(data):
                if m.start() > start:
                    self._take_lines(data[start : m.start()])
                self._realtime(data[m.start()])
                start = m.end()
            if start < len(data):
                self._take_lines(data[start:])
        self._process()

    def _take_lines(self, data: bytes) -> None:
        """Bytes arrive one line after the other and the main loop keeps up, so what a
        line does (an EEPROM write) applies to the bytes right behind it."""
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            end = n if nl < 0 else nl + 1
            self._take_line_bytes(data[start:end])
            if nl >= 0:
                self._process()
            start = end

    def _take_line_bytes(self, data: bytes) -> None:
        if self._eeprom_until and self._now() < self._eeprom_until:
            self.lost_bytes += len(data)
            return
        room = self.rx_size - 1 - len(self._rx)
        if len(data) > room:
            self.rx_overflows += len(data) - max(room, 0)
            log.warning("grbl_rx_overflow: %d bytes lost", len(data) - max(room, 0))
            data = data[: max(room, 0)]
        self._rx += data
        self.max_rx_used = max(self.max_rx_used, len(self._rx))

    def _realtime(self, b: int) -> None:
        self.realtime_received += 1
        if self._eeprom_until and self._now() < self._eeprom_until:
            return  # interrupts off: the byte is gone
        if self.stalled:
            return
        if b == RT_RESET:
            self._soft_reset()
            return
        if self.critical:
            return
        if b == RT_STATUS:
            if not self._homing:
                self.status_reports += 1
                self._send(self.status_report())
        elif b == RT_HOLD:
            self._feed_hold()
        elif b == RT_RESUME:
            self._cycle_start()
        elif b == RT_DOOR:
            self._open_door()
        elif b == RT_JOG_CANCEL:
            if self.state == "Jog":
                self._stop_motion()
                self._queue.clear()
                self._planned = self.position
        elif 0x90 <= b <= 0x9D:
            self._override(b)
        elif b == 0x9E:
            self.spindle = ""
        elif b == 0xA0:
            self.flood = not self.flood
        elif b == 0xA1:
            self.mist = not self.mist

    def _override(self, b: int) -> None:
        def clamp(v: int, lo: int, hi: int) -> int:
            return max(lo, min(hi, v))

        if b == 0x90:
            self.feed_override = 100
        elif b in (0x91, 0x92, 0x93, 0x94):
            delta = {0x91: 10, 0x92: -10, 0x93: 1, 0x94: -1}[b]
            self.feed_override = clamp(self.feed_override + delta, 10, 200)
        elif b == 0x95:
            self.rapid_override = 100
        elif b == 0x96:
            self.rapid_override = 50
        elif b == 0x97:
            self.rapid_override = 25
        elif b == 0x99:
            self.spindle_override = 100
        elif b in (0x9A, 0x9B, 0x9C, 0x9D):
            delta = {0x9A: 10, 0x9B: -10, 0x9C: 1, 0x9D: -1}[b]
            self.spindle_override = clamp(self.spindle_override + delta, 10, 200)

    def _soft_reset(self) -> None:
        moving = self._active is not None and self._hold != 0 and self._door is None
        was_alarm = self.alarm is not None
        self.resets += 1
        self._cancel_timers()
        self.position = self.current_position()
        self._reset_machine(power_on=False)
        if moving:
            self._send("ALARM:3")
        self._send(BANNER)
        if moving or was_alarm or self.settings.values[22]:
            self.alarm = 3 if moving else 0
            self._send("[MSG:'$H'|'$X' to unlock]")

    def _feed_hold(self) -> None:
        if self.state == "Jog":
            self._stop_motion()
            self._queue.clear()
            self._planned = self.position
            return
        if self._active is None or self._hold is not None or self._door is not None:
            return
        self._freeze()
        self._hold = 1
        self._later(HOLD_DECEL_TIME, self._hold_complete)

    def _hold_complete(self) -> None:
        if self._hold == 1:
            self._hold = 0

    def _cycle_start(self) -> None:
        if self._hold is not None:
            self._hold = None
            self._prog_pause = False
            self._start_motion()
            self._process()
        elif self._door == 0:
            self._door = None
            self._start_motion()
            self._process()

    def _open_door(self) -> None:
        if self._door is None:
            self._freeze()
            self._door = 1

    def close_door(self) -> None:
        """The operator shuts the door: `~` resumes after this."""
        if self._door is not None:
            self._door = 0

    # -- motion -------------------------------------------------------------------------

    def _freeze(self) -> None:
        """Stop the active move where it is (hold / door); it resumes from there."""
        if self._active is not None and self._move_timer is not None:
            self._active_done = self._fraction()
            self._move_timer.cancel()
            self._move_timer = None

    def _stop_motion(self) -> None:
        if self._active is not None:
            self.position = self.current_position()
        if self._move_timer is not None:
            self._move_timer.cancel()
        self._move_timer = None
        self._active = None
        self._queue.clear()
        self._planned = self.position

    def _start_motion(self, at: float | None = None) -> None:
        """Run the next move from `at` (the previous move's end: late timers must not
        add up over thousands of short moves) or from now."""
        if self._hold is not None or self._door is not None:
            return
        if self._active is None:
            if not self._queue:
                return
            self._active = self._queue.popleft()
            self._active_done = 0.0
        m = self._active
        remaining = self._real_duration(m) * (1.0 - self._active_done)
        self._active_t0 = self._now() if at is None else at
        self._active_end = self._active_t0 + max(remaining, 0.0)
        self._move_timer = self._need_loop().call_at(self._active_end, self._move_done)

    def _move_done(self) -> None:
        m = self._active
        self._move_timer = None
        if m is None:
            return
        self.position = m.target
        self._active = None
        if m.probe:
            self._queue.clear()
            self._planned = self.position
            self.trigger_alarm(5, critical=False)
            return
        if self._queue:
            self._start_motion(at=self._active_end)
        else:
            self.underruns += 1
        self._process()

    def _plan(self, move: _Move) -> None:
        self._planned = move.target
        if math.isinf(self.speedup):
            self.position = move.target
            if move.probe:
                self.trigger_alarm(5, critical=False)
            return
        self._queue.append(move)
        if self._active is None:
            self._start_motion()

    @property
    def _motion_idle(self) -> bool:
        return self._active is None and not self._queue

    # -- the main loop ----------------------------------------------------------------

    def _process(self) -> None:
        """Take lines out of RX and execute them until one has to wait."""
        guard = 100_000
        while guard > 0:
            guard -= 1
            if self.stalled or self.critical or self._homing:
                return
            now = self._now()
            if self._eeprom_until:
                if now < self._eeprom_until:
                    self._wake_at(self._eeprom_until)
                    return
                self._eeprom_until = 0.0
                if self._eeprom_ok is not None:
                    self._ok(self._eeprom_ok)
                    self._eeprom_ok = None
            if self._pending is None:
                nl = self._rx.find(b"\n")
                if nl < 0:
                    return
                raw = bytes(self._rx[:nl])
                del self._rx[: nl + 1]
                self._pending = raw.decode("latin-1")
            if not self._execute(self._pending):
                return  # waits for the planner, a dwell or an EEPROM write
            self._pending = None

    def _execute(self, raw: str) -> bool:
        """Run one line; False if it must wait (it stays pending)."""
        text = raw.rstrip("\r")
        block = strip_block(text)
        if len(block) > LINE_BUFFER:
            self._error(block, E_LINE_OVERFLOW)
            return True
        if not block:
            self.line.write(b"ok\r\n")
            return True
        code = self.fail_lines.get(block)
        if code is not None:
            self._error(block, code)
            return True
        if block.startswith("$"):
            return self._system(block)
        if self.alarm is not None:
            self._error(block, E_LOCKED)
            return True
        if self._sleeping:
            return True
        try:
            words = parse_words(block)
        except WordError as exc:
            self._error(block, exc.code)
            return True
        return self._gcode(block, words)

    # -- $ commands ---------------------------------------------------------------------

    def _system(self, block: str) -> bool:
        cmd = block[1:]
        if cmd.startswith("J="):
            return self._jog(block, cmd[2:])
        busy = self.state not in ("Idle", "Alarm", "Check")
        if cmd == "":
            self._send("[HLP:$$ $# $G $I $N $x=val $Nx=line $J=line $SLP $C $X $H ~ ! ? ctrl-x]")
        elif cmd == "$":
            if busy:
                self._error(block, E_NOT_IDLE)
                return True
            for k, v in sorted(self.settings.values.items()):
                self._send(f"${k}={v:g}" if float(v).is_integer() else f"${k}={v:.3f}")
        elif cmd == "#":
            for i, w in enumerate(self._wcs):
                self._send(f"[G{54 + i}:" + ",".join(f"{v:.3f}" for v in w) + "]")
            self._send("[G28:" + ",".join(f"{v:.3f}" for v in self._stored[28]) + "]")
            self._send("[G30:" + ",".join(f"{v:.3f}" for v in self._stored[30]) + "]")
            self._send("[G92:" + ",".join(f"{v:.3f}" for v in self._g92) + "]")
            self._send("[TLO:0.000]")
            self._send("[PRB:0.000,0.000,0.000:0]")
        elif cmd == "G":
            self._send(
                f"[GC:G{self._motion:g} G{54 + self._wcs_index} G17 {'G20' if self._inches else 'G21'} "
                f"{'G90' if self._absolute else 'G91'} G94 M{'3' if self.spindle == 'S' else '4' if self.spindle == 'C' else '5'} "
                f"M9 T0 F{self.feed:g} S{self.spindle_speed:g}]"
            )
        elif cmd == "I":
            self._send(f"[VER:{VERSION}.{BUILD_DATE}:]")
            self._send(f"[OPT:V,{self.planner_blocks},{self.rx_size}]")
        elif cmd == "N":
            self._send("$N0=")
            self._send("$N1=")
        elif cmd == "X":
            if self.alarm is not None:
                self.alarm = None
                self._send("[MSG:Caution: Unlocked]")
        elif cmd == "H":
            if not self.settings.values[22]:
                self._error(block, E_SETTING_DISABLED)
                return True
            if not self._motion_idle:
                return False
            self._homing = True
            self.alarm = None

            def homed() -> None:
                self._homing = False
                self.position = self._planned = (0.0, 0.0, 0.0)
                self._ok(block)
                self._pending = None
                self._process()

            self._later(0.5 / min(self.speedup, 1e6), homed)
            return False
        elif cmd == "C":
            self._check = not self._check
            if self._check:
                self._send("[MSG:Enabled]")
            else:
                self._send("[MSG:Disabled]")
                self._ok(block)
                self._soft_reset()
                return True
        elif cmd == "SLP":
            self._send("[MSG:Sleeping]")
            self._ok(block)
            self._sleeping = True
            return True
        elif re.fullmatch(r"N\d=.*", cmd) or re.fullmatch(r"RST=[$#*]", cmd):
            if busy:
                self._error(block, E_NOT_IDLE)
                return True
            self._eeprom_write(block)
            return True
        elif (m := re.fullmatch(r"(\d+)=([-+]?\d*\.?\d+)", cmd)) is not None:
            if busy:
                self._error(block, E_NOT_IDLE)
                return True
            key = int(m.group(1))
            if key not in self.settings.values:
                self._error(block, E_INVALID_STATEMENT)
                return True
            self.settings.values[key] = float(m.group(2))
            self._eeprom_write(block)
            return True
        else:
            self._error(block, E_INVALID_STATEMENT)
            return True
        self._ok(block)
        return True

    def _eeprom_write(self, block: str) -> None:
        """Write EEPROM: serial input is lost meanwhile, and the ok comes after it."""
        if self.eeprom_write_time > 0:
            self._eeprom_until = self._now() + self.eeprom_write_time
            self._eeprom_ok = block
        else:
            self._ok(block)

    def _jog(self, block: str, body: str) -> bool:
        if self.alarm is not None:
            self._error(block, E_LOCKED)
            return True
        try:
            words = parse_words(body)
        except WordError as exc:
            self._error(block, exc.code)
            return True
        f = words.get("F")
        if f is None or not any(words.has(a) for a in _AXES):
            self._error(block, E_INVALID_JOG)
            return True
        incremental = 91 in words.all("G")
        machine = 53 in words.all("G")
        target = self._target(words, incremental=incremental, machine=machine)
        if self.settings.values[20] and not self._inside(target):
            self._error(block, E_TRAVEL_EXCEEDED)
            return True
        if self.planner_free <= 0:
            return False
        dist = math.dist(self._planned, target)
        self._plan(_Move(self._planned, target, dist / f * 60.0, f, False, None, jog=True))
        self._ok(block)
        return True

    # -- G-code -------------------------------------------------------------------------

    def _target(self, words: Block, *, incremental: bool, machine: bool = False) -> Vec:
        scale = 25.4 if self._inches else 1.0
        wco = (0.0, 0.0, 0.0) if machine else self.wco
        out = list(self._planned)
        for i, a in enumerate(_AXES):
            v = words.get(a)
            if v is None:
                continue
            out[i] = out[i] + v * scale if incremental else v * scale + wco[i]
        return (out[0], out[1], out[2])

    def _inside(self, p: Vec) -> bool:
        lo, hi = self.work_area
        return all(lo[i] - 1e-9 <= p[i] <= hi[i] + 1e-9 for i in range(3))

    def _gcode(self, block: str, words: Block) -> bool:
        seen: set[str] = set()
        for k, _ in words.words:
            if k not in "GM" and k in seen:
                self._error(block, E_WORD_REPEATED)
                return True
            seen.add(k)
        gs = words.all("G")
        ms = words.all("M")
        for g in gs:
            if g not in _SUPPORTED_G:
                self._error(block, E_UNSUPPORTED)
                return True
        for mm in ms:
            if mm not in _SUPPORTED_M:
                self._error(block, E_UNSUPPORTED)
                return True
        sync = any(g in (4, 10, 28.1, 30.1, 28, 30) for g in gs) or any(m in (0, 1, 2, 30, 3, 4, 5, 7, 8, 9) for m in ms)
        eeprom = any(g in (28.1, 30.1) for g in gs) or (10 in gs and words.get("L") in (2.0, 20.0))
        if sync and not self._motion_idle:
            return False  # GRBL waits for the planner to empty before these
        if 4 in gs:
            if not self._waited(words.get("P") or 0.0):
                return False
            self._ok(block)
            return True
        # modal state
        for g in gs:
            if g in (20, 21):
                self._inches = g == 20
            elif g in (90, 91):
                self._absolute = g == 90
            elif g in (93, 94):
                self._inverse_time = g == 93
            elif 54 <= g <= 59:
                self._wcs_index = int(g) - 54
        if words.has("F"):
            self.feed = float(words.get("F") or 0.0) * (25.4 if self._inches else 1.0)
        if words.has("S"):
            self.spindle_speed = float(words.get("S") or 0.0)
        if words.has("N"):
            self._line_no = int(words.get("N") or 0)
        for mm in ms:
            if mm in (3, 4):
                self.spindle = "S" if mm == 3 else "C"
            elif mm == 5:
                self.spindle = ""
            elif mm == 7:
                self.mist = True
            elif mm == 8:
                self.flood = True
            elif mm == 9:
                self.flood = self.mist = False
        if eeprom or 10 in gs or 92 in gs or 92.1 in gs or 28.1 in gs or 30.1 in gs:
            return self._offsets(block, words, gs, eeprom)
        motion_words = [g for g in gs if g in _MOTION_G]
        if motion_words:
            self._motion = motion_words[-1]
        has_axes = any(words.has(a) for a in _AXES)
        if any(g in (28, 30) for g in gs):
            stored = self._stored[28 if 28 in gs else 30]
            if has_axes:
                via = self._target(words, incremental=not self._absolute)
                self._plan(_Move(self._planned, via, math.dist(self._planned, via) / self._rapid() * 60, 0, True, self._line_no))
            self._plan(_Move(self._planned, stored, math.dist(self._planned, stored) / self._rapid() * 60, 0, True, self._line_no))
            self._ok(block)
            return True
        if 80 in gs and has_axes:
            self._error(block, E_AXIS_WORDS_EXIST)
            return True
        if has_axes and self._motion != 80:
            return self._move(block, words, gs)
        if any(m in (0, 1) for m in ms):
            self._hold = 0
            self._prog_pause = True
        if any(m in (2, 30) for m in ms):
            self._absolute, self._wcs_index, self._motion = True, 0, 1
            self.spindle, self.flood, self.mist = "", False, False
        self._ok(block)
        return True

    def _rapid(self) -> float:
        return float(min(self.settings.values[110], self.settings.values[111], self.settings.values[112]))

    def _move(self, block: str, words: Block, gs: list[float]) -> bool:
        if self.planner_free <= 0:
            return False
        motion = self._motion
        machine = 53 in gs
        target = self._target(words, incremental=not self._absolute and not machine, machine=machine)
        rapid = motion == 0
        if not rapid:
            if self._inverse_time:
                if not words.has("F"):
                    self._error(block, E_UNDEFINED_FEED)
                    return True
            elif self.feed <= 0:
                self._error(block, E_UNDEFINED_FEED)
                return True
        if motion in (2, 3) and not (words.has("R") or words.has("I") or words.has("J")):
            self._error(block, E_NO_OFFSETS)
            return True
        if self.settings.values[20] and not self._inside(target) and not self._check:
            self._freeze()
            self.trigger_alarm(2, critical=True)
            return True
        if self._check:
            self._ok(block)
            return True
        dist = math.dist(self._planned, target)
        if rapid:
            duration = dist / self._rapid() * 60.0
        elif self._inverse_time:
            duration = 60.0 / float(words.get("F") or 1.0)
        else:
            duration = dist / self.feed * 60.0
        probe = motion in (38.2, 38.3)
        self._plan(_Move(self._planned, target, duration, 0.0 if rapid else self.feed, rapid, self._line_no, probe=probe and motion == 38.2))
        self._ok(block)
        return True

    def _offsets(self, block: str, words: Block, gs: list[float], eeprom: bool) -> bool:
        scale = 25.4 if self._inches else 1.0
        if 10 in gs:
            p = int(words.get("P") or 1)
            idx = (p - 1) if p > 0 else self._wcs_index
            if not 0 <= idx < 6:
                self._error(block, 29)
                return True
            cur = list(self._wcs[idx])
            for i, a in enumerate(_AXES):
                v = words.get(a)
                if v is None:
                    continue
                cur[i] = v * scale if words.get("L") == 2.0 else self._planned[i] - self._g92[i] - v * scale
            self._wcs[idx] = (cur[0], cur[1], cur[2])
        elif 92 in gs:
            g92 = list(self._g92)
            w = self._wcs[self._wcs_index]
            for i, a in enumerate(_AXES):
                v = words.get(a)
                if v is not None:
                    g92[i] = self._planned[i] - w[i] - v * scale
            self._g92 = (g92[0], g92[1], g92[2])
        elif 92.1 in gs:
            self._g92 = (0.0, 0.0, 0.0)
        elif 28.1 in gs or 30.1 in gs:
            self._stored[28 if 28.1 in gs else 30] = self._planned
        if eeprom:
            self._eeprom_write(block)
        else:
            self._ok(block)
        return True
