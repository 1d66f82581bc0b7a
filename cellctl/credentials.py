"""Secrets handed over by systemd (LoadCredential=): a `password_file` that is a bare
name, such as `mqtt-password`, is looked up in `$CREDENTIALS_DIRECTORY` first. The
shipped unit loads every file of /etc/cellctl/credentials/ (root-only) as a credential
named `cellctl_<file>`, readable by the service's user alone, so the service user
never needs read access to the secret on disk."""

from __future__ import annotations

import os
from pathlib import Path

UNIT_PREFIX = "cellctl_"  # LoadCredential=cellctl:/etc/cellctl/credentials names files so


def secret_path(path: Path) -> Path:
    """Where to read the secret `path` names: a bare name found among the service's
    credentials (as is, or with the unit's `cellctl_` prefix) is read from there; any
    other path as given."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory or len(path.parts) != 1 or path.is_absolute():
        return path
    for name in (path.name, UNIT_PREFIX + path.name):
        candidate = Path(directory) / name
        if candidate.is_file():
            return candidate
    return path
