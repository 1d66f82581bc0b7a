"""One serial port on the event loop, without a thread: pyserial opens and configures
the port (termios, exclusive lock), then the non-blocking descriptor is driven by the
loop's reader and writer callbacks.

Writes are a FIFO, because G-code order is correctness. Two ways jump it:

* `write_realtime` (GRBL's one-byte commands): written at once, even in the middle of a
  line that is still going out, which GRBL explicitly allows;
* `write_urgent` (Marlin's M112/M410 and friends): whole lines, placed after the
  piece currently being written and before every queued line.

Input is split into lines (CR/LF stripped, decoded as ASCII with replacement, so line
noise can never raise) and handed to `on_line`; `on_batch_end` runs once after each
read, so callers can coalesce work per read instead of per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections import deque
from collections.abc import Callable
from typing import Any

import serial

from cellctl.driver import DeviceUnavailable

MAX_LINE_BYTES = 4096  # a "line" longer than this without a newline is noise: dropped
READ_SIZE = 65536


class SerialLink:
    def __init__(
        self,
        port: str,
        baudrate: int,
        *,
        on_line: Callable[[str], None],
        on_lost: Callable[[str], None],
        on_batch_end: Callable[[], None] | None = None,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.on_line = on_line
        self.on_lost = on_lost
        self.on_batch_end = on_batch_end
        self._serial: Any = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rx = b""
        self._out: deque[bytes] = deque()
        self._writing = False  # a writer callback is installed
        self._partial = False  # _out[0] is the rest of a piece already partly written
        self.closed_reason: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.lines_in = 0
        self.noise_dropped = 0

    @property
    def is_open(self) -> bool:
        return self._fd >= 0 and self.closed_reason is None

    def open(self) -> None:
        """Open and lock the port; DeviceUnavailable names the port and the cause."""
        self._loop = asyncio.get_running_loop()
        try:
            ser = serial.Serial(
                port=None, baudrate=self.baudrate, timeout=0, write_timeout=0, exclusive=True
            )
            ser.port = self.port
            ser.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceUnavailable(f"cannot open serial port {self.port!r}: {exc}") from exc
        self._serial = ser
        self._fd = ser.fileno()
        os.set_blocking(self._fd, False)
        with contextlib.suppress(Exception):
            ser.reset_input_buffer()  # whatever the machine said before we came is stale
        self._loop.add_reader(self._fd, self._readable)

    def close(self, reason: str = "closed") -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        loop, fd = self._loop, self._fd
        if loop is not None and fd >= 0:
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            if self._writing:
                with contextlib.suppress(Exception):
                    loop.remove_writer(fd)
        self._writing = False
        self._fd = -1
        self._out.clear()
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()
            self._serial = None

    def _lost(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.close(reason)
        self.on_lost(reason)

    # -- reading ------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(f"serial port {self.port!r} failed: {exc.strerror or exc}")
            return
        if not data:
            self._lost(f"serial port {self.port!r} closed (end of file)")
            return
        self.bytes_in += len(data)
        buf = self._rx + data if self._rx else data
        if b"\n" not in buf:
            self._rx = buf if len(buf) <= MAX_LINE_BYTES else self._drop(buf)
            return
        *lines, rest = buf.split(b"\n")
        self._rx = rest if len(rest) <= MAX_LINE_BYTES else self._drop(rest)
        on_line = self.on_line
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                continue
            self.lines_in += 1
            on_line(line.decode("ascii", "replace"))
            if self.closed_reason is not None:
                return
        if self.on_batch_end is not None:
            self.on_batch_end()

    def _drop(self, junk: bytes) -> bytes:
        self.noise_dropped += len(junk)
        return b""

    # -- writing ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue `data` behind everything queued before (FIFO)."""
        if self._fd < 0 or not data:
            return
        if not self._out:
            n = self._try_write(data)
            if n is None or n == len(data):
                return
            self._out.append(data[n:])
            self._partial = n > 0
        else:
            self._out.append(data)
        self._want_writer()

    def write_realtime(self, data: bytes) -> None:
        """GRBL real-time byte(s): out now, ahead of everything queued, even mid-line."""
        if self._fd < 0:
            return
        n = self._try_write(data)
        if n is None or n == len(data):
            return
        self._out.appendleft(data[n:])
        self._partial = False  # the real-time piece is whole; GRBL does not care either way
        self._want_writer()

    def write_urgent(self, data: bytes) -> None:
        """A whole line ahead of every queued line, but after the piece being written."""
        if self._fd < 0:
            return
        if not self._out:
            self.write(data)
            return
        self._out.insert(1 if self._partial else 0, data)
        self._want_writer()

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished input line held (never more than MAX_LINE_BYTES)."""
        return len(self._rx)

    @property
    def queued_bytes(self) -> int:
        return sum(len(b) for b in self._out)

    def _try_write(self, data: bytes) -> int | None:
        """Bytes written, or None when the port failed (and is now closed)."""
        try:
            n = os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return 0
            self._lost(f"serial port {self.port!r} failed: {exc.strerror or exc}")
            return None
        self.bytes_out += n
        return n

    def _want_writer(self) -> None:
        if not self._writing and self._loop is not None and self._fd >= 0:
            self._loop.add_writer(self._fd, self._writable)
            self._writing = True

    def _writable(self) -> None:
        while self._out:
            head = self._out[0]
            n = self._try_write(head)
            if n is None:
                return
            if n < len(head):
                self._out[0] = head[n:]
                self._partial = True
                return
            self._out.popleft()
            self._partial = False
        if self._writing and self._loop is not None and self._fd >= 0:
            self._loop.remove_writer(self._fd)
        self._writing = False
