"""`control.start` for the deprecated `options.job_dir`: put a waiting job at the head of
the job folder's queue. The folder itself is watched by the core
(cellctl/commands/folder.py), which feeds every file to the command router; it runs the
oldest file first, so making this one the oldest makes it the next."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from cellctl_gcode.config import GcodeOptions


class JobHost(Protocol):
    """What `start_named` needs from the device (it never imports the device)."""

    options: GcodeOptions


async def start_named(dev: JobHost, name: str) -> None:
    """`control.start`: put the waiting job `name` at the head of the job folder's queue,
    so it is the next to run (ValueError unless it is a plain file name there)."""
    directory = dev.options.job_dir
    if directory is None:
        raise ValueError("control.start needs options.job_dir")
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"job name must be a plain file name inside job_dir, got {name!r}")
    path = directory / name
    if not path.is_file():
        raise ValueError(f"no job {name!r} waiting in {str(directory)!r}")
    os.utime(path, (0, 0))  # oldest first: this one is next
