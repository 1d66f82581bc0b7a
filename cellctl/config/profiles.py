"""Finding and loading profiles along the search path.

A profile named NAME is the file NAME.yaml in the first directory that has it, searched
in this order: the config's `profile_dirs`, /etc/cellctl/profiles, the profiles shipped
with the package. The more specific place wins, so a site can override a shipped profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from cellctl.config.profile import Profile
from cellctl.config.profile_check import check_profile_file
from cellctl.errors import ConfigError

SYSTEM_PROFILE_DIR = Path("/etc/cellctl/profiles")


def shipped_profile_dir() -> Path:
    return Path(str(files("cellctl.profiles")))


def search_path(extra_dirs: list[Path] | None = None) -> list[Path]:
    return [*(extra_dirs or []), SYSTEM_PROFILE_DIR, shipped_profile_dir()]


@dataclass(frozen=True)
class FoundProfile:
    name: str
    path: Path


def find_profile(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for suffix in (".yaml", ".yml"):
            candidate = d / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def list_profiles(dirs: list[Path]) -> list[FoundProfile]:
    """Every profile name on the path, each with the file that wins."""
    seen: dict[str, FoundProfile] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for path in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
            seen.setdefault(path.stem, FoundProfile(path.stem, path))
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
