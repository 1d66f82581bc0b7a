"""A serial line without hardware: two pseudo-terminals joined back to back."""

from __future__ import annotations

import asyncio
import os
import tty


class PtyBridge:
    """Two pseudo-terminals joined back to back (an in-process null modem): the client
    opens one slave path, the server the other, and the bridge copies between masters on
    the event loop. Each side opens its path exactly as it would open /dev/ttyUSB0.
    `bytes_to_server` counts what the client sent, for tests of request sizes."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        a_master, a_slave = os.openpty()
        b_master, b_slave = os.openpty()
        for fd in (a_slave, b_slave):
            tty.setraw(fd)  # no echo or line discipline before pyserial configures it
        for fd in (a_master, b_master):
            os.set_blocking(fd, False)
        self.fds = [a_master, a_slave, b_master, b_slave]
        self.client_path, self.server_path = os.ttyname(a_slave), os.ttyname(b_slave)
        self.bytes_to_server = 0
        self.loop.add_reader(a_master, self._copy, a_master, b_master, True)
        self.loop.add_reader(b_master, self._copy, b_master, a_master, False)

    def _copy(self, src: int, dst: int, to_server: bool) -> None:
        try:
            data = os.read(src, 4096)
        except OSError:
            return
        if to_server:
            self.bytes_to_server += len(data)
        os.write(dst, data)

    def close(self) -> None:
        for fd in (self.fds[0], self.fds[2]):
            self.loop.remove_reader(fd)
        for fd in self.fds:
            os.close(fd)

    def __enter__(self) -> PtyBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
