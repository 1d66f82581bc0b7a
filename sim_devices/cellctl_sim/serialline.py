"""The simulator's end of a virtual serial cable: the master side of a pseudo-terminal.

A client opens the slave path exactly as it would open /dev/ttyUSB0. The simulator keeps
its own descriptor on the slave too, so a client closing and reopening the port never
makes the master see a hang-up, and the slave's termios settings survive between opens.

What a real link does and this one can do too:

* **byte pacing** at a baud rate (10 bits per byte on the wire, both directions
  independently), so a host cannot push more than the wire carries;
* **line noise**: a line (up to its newline) gets one byte flipped with a given
  probability, either direction. One byte at most: two flips of the same bit in one line
  cancel out in an XOR checksum, which no protocol on this link could detect;
* **unplug / replug**: the pty disappears (the client reads EIO) and a new one appears
  under the same stable symlink, as a USB adapter re-enumerates under /dev/serial/by-id.

Both the GRBL and the Marlin simulator use this class. It knows nothing about G-code.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import termios
import tty
from collections import deque
from collections.abc import Callable

BITS_PER_BYTE = 10  # start + 8 data + stop
MAX_TX_QUEUE = 1 << 20  # bytes held for a client that does not read; beyond: dropped
_PACE_CHUNK_SECONDS = 0.004  # paced reads deliver at most this much wire time at once


def _flip(b: int, rng: random.Random) -> int:
    """A corrupted byte that is never a line end (noise must not invent new lines)."""
    out = b ^ (1 << rng.randrange(7))
    if out in (10, 13):
        out ^= 0x40
    return out


class PtyLine:
    """One simulated serial port. `on_data` receives what the client wrote.

    Create, `await start()` inside a running loop, `close()` when done. `path` is what
    clients open: the symlink `link` if given, else the slave pty path.
    """

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        *,
        baudrate: int | None = None,
        link: str | None = None,
        seed: int | None = None,
    ) -> None:
        if baudrate is not None and baudrate <= 0:
            raise ValueError(f"baudrate must be positive, got {baudrate!r}")
        self.on_data = on_data
        self.baudrate = baudrate
        self.link = link
        self.rng = random.Random(seed)
        self.noise_rx = 0.0  # probability that a line from the client arrives with a flipped byte
        self.noise_tx = 0.0  # probability that a line to the client arrives with a flipped byte
        self.corrupted_rx = 0
        self.corrupted_tx = 0
        self._hit = {"rx": False, "tx": False}  # the current line was already corrupted
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped_out = 0
        self.plugged = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._master = -1
        self._slave = -1
        self.slave_path = ""
        self._tx: deque[bytes] = deque()
        self._tx_len = 0
        self._writer_added = False
        self._rx_task: asyncio.Task[None] | None = None
        self._tx_task: asyncio.Task[None] | None = None
        self._tx_kick = asyncio.Event()
        self._readable: asyncio.Future[None] | None = None

    # -- life cycle ---------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self.link or self.slave_path

    @property
    def byte_rate(self) -> float | None:
        return None if self.baudrate is None else self.baudrate / BITS_PER_BYTE

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._plug()

    def _plug(self) -> None:
        loop = self._need_loop()
        master, slave = os.openpty()
        # Raw at once: no echo of what we write, no CR/LF translation, 8-bit clean.
        tty.setraw(slave, termios.TCSANOW)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.slave_path = os.ttyname(slave)
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)
            os.symlink(self.slave_path, self.link)
        self.plugged = True
        if self.byte_rate is None:
            loop.add_reader(master, self._read_unpaced)
        else:
            self._rx_task = loop.create_task(self._rx_paced(), name=f"pty-rx:{self.slave_path}")
            self._tx_task = loop.create_task(self._tx_paced(), name=f"pty-tx:{self.slave_path}")

    def _unplug_fds(self) -> None:
        loop = self._loop
        if self._master >= 0 and loop is not None:
            loop.remove_reader(self._master)
            if self._writer_added:
                loop.remove_writer(self._master)
        self._writer_added = False
        for task in (self._rx_task, self._tx_task):
            if task is not None:
                task.cancel()
        self._rx_task = self._tx_task = None
        if self._readable is not None and not self._readable.done():
            self._readable.cancel()
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1
        self._tx.clear()
        self._tx_len = 0
        if self.link:
            with contextlib.suppress(OSError):
                if os.path.islink(self.link) and os.readlink(self.link) == self.slave_path:
                    os.unlink(self.link)
        self.plugged = False

    def unplug(self) -> None:
        """Pull the cable: the client's next read fails and the path goes away."""
        if self.plugged:
            self._unplug_fds()

    def replug(self) -> None:
        """Plug a new cable in: a new pty, reachable under the same `link` (if any)."""
        if not self.plugged:
            self._plug()

    def close(self) -> None:
        self.unplug()
        self._loop = None

    def _need_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("PtyLine is not started")
        return self._loop

    # -- receiving ----------------------------------------------------------------------

    def _noisy(self, data: bytes, p: float, way: str) -> bytes:
        """Flip one byte in a fraction `p` of the lines (segments between newlines)."""
        if p <= 0.0:
            return data
        rng = self.rng
        out = bytearray(data)
        start = 0
        n = len(out)
        while start < n:
            nl = out.find(b"\n", start)
            end = n if nl < 0 else nl
            if end > start and not self._hit[way] and rng.random() < p:
                i = rng.randrange(start, end)
                if out[i] != 13:
                    out[i] = _flip(out[i], rng)
                    self._hit[way] = True
                    if way == "rx":
                        self.corrupted_rx += 1
                    else:
                        self.corrupted_tx += 1
            if nl < 0:
                break
            self._hit[way] = False
            start = nl + 1
        return bytes(out)

    def _deliver(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.on_data(self._noisy(data, self.noise_rx, "rx"))

    def _read_unpaced(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # nobody on the slave side; we hold it open, so this is transient
        if data:
            self._deliver(data)

    async def _wait_readable(self) -> None:
        loop = self._need_loop()
        fd = self._master
        fut: asyncio.Future[None] = loop.create_future()
        self._readable = fut

        def ready() -> None:
            loop.remove_reader(fd)
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, ready)
        try:
            await fut
        finally:
            if self._master == fd:  # not unplugged meanwhile (then fd is closed already)
                loop.remove_reader(fd)

    async def _rx_paced(self) -> None:
        """Take bytes off the pty no faster than the wire would bring them."""
        rate = self.byte_rate or 1.0
        loop = self._need_loop()
        wire_free = loop.time()
        chunk = max(1, int(rate * _PACE_CHUNK_SECONDS))
        while True:
            # Bytes already waiting kept the wire busy: they follow the previous ones
            # back to back. Otherwise the wire was idle until they came.
            try:
                data = os.read(self._master, chunk)
                idle = False
            except (BlockingIOError, InterruptedError):
                await self._wait_readable()
                try:
                    data = os.read(self._master, chunk)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return
                idle = True
            except OSError:
                return
            now = loop.time()
            start = max(now, wire_free) if idle else wire_free
            arrive = start + len(data) / rate
            wire_free = arrive
            if arrive > now:
                await asyncio.sleep(arrive - now)  # simulated wire time, not synchronisation
            self._deliver(data)

    # -- sending ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send bytes to the client (paced if a baud rate is set). Dropped while unplugged
        or when the client has not read 1 MiB of earlier output."""
        if not self.plugged or not data:
            return
        data = self._noisy(data, self.noise_tx, "tx")
        if self._tx_len + len(data) > MAX_TX_QUEUE:
            self.dropped_out += len(data)
            return
        if self.byte_rate is not None:
            self._tx.append(data)
            self._tx_len += len(data)
            self._tx_kick.set()
            return
        if not self._tx:
            try:
                n = os.write(self._master, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                self.dropped_out += len(data)
                return
            self.bytes_out += n
            data = data[n:]
            if not data:
                return
        self._tx.append(data)
        self._tx_len += len(data)
        if not self._writer_added:
            self._need_loop().add_writer(self._master, self._drain_unpaced)
            self._writer_added = True

    def _drain_unpaced(self) -> None:
        while self._tx:
            head = self._tx[0]
            try:
                n = os.write(self._master, head)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.dropped_out += self._tx_len
                self._tx.clear()
                self._tx_len = 0
                break
            self.bytes_out += n
            self._tx_len -= n
            if n < len(head):
                self._tx[0] = head[n:]
                return
            self._tx.popleft()
        if self._writer_added:
            self._need_loop().remove_writer(self._master)
            self._writer_added = False

    async def _tx_paced(self) -> None:
        rate = self.byte_rate or 1.0
        loop = self._need_loop()
        wire_free = loop.time()
        chunk = max(1, int(rate * _PACE_CHUNK_SECONDS))
        idle = True
        while True:
            if not self._tx:
                self._tx_kick.clear()
                await self._tx_kick.wait()
                idle = True
                continue
            head = self._tx[0]
            piece, rest = head[:chunk], head[chunk:]
            now = loop.time()
            start = max(now, wire_free) if idle else wire_free
            idle = False
            wire_free = start + len(piece) / rate
            if wire_free > now:
                await asyncio.sleep(wire_free - now)  # simulated wire time
            try:
                n = os.write(self._master, piece)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                n = len(piece)
                self.dropped_out += n
            self.bytes_out += n
            self._tx_len -= n
            remaining = piece[n:] + rest
            if remaining:
                self._tx[0] = remaining
                if n == 0:
                    await asyncio.sleep(_PACE_CHUNK_SECONDS)  # client not reading: back off
            else:
                self._tx.popleft()
