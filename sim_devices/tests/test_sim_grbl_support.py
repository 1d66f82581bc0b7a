"""A raw serial client for the G-code simulator tests: opens the pty like a host would
and collects the lines the simulator sends, with deadline-bound waits. No tests here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import termios
import time
import tty
from collections.abc import Callable

from cellctl.testing import async_wait_until as until

__all__ = ["RawPort", "checksum_line", "exists", "field_of", "state_of", "until"]


class RawPort:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)
        termios.tcflush(self.fd, termios.TCIFLUSH)  # the boot banner is old news
        self.lines: list[str] = []
        self.stamps: list[float] = []
        self.bytes_in = 0
        self.eof = False
        self._buf = b""
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True
            self._loop.remove_reader(self.fd)
            self._event.set()
            return
        self.bytes_in += len(data)
        self._buf += data
        *done, self._buf = self._buf.split(b"\n")
        now = time.monotonic()
        for raw in done:
            self.lines.append(raw.rstrip(b"\r").decode("latin-1"))
            self.stamps.append(now)
        self._event.set()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 5
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                n = 0
                if time.monotonic() > deadline:
                    raise TimeoutError("pty would not take the bytes") from None
                time.sleep(0.001)  # the kernel buffer is full: a real port blocks here too
            view = view[n:]

    def send(self, line: str) -> None:
        self.write(line.encode("ascii") + b"\n")

    def mark(self) -> int:
        return len(self.lines)

    async def wait_for(
        self, match: str | Callable[[str], bool], *, since: int = 0, timeout: float = 5.0
    ) -> str:
        """The first line from `since` on that equals / starts with `match` (or satisfies it)."""
        def ok(line: str) -> bool:
            if callable(match):
                return match(line)
            return line == match or line.startswith(match)

        deadline = self._loop.time() + timeout
        while True:
            for line in self.lines[since:]:
                if ok(line):
                    return line
            remaining = deadline - self._loop.time()
            if remaining <= 0 or self.eof:
                raise AssertionError(f"no line matching {match!r} within {timeout} s; got {self.lines[since:][-8:]}")
            self._event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._event.wait()

    async def count(self, match: str, n: int, *, since: int = 0, timeout: float = 5.0) -> list[str]:
        deadline = self._loop.time() + timeout
        while True:
            got = [x for x in self.lines[since:] if x == match or x.startswith(match)]
            if len(got) >= n:
                return got
            remaining = deadline - self._loop.time()
            if remaining <= 0 or self.eof:
                raise AssertionError(f"{len(got)} of {n} lines matching {match!r} within {timeout} s; got {self.lines[since:][-8:]}")
            self._event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._event.wait()

    async def status(self, *, timeout: float = 2.0) -> str:
        since = self.mark()
        self.write(b"?")
        return await self.wait_for("<", since=since, timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def state_of(report: str) -> str:
    m = re.match(r"<([^|>]+)", report)
    assert m, report
    return m.group(1)


def field_of(report: str, key: str) -> str | None:
    for part in report.strip("<>").split("|")[1:]:
        k, _, v = part.partition(":")
        if k == key:
            return v
    return None


def checksum_line(n: int, cmd: str) -> str:
    body = f"N{n} {cmd}"
    cs = 0
    for ch in body.encode("ascii"):
        cs ^= ch
    return f"{body}*{cs}"


def exists(path: str) -> bool:
    return os.path.exists(path)
