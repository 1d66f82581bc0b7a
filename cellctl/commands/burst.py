"""Rate-limited warnings for bursts of refusals (bad commands, floods): in its own module so
that the audit, which every cell has, does not import the Sparkplug codec."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("cellctl.commands")

LOG_INTERVAL = 5.0  # refusals of one reason: the first logged at once, then one summary per interval


class BurstLog:
    """Log the first event of a burst at once, then at most one line per `interval` per
    key, carrying how many were not logged: a flood of bad commands is visible in the log
    without becoming the log."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    def warning(self, key: str, event: str, **fields: Any) -> None:
        self._log(log.warning, key, event, fields)

    def info(self, key: str, event: str, **fields: Any) -> None:
        self._log(log.info, key, event, fields)

    def _log(self, emit: Callable[..., Any], key: str, event: str, fields: dict[str, Any]) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._quiet[key] += 1
            return
        self._last[key] = now
        quiet = self._quiet.pop(key, 0)
        emit(event, **fields, **({"not_logged_since": quiet} if quiet else {}))
