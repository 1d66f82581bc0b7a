"""Which asyncio event loop the daemon runs on: uvloop when it is installed (the optional
`fast` extra), else the standard one. uvloop's selector, timers and callbacks are C;
the daemon's hot path is mostly loop overhead around small socket reads and writes, so it
pays there (figures in bench/README.md). `CELLCTL_EVENT_LOOP=asyncio` forces the standard
loop (to compare, or to rule uvloop out when chasing a problem)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory if wanted and installed; None means asyncio's default."""
    choice = os.environ.get("CELLCTL_EVENT_LOOP", "auto").strip().lower()
    if choice == "asyncio":
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
