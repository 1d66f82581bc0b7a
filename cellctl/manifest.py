"""The cell manifest: what this cell is right now — cellctl's version, a hash of its
config, and each device with its driver, profile (name and a hash of the file), points,
writable points and what its profile maps (machine state, counters, job) — published
retained at `<root>/manifest` at start and after every reload, so a site sees modules
added, removed and rearranged without asking anyone."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cellctl import __version__
from cellctl.config.loader import CompiledCell, CompiledDevice

if TYPE_CHECKING:  # the contract's TypedDicts only annotate: not imported at run time (start-up)
    from cellctl.contract.payloads import IdentityJson, ManifestDeviceJson, ManifestJson

MANIFEST_VERSION = 1


def file_hash(path: Path) -> str | None:
    """sha256 of a file's bytes, shortened (enough to see that something changed)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def device_entry(device: CompiledDevice, joined_ms: int) -> ManifestDeviceJson:
    profile = device.profile
    return {
        "id": device.config.id,
        "driver": device.config.driver,
        "profile": profile.name,
        "profile_hash": file_hash(device.profile_path),
        "points": [p.id for p in device.points],
        "writable": [p.id for p in device.points if p.access in ("w", "rw")],
        "machine_state": profile.state is not None,
        "counters": profile.counters is not None,
        "job": profile.program is not None,
        "poll_interval": device.config.poll_interval,
        "joined_ts": joined_ms,
    }


def build_manifest(compiled: CompiledCell, joined: Mapping[str, int], ts_ms: int) -> ManifestJson:
    i = compiled.config.identity
    cell: IdentityJson = {"enterprise": i.enterprise, "site": i.site, "area": i.area, "line": i.line, "cell": i.cell}
    return {
        "version": MANIFEST_VERSION,
        "ts": ts_ms,
        "cellctl": __version__,
        "cell": cell,
        "config_hash": file_hash(compiled.path),
        "formats": list(compiled.config.publish.formats),
        "devices": [device_entry(d, joined.get(d.config.id, ts_ms)) for d in compiled.devices],
    }
