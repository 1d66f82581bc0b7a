"""A virtual serial line: two pseudo-terminals joined back to back (a null-modem cable).

Why two: pymodbus's serial server opens its port by name through pyserial and has no
way to take an already-open file descriptor, while the master side of a pty has no
name of its own (opening /dev/ptmx or /proc/self/fd/N again makes a *new* pair). So
the server gets the slave of one pair, clients get the slave of the other, and this
bridge copies bytes between the two masters in the event loop, as `socat PTY PTY` does.

Like a real line with nobody listening, bytes the far side cannot take are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty


class PtyBridge:
    """Create with `PtyBridge()`, call `start()` in a running loop, `close()` when done.

    `server_path` is for the Modbus server, `client_path` is what a client opens like
    /dev/ttyUSB0. An optional `link` is a symlink to `client_path` (a stable name for
    configs), removed again on close.
    """

    def __init__(self, link: str | None = None) -> None:
        self._fds: list[int] = []
        self._srv_master, self._srv_slave = self._open_pair()
        self._cli_master, self._cli_slave = self._open_pair()
        self.server_path = os.ttyname(self._srv_slave)
        self.client_path = os.ttyname(self._cli_slave)
        self.link = link
        if link:
            with contextlib.suppress(FileNotFoundError):
                if os.path.islink(link):
                    os.unlink(link)
            os.symlink(self.client_path, link)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.bytes_to_server = 0
        self.bytes_to_client = 0

    def _open_pair(self) -> tuple[int, int]:
        master, slave = os.openpty()
        self._fds += [master, slave]
        # raw from the start: no echo, no CR/LF mangling before the opener configures it.
        # The slave fd stays open here so the master never sees a hang-up while the
        # real user (server or client) has the port closed.
        tty.setraw(slave, termios.TCSANOW)
        os.set_blocking(master, False)
        return master, slave

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._srv_master, self._pump, self._srv_master, self._cli_master, False)
        self._loop.add_reader(self._cli_master, self._pump, self._cli_master, self._srv_master, True)

    def _pump(self, src: int, dst: int, to_server: bool) -> None:
        try:
            data = os.read(src, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: the slave side went away; nothing to carry
            return
        try:
            written = os.write(dst, data)
        except (BlockingIOError, InterruptedError, OSError):
            written = 0
        if to_server:
            self.bytes_to_server += written
        else:
            self.bytes_to_client += written

    def close(self) -> None:
        if self._loop is not None:
            for fd in (self._srv_master, self._cli_master):
                self._loop.remove_reader(fd)
            self._loop = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        if self.link:
            with contextlib.suppress(OSError):
                if os.path.islink(self.link) and os.readlink(self.link) == self.client_path:
                    os.unlink(self.link)
