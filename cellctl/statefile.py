"""Small state files the daemon keeps in its state directory (Sparkplug bdSeq and aliases,
job records): written so that a crash at any point leaves the old or the new content."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


class StateFileError(OSError):
    """A state file that cannot be written (read problems are recovered from)."""


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash at any point leaves old or new content."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StateFileError(exc.errno, f"cannot write {str(path)!r}: {exc.strerror}") from None
