"""Which asyncio event loop the daemon runs on: the standard one unless
`CELLCTL_EVENT_LOOP` asks for uvloop (`uvloop`: it must be installed, the optional `fast`
extra; `auto`: uvloop when installed). uvloop's selector, timers and callbacks are C, but
on the daemon's hot path it saved 1.5-4 % of CPU per value, within the noise of single
runs, and cost 2 MB of RSS in every run (issue 15's budget is 40 MB): the figures and the
decision are in bench/README.md and docs/decisions/0019-standard-event-loop-by-default.md."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
DEFAULT = "asyncio"  # CELLCTL_EVENT_LOOP when unset: asyncio | uvloop | auto


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory if asked for (and, for `auto`, installed); None means asyncio's
    default loop (also for any other value)."""
    choice = os.environ.get("CELLCTL_EVENT_LOOP", DEFAULT).strip().lower()
    if choice not in ("uvloop", "auto"):
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError("CELLCTL_EVENT_LOOP=uvloop but uvloop is not installed (pip install cellctl[fast])") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_factory()` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
