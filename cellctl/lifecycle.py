"""Making a crash loop visible: the daemon's last word when it crashes, and a short
history of its starts in the state dir.

systemd restarts a crashed daemon (systemd/cellctl.service); without these, a crash
loop is a stream of identical start-up lines. With them, each crash ends the log with
one `cellctl_crashed` line carrying the error and its traceback, and a start that follows
too many others logs `cellctl_restarting_often`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import structlog

STARTS_FILE = "starts.json"
STARTS_WINDOW_S = 600.0  # starts within the last 10 minutes count...
STARTS_OFTEN = 3  # ...and more than this many of them is a crash loop worth a warning
_KEEP = 100  # bound on the history, whatever the clock does


def recent_starts(state_dir: Path, *, now: float | None = None) -> list[float]:
    """The starts recorded within the window (wall-clock seconds); [] when there is no
    readable history. For metrics: more than one is a restart."""
    now = time.time() if now is None else now
    try:
        loaded = json.loads((state_dir / STARTS_FILE).read_text(encoding="utf-8")).get("starts", [])
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(loaded, list):
        return []
    return [t for t in loaded if isinstance(t, int | float) and now - STARTS_WINDOW_S < t <= now]


def record_start(state_dir: Path, *, now: float | None = None) -> list[float]:
    """Add this start (wall-clock seconds) to `state_dir/starts.json` and return the
    starts within the window, this one included. Never raises: the history is a
    diagnostic, and a state dir that cannot be written is the daemon's to report."""
    path = state_dir / STARTS_FILE
    now = time.time() if now is None else now
    earlier = recent_starts(state_dir, now=now)  # missing, unreadable or not ours: a new history
    recent = [*earlier, now][-_KEEP:]
    tmp = path.with_name(f".{STARTS_FILE}.tmp")
    try:
        tmp.write_text(json.dumps({"starts": recent}), encoding="utf-8")
        os.replace(tmp, path)  # a crash mid-write leaves the old history, never half a file
    except OSError:
        pass
    return recent


def report_start(state_dir: Path) -> None:
    """Record this start; warn once per start when the recent ones add up to a loop."""
    recent = record_start(state_dir)
    if len(recent) > STARTS_OFTEN:
        structlog.get_logger("cellctl").warning(
            "cellctl_restarting_often",
            starts=len(recent),
            window_s=STARTS_WINDOW_S,
            first_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(recent[0])),
            hint="the cellctl_crashed lines before this start say why",
        )


def report_crash(exc: BaseException) -> None:
    """The last log line of a crashed daemon: the error, and its traceback as one field."""
    structlog.get_logger("cellctl").critical(
        "cellctl_crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc
    )
