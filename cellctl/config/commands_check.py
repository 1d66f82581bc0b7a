"""Cross-checks of the command policy against the compiled devices and their profiles
(load time, no I/O but a stat of `job_store`): every device, point, command and
interlock point the policy names exists, points are writable, and limits only narrow
the profile's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from cellctl.config.commands import JOB_COMMANDS, CommandsConfig, Condition

if TYPE_CHECKING:
    from cellctl.config.loader import CompiledDevice


def _conditions(where: str, conditions: list[Condition], points: set[str], problems: list[str]) -> None:
    for k, c in enumerate(conditions):
        if c.point is not None and c.point not in points:
            problems.append(f"{where}.interlocks[{k}].point: the device has no point {c.point!r}")


def command_problems(path: Path, cfg: CommandsConfig, devices: Sequence[CompiledDevice]) -> list[str]:
    """Every problem as `<file>: commands.<field path>: <message>`."""
    problems: list[str] = []
    by_id = {d.config.id: d for d in devices}
    base = f"{path}: commands"
    if cfg.job_store is not None:
        store = cfg.job_store if cfg.job_store.is_absolute() else path.parent / cfg.job_store
        if not store.is_dir():
            problems.append(f"{base}.job_store: {str(cfg.job_store)!r} is not a directory")
    for device_id, policy in cfg.devices.items():
        where = f"{base}.devices.{device_id}"
        dev = by_id.get(device_id)
        if dev is None:
            problems.append(f"{where}: no enabled device {device_id!r} in this cell")
            continue
        points = {p.id: p for p in dev.points}
        _conditions(where, policy.interlocks, set(points), problems)
        for point_id, pp in policy.points.items():
            pw = f"{where}.points.{point_id}"
            p = points.get(point_id)
            if p is None:
                problems.append(f"{pw}: profile {dev.profile.name!r} has no point {point_id!r}")
                continue
            if p.access == "r":
                problems.append(f"{pw}: point {point_id!r} is read-only in profile {dev.profile.name!r}")
            numeric = p.type in ("int", "float")
            if not numeric and (pp.min is not None or pp.max is not None or pp.step is not None):
                problems.append(f"{pw}: a {p.type} point has no 'min', 'max' or 'step'")
            if pp.min is not None and p.min is not None and pp.min < p.min:
                problems.append(f"{pw}.min: {pp.min:g} is below the profile's min {p.min:g}")
            if pp.max is not None and p.max is not None and pp.max > p.max:
                problems.append(f"{pw}.max: {pp.max:g} is above the profile's max {p.max:g}")
            _conditions(pw, pp.interlocks, set(points), problems)
        for name, cp in policy.commands.items():
            cw = f"{where}.commands.{name}"
            if name not in dev.profile.commands and name not in JOB_COMMANDS:
                declared = sorted([*dev.profile.commands, *JOB_COMMANDS])
                problems.append(f"{cw}: profile {dev.profile.name!r} declares no command {name!r} (known: {declared})")
            _conditions(cw, cp.interlocks, set(points), problems)
    for device_id in cfg.job_folders:
        where = f"{base}.job_folders.{device_id}"
        dev = by_id.get(device_id)
        if dev is None:
            problems.append(f"{where}: no enabled device {device_id!r} in this cell")
        elif getattr(dev.context.options, "job_dir", None) is not None:
            problems.append(f"{where}: device {device_id!r} also has options.job_dir (deprecated): keep one of them")
    return problems


def method_problems(path: Path, devices: Sequence[CompiledDevice]) -> list[str]:
    """A declared method's address, checked by the driver's `method_model` when it has one."""
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for dev in devices:
        model: Any = getattr(dev.plugin, "method_model", None)
        if not dev.profile.commands:
            continue
        if model is None or not (isinstance(model, type) and issubclass(model, BaseModel)):
            problems.append(
                f"{dev.profile_path}: commands: driver {dev.config.driver!r} cannot call methods"
                f" (profile {dev.profile.name!r} declares {sorted(dev.profile.commands)})"
            )
            continue
        for name, m in dev.profile.commands.items():
            if (str(dev.profile_path), name) in seen:
                continue
            seen.add((str(dev.profile_path), name))
            try:
                model.model_validate(m.address)
            except ValidationError as exc:
                for e in exc.errors(include_url=False):
                    loc = ".".join(str(x) for x in e["loc"])
                    problems.append(f"{dev.profile_path}: commands.{name}.address{'.' + loc if loc else ''}: {e['msg']}")
    return problems
