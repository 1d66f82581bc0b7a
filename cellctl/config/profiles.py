"""Finding and loading profiles along the search path.

A profile named NAME is the file NAME.yaml in the first directory that has it, searched
in this order: the config's `profile_dirs`, /etc/cellctl/profiles, then the directories
installed distributions contribute through the ``cellctl.profiles`` entry-point group
(the core's own first, then the others sorted by distribution name). The more specific
place wins, so a site can override a shipped profile; between two distributions that ship
the same name the first wins and `cellctl profiles list` shows the shadowed file.

An entry point in ``cellctl.profiles`` names a package whose directory holds the YAML
files (``gcode = "cellctl_gcode.profiles"``); the package is located, never imported.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path

from cellctl.config.profile import Profile
from cellctl.config.profile_check import check_profile_file
from cellctl.errors import ConfigError

SYSTEM_PROFILE_DIR = Path("/etc/cellctl/profiles")
GROUP = "cellctl.profiles"
CORE_DISTRIBUTION = "cellctl"


@dataclass(frozen=True)
class ProfileDir:
    """One directory on the search path and where it comes from: ``config``, ``system``
    or the name of the distribution that ships it."""

    path: Path
    source: str


def shipped_profile_dir() -> Path:
    """The core's own (cross-driver) profiles."""
    return Path(str(files("cellctl.profiles")))


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def installed_profile_dirs() -> tuple[ProfileDir, ...]:
    """Profile directories of the installed distributions: the core's first, then the
    others by distribution name. An entry point whose package is missing is skipped."""
    found: list[tuple[int, str, str, Path]] = []
    for ep in entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else ep.name
        try:
            path = _package_dir(ep.value.partition(":")[0].strip())
        except ImportError:  # a broken or half-installed distribution must not stop the daemon
            path = None
        if path is not None:
            found.append((0 if dist == CORE_DISTRIBUTION else 1, dist, ep.name, path))
    dirs = [ProfileDir(path, dist) for _, dist, _, path in sorted(found)]
    if not any(d.path == shipped_profile_dir() for d in dirs):  # the core's, even without metadata
        dirs.insert(0, ProfileDir(shipped_profile_dir(), CORE_DISTRIBUTION))
    return tuple(dirs)


def search_dirs(extra_dirs: Sequence[Path] | None = None) -> list[ProfileDir]:
    """The search path with the source of each directory, most specific first."""
    return [
        *(ProfileDir(d, "config") for d in extra_dirs or []),
        ProfileDir(SYSTEM_PROFILE_DIR, "system"),
        *installed_profile_dirs(),
    ]


def search_path(extra_dirs: Sequence[Path] | None = None) -> list[Path]:
    return [d.path for d in search_dirs(extra_dirs)]


@dataclass(frozen=True)
class FoundProfile:
    name: str
    path: Path
    source: str = ""
    shadowed: list[Path] = field(default_factory=list)  # same name further down the path


def find_profile(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for suffix in (".yaml", ".yml"):
            candidate = d / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def list_profiles(dirs: Sequence[Path | ProfileDir]) -> list[FoundProfile]:
    """Every profile name on the path, each with the file that wins and the ones it shadows."""
    seen: dict[str, FoundProfile] = {}
    for entry in dirs:
        d, source = (entry.path, entry.source) if isinstance(entry, ProfileDir) else (entry, "")
        if not d.is_dir():
            continue
        for path in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
            if path.stem in seen:
                seen[path.stem].shadowed.append(path)
            else:
                seen[path.stem] = FoundProfile(path.stem, path, source)
    return sorted(seen.values(), key=lambda p: p.name)


def load_profile_file(path: Path) -> Profile:
    checked = check_profile_file(path)
    if checked.profile is None:
        raise ConfigError(checked.problems)
    return checked.profile


def load_profile(name: str, dirs: list[Path]) -> Profile:
    path = find_profile(name, dirs)
    if path is None:
        searched = ", ".join(str(d) for d in dirs)
        raise ConfigError([f"profile {name!r} not found (searched: {searched})"])
    return load_profile_file(path)
