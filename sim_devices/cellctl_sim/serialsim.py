"""What the simulated serial machines (GRBL, Marlin) share: the pty they sit on, the loop
and their timers, the life cycle (`async with`), and the fault-injection API a test
drives: `drop_ok`, `stall` / `unstall`, `reset`, `unplug` / `replug`, `inject`, and line
noise through `line.noise_rx` / `line.noise_tx`. A dialect supplies how bytes are taken
in (`_on_bytes`), its main loop (`_process`), its boot banner and what a reset clears."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Self, TypedDict

from cellctl_sim.serialline import PtyLine


class LinkOptions(TypedDict, total=False):
    """What every serial machine takes besides its dialect's own settings."""

    speedup: float  # simulated time runs this much faster (math.inf: motion is instant)
    baudrate: int | None  # pace bytes as this baud rate would (None: as fast as they come)
    link: str | None  # a stable symlink to the pty, as /dev/serial/by-id gives
    seed: int | None  # for reproducible line noise



class SerialMachine(abc.ABC):
    """A simulated controller on a pseudo-terminal. Use as `async with Sim(...) as sim:`;
    clients open `sim.path`."""

    def __init__(
        self, *, speedup: float = 1.0, baudrate: int | None = None, link: str | None = None, seed: int | None = None
    ) -> None:
        if speedup <= 0:
            raise ValueError(f"speedup must be positive, got {speedup!r}")
        self.speedup = speedup
        self.line = PtyLine(self._on_bytes, baudrate=baudrate, link=link, seed=seed)
        self.resets = 0
        # faults
        self.drop_oks = 0  # drop this many of the next `ok`s (the lines still execute)
        self.stalled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._wake_timer: asyncio.TimerHandle | None = None  # the main loop's next wake-up
        self._hold_until: float | None = None  # end of the command that takes time (dwell, homing)

    # -- what a dialect supplies ------------------------------------------------------

    @abc.abstractmethod
    def _on_bytes(self, data: bytes) -> None:
        """Bytes the client wrote."""

    @abc.abstractmethod
    def _process(self) -> None:
        """Run the main loop until it has to wait."""

    @abc.abstractmethod
    def _boot(self) -> None:
        """Power on: clear the machine and send the banner."""

    @abc.abstractmethod
    def _reset_machine_state(self) -> None:
        """What a hardware reset clears (then the banner follows, from `_boot`)."""

    # -- life cycle -------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self.line.path

    async def start(self) -> Self:
        self._loop = asyncio.get_running_loop()
        await self.line.start()
        self._boot()
        return self

    def close(self) -> None:
        self._cancel_timers()
        self.line.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _need_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._loop

    def _now(self) -> float:
        return self._need_loop().time()

    def _later(self, delay: float, fn: Callable[[], None]) -> asyncio.TimerHandle:
        handle = self._need_loop().call_later(delay, fn)
        self._timers.append(handle)
        if len(self._timers) > 64:
            now = self._now()
            self._timers = [t for t in self._timers if not t.cancelled() and t.when() > now]
        return handle

    def _wake_at(self, when: float) -> None:
        if self._wake_timer is not None:
            self._wake_timer.cancel()
        self._wake_timer = self._need_loop().call_at(when, self._wake)

    def _waited(self, seconds: float) -> bool:
        """Simulated time for a command that takes `seconds` (a dwell, homing): False, with a
        wake-up booked, until that much time has passed since the first call; then True."""
        now = self._now()
        if self._hold_until is None:
            self._hold_until = now + seconds / min(self.speedup, 1e9)
        if now < self._hold_until:
            self._wake_at(self._hold_until)
            return False
        self._hold_until = None
        return True

    def _wake(self) -> None:
        self._wake_timer = None
        self._process()

    def _cancel_timers(self) -> None:
        for t in self._timers:
            t.cancel()
        self._timers.clear()

    def _take_ok(self) -> bool:
        """False when this `ok` is one of those `drop_ok` asked to lose."""
        if self.drop_oks > 0:
            self.drop_oks -= 1
            return False
        return True

    # -- faults -----------------------------------------------------------------------

    def drop_ok(self, n: int = 1) -> None:
        """Lose the next `n` `ok` answers (the lines still execute)."""
        self.drop_oks += n

    def stall(self) -> None:
        """The firmware hangs: nothing is processed or answered until `unstall()`."""
        self.stalled = True

    def unstall(self) -> None:
        self.stalled = False
        self._process()

    def reset(self) -> None:
        """A hardware reset (power dip, reset button, DTR): everything is lost, banner."""
        self.resets += 1
        self._cancel_timers()
        self._reset_machine_state()
        self._boot()

    def inject(self, data: bytes) -> None:
        """Put raw bytes on the wire to the client, as a faulty machine or line would."""
        self.line.write(data)

    def unplug(self) -> None:
        """Pull the cable: the client's next read fails and the path goes away."""
        self.line.unplug()

    def replug(self) -> None:
        """Plug a new cable in: a new pty, under the same `link` (if any)."""
        self.line.replug()
