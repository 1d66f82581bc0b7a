"""Check one profile file and keep going after the first problem, so a user sees every
problem of the file at once. Besides the verdict, it hands back every point that is valid
on its own, so the loader can still check their addresses with the driver while other
parts of the profile are broken."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cellctl.config.profile import PointDef, Profile, reference_problems
from cellctl.config.yamlfile import format_validation_error, read_yaml
from cellctl.errors import ConfigError


@dataclass(frozen=True)
class CheckedPoint:
    index: int  # position in the file's `points` list
    point: PointDef | None  # None when the point itself is invalid
    address: dict[str, Any] | None  # the raw address block, for the driver to check


@dataclass(frozen=True)
class ProfileCheck:
    path: Path
    profile: Profile | None  # None when the file has any problem
    driver: str | None
    points: list[CheckedPoint]
    problems: list[str]


def _checked_points(raw_points: Any) -> list[CheckedPoint]:
    out = []
    for j, raw in enumerate(raw_points if isinstance(raw_points, list) else []):
        if not isinstance(raw, dict):
            continue
        try:
            point: PointDef | None = PointDef.model_validate(raw)
        except ValidationError:
            point = None  # reported by the whole-profile validation
        address = raw.get("address")
        out.append(CheckedPoint(j, point, address if isinstance(address, dict) else None))
    return out


def check_profile_file(path: Path) -> ProfileCheck:
    """Every problem of the profile at `path`; never raises for a bad file."""
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        return ProfileCheck(path, None, None, [], exc.problems)
    if not isinstance(data, dict):
        got = (
            "the file is empty"
            if data is None
            else f"expected a mapping at the top level, got {type(data).__name__}"
        )
        return ProfileCheck(path, None, None, [], [f"{path}: {got}"])
    problems: list[str] = []
    profile: Profile | None = None
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        # the model's own cross-reference check (location ()) runs only when every field is
        # valid; reference_problems below reports the same on the raw data, always
        problems += format_validation_error(path, exc, keep=lambda err: err["loc"] != ())
    problems += [f"{path}: {where}: {msg}" for where, msg in reference_problems(data)]
    name = data.get("name")
    if isinstance(name, str) and name != path.stem:
        problems.append(f"{path}: name: {name!r} must match the file name {path.stem!r}")
    driver = data.get("driver")
    return ProfileCheck(
        path,
        None if problems else profile,
        driver if isinstance(driver, str) else None,
        _checked_points(data.get("points")),
        problems,
    )
