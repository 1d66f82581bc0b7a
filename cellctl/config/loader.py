"""Load a cell config and compile it into a plan: every device with its driver, profile,
validated addresses and effective points. No network I/O happens here, so `cellctl
check` and the daemon agree on what is valid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from cellctl.config.cell import CellConfig, DeviceConfig
from cellctl.config.profile import PointDef, Profile
from cellctl.config.profiles import find_profile, load_profile_file, search_path
from cellctl.config.yamlfile import format_validation_error, load_model
from cellctl.driver import DeviceContext, DriverPlugin, PointSpec
from cellctl.errors import ConfigError
from cellctl.plugins import DriverNotFound, load_driver


@dataclass(frozen=True)
class CompiledDevice:
    config: DeviceConfig
    profile: Profile
    profile_path: Path
    plugin: DriverPlugin
    context: DeviceContext
    points: list[PointDef]  # effective (overrides applied), aligned with context.points


@dataclass(frozen=True)
class CompiledCell:
    path: Path
    config: CellConfig
    devices: list[CompiledDevice]
    profile_dirs: list[Path]


def _validate(
    model: type[BaseModel], data: object, path: Path, loc: tuple[int | str, ...], problems: list[str]
) -> BaseModel | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(format_validation_error(path, exc, loc))
        return None


def _effective_points(dev: DeviceConfig, profile: Profile, where: str, problems: list[str]) -> list[PointDef]:
    known = {p.id for p in profile.points}
    for name in [*dev.points, *dev.disabled_points]:
        if name not in known:
            problems.append(f"{where}: point {name!r} is not in profile {profile.name!r}")
    out = []
    for base in profile.points:
        if base.id in dev.disabled_points:
            continue
        override = dev.points.get(base.id)
        if override is None:
            out.append(base)
            continue
        try:
            out.append(
                PointDef.model_validate({**base.model_dump(), **override.model_dump(exclude_none=True)})
            )
        except ValidationError as exc:
            problems.extend(f"{where}.points.{base.id}: {e['msg']}" for e in exc.errors(include_url=False))
    return out


def compile_device(
    dev: DeviceConfig,
    index: int,
    config_path: Path,
    dirs: list[Path],
    problems: list[str],
    *,
    profiles: dict[Path, Profile] | None = None,
) -> CompiledDevice | None:
    where = f"{config_path}: devices[{index}]"
    try:
        plugin = load_driver(dev.driver)
    except DriverNotFound as exc:
        problems.append(f"{where}.driver: {exc}")
        return None
    profile_path = find_profile(dev.profile, dirs)
    if profile_path is None:
        searched = ", ".join(str(d) for d in dirs)
        problems.append(
            f"{where}.profile: device {dev.id!r}: profile {dev.profile!r} not found (searched: {searched})"
        )
        return None
    cache = profiles if profiles is not None else {}
    try:
        profile = cache.get(profile_path) or load_profile_file(profile_path)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None
    cache[profile_path] = profile
    if profile.driver != dev.driver:
        problems.append(
            f"{where}.driver: device {dev.id!r} uses driver {dev.driver!r} "
            f"but profile {profile.name!r} is for driver {profile.driver!r}"
        )
        return None
    n = len(problems)
    loc: tuple[int | str, ...] = ("devices", index)
    connection = _validate(
        plugin.connection_model, dev.connection, config_path, (*loc, "connection"), problems
    )
    options = _validate(plugin.options_model, dev.options, config_path, (*loc, "options"), problems)
    points = _effective_points(dev, profile, where, problems)
    specs: list[PointSpec] = []
    for p in points:
        j = next(i for i, q in enumerate(profile.points) if q.id == p.id)
        address = _validate(plugin.address_model, p.address, profile_path, ("points", j, "address"), problems)
        if address is None:
            continue
        spec = PointSpec(index=len(specs), id=p.id, type=p.type, access=p.access, address=address)
        err = plugin.check_point(spec)
        if err:
            problems.append(f"{profile_path}: points[{j}] ({p.id}): {err}")
        specs.append(spec)
    if len(problems) > n or connection is None or options is None:
        return None
    ctx = DeviceContext(
        device_id=dev.id,
        connection=connection,
        options=options,
        points=specs,
        timeout=dev.timeout,
        poll_interval=dev.poll_interval,
    )
    try:
        plugin.plan_summary(ctx)
    except ValueError as exc:
        problems.append(f"{where}: device {dev.id!r}: {exc}")
        return None
    return CompiledDevice(dev, profile, profile_path, plugin, ctx, points)


def load_cell(path: Path) -> CompiledCell:
    """Load and compile a cell config; raise ConfigError listing every problem found."""
    config = load_model(path, CellConfig)
    base = path.parent
    dirs = search_path([d if d.is_absolute() else base / d for d in config.profile_dirs])
    problems: list[str] = []
    devices = []
    profiles: dict[Path, Profile] = {}  # each profile file is parsed once, however many devices use it
    for i, dev in enumerate(config.devices):
        if not dev.enabled:
            continue
        compiled = compile_device(dev, i, path, dirs, problems, profiles=profiles)
        if compiled is not None:
            devices.append(compiled)
    if problems:
        raise ConfigError(problems)
    return CompiledCell(path, config, devices, dirs)
