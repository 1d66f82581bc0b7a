"""Load a cell config and compile it into a plan: every device with its driver, profile,
validated addresses and effective points. No network I/O happens here, so `cellctl
check` and the daemon agree on what is valid."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import BaseModel, TypeAdapter, ValidationError

from cellctl.config.cell import CellConfig, DeviceConfig, PointOverride
from cellctl.config.commands_check import command_problems, method_problems
from cellctl.config.profile import PointDef, Profile
from cellctl.config.profile_check import CheckedPoint, ProfileCheck, check_profile_file
from cellctl.config.profiles import find_profile, search_path
from cellctl.config.yamlfile import format_validation_error, read_yaml
from cellctl.driver import DeviceContext, DriverPlugin, PointSpec
from cellctl.errors import ConfigError
from cellctl.plugins import DriverNotFound, load_driver

T = TypeVar("T")


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


_OVERRIDES = TypeAdapter(dict[str, PointOverride])
_NAMES = TypeAdapter(list[str])
_DIRS = TypeAdapter(list[Path])


def _lenient(adapter: TypeAdapter[T], data: Any, default: T) -> T:
    """A field's value when it is valid on its own, else `default` (its error is
    reported by the validation of the object it belongs to)."""
    try:
        return adapter.validate_python(data)
    except ValidationError:
        return default


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _effective_points(
    overrides: dict[str, PointOverride],
    disabled: list[str],
    profile: Profile,
    where: str,
    problems: list[str],
) -> list[CheckedPoint]:
    known = {p.id for p in profile.points}
    for name in [*overrides, *disabled]:
        if name not in known:
            problems.append(f"{where}: point {name!r} is not in profile {profile.name!r}")
    out = []
    for j, base in enumerate(profile.points):
        if base.id in disabled:
            continue
        override = overrides.get(base.id)
        if override is None:
            out.append(CheckedPoint(j, base, base.address))
            continue
        try:
            merged = PointDef.model_validate({**base.model_dump(), **override.model_dump(exclude_none=True)})
            out.append(CheckedPoint(j, merged, base.address))
        except ValidationError as exc:
            problems.extend(f"{where}.points.{base.id}: {e['msg']}" for e in exc.errors(include_url=False))
    return out


def _check_addresses(
    plugin: DriverPlugin, checked: ProfileCheck, points: list[CheckedPoint], problems: list[str]
) -> list[PointSpec]:
    """The driver's verdict on every point's address, also for a profile with other problems."""
    specs: list[PointSpec] = []
    for cp in points:
        if cp.address is None:
            continue
        address = _validate(
            plugin.address_model, cp.address, checked.path, ("points", cp.index, "address"), problems
        )
        if address is None or cp.point is None:
            continue
        p = cp.point
        spec = PointSpec(index=len(specs), id=p.id, type=p.type, access=p.access, address=address)
        err = plugin.check_point(spec)
        if err:
            problems.append(f"{checked.path}: points[{cp.index}] ({p.id}): {err}")
        specs.append(spec)
    return specs


def compile_device(
    raw: Any,
    dev: DeviceConfig | None,
    *,
    index: int,
    config_path: Path,
    dirs: list[Path],
    problems: list[str],
    profiles: dict[Path, ProfileCheck] | None = None,
) -> CompiledDevice | None:
    """Check one device as far as its parts allow and compile it when all is well.

    `dev` is None when the device's own fields are invalid (already reported): its
    driver, connection, options and profile are still checked from the raw data, so one
    bad field does not hide the problems behind it."""
    where = f"{config_path}: devices[{index}]"
    loc: tuple[int | str, ...] = ("devices", index)
    fields: dict[str, Any] = raw if isinstance(raw, dict) else {}
    n = len(problems)
    driver = dev.driver if dev else _text(fields.get("driver"))
    plugin: DriverPlugin | None = None
    connection = options = None
    if driver is not None:
        try:
            plugin = load_driver(driver)
        except DriverNotFound as exc:
            problems.append(f"{where}.driver: {exc}")
    if plugin is not None:
        if isinstance(raw_conn := fields.get("connection"), dict):
            connection = _validate(
                plugin.connection_model, raw_conn, config_path, (*loc, "connection"), problems
            )
        if isinstance(raw_opts := fields.get("options", {}), dict):
            options = _validate(plugin.options_model, raw_opts, config_path, (*loc, "options"), problems)
    name = dev.profile if dev else _text(fields.get("profile"))
    if name is None:
        return None
    profile_path = find_profile(name, dirs)
    if profile_path is None:
        searched = ", ".join(str(d) for d in dirs)
        problems.append(
            f"{where}.profile: device {fields.get('id', '')!r}: profile {name!r} not found (searched: {searched})"
        )
        return None
    cache = profiles if profiles is not None else {}
    checked = cache.get(profile_path) or check_profile_file(profile_path)
    cache[profile_path] = checked
    problems.extend(checked.problems)
    if plugin is not None and checked.driver is not None and checked.driver != driver:
        problems.append(
            f"{where}.driver: device {fields.get('id', '')!r} uses driver {driver!r} "
            f"but profile {name!r} is for driver {checked.driver!r}"
        )
        return None
    overrides = dev.points if dev else _lenient(_OVERRIDES, fields.get("points", {}), {})
    disabled = dev.disabled_points if dev else _lenient(_NAMES, fields.get("disabled_points", []), [])
    if checked.profile is not None:
        points = _effective_points(overrides, disabled, checked.profile, where, problems)
    else:
        points = [cp for cp in checked.points if cp.point is None or cp.point.id not in disabled]
    specs = _check_addresses(plugin, checked, points, problems) if plugin is not None else []
    if (
        len(problems) > n
        or dev is None
        or plugin is None
        or checked.profile is None
        or connection is None
        or options is None
    ):
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
    effective = [cp.point for cp in points if cp.point is not None]
    return CompiledDevice(dev, checked.profile, profile_path, plugin, ctx, effective)


def _devices(data: dict[str, Any], path: Path, problems: list[str]) -> list[Any]:
    raw = data.get("devices", [])
    if isinstance(raw, list):
        return raw
    problems.append(f"{path}: devices: expected a list of devices, got {type(raw).__name__}")
    return []


def _duplicate(raw: Any, index: int, seen: dict[str, int]) -> str | None:
    device_id = raw.get("id") if isinstance(raw, dict) else None
    if not isinstance(device_id, str):
        return None
    if device_id in seen:
        return f"device id {device_id!r} is used twice (devices[{seen[device_id]}] and devices[{index}])"
    seen[device_id] = index
    return None


def _check_energy(compiled: dict[int, CompiledDevice], path: Path, problems: list[str]) -> None:
    """A device's `energy:` relation names a meter of the cell that is read and has the point."""
    by_id = {d.config.id: d for d in compiled.values()}
    for i, d in compiled.items():
        energy = d.config.energy
        if energy is None:
            continue
        where = f"{path}: devices[{i}].energy"
        meter = by_id.get(energy.meter)
        if meter is None:
            problems.append(f"{where}: meter {energy.meter!r} is not an enabled device of the cell")
        elif energy.point not in {p.id for p in meter.points}:
            problems.append(
                f"{where}: point {energy.point!r} is not in profile {meter.profile.name!r} of meter {energy.meter!r}"
            )


def _check_lots(compiled: dict[int, CompiledDevice], path: Path, problems: list[str]) -> None:
    """A device's `lots:` name materials its profile's job declares."""
    for i, d in compiled.items():
        job = d.profile.job
        declared = job.materials if job is not None else {}
        for name in d.config.lots:
            if name not in declared:
                known = ", ".join(sorted(declared)) or "none"
                problems.append(
                    f"{path}: devices[{i}].lots.{name}: profile {d.profile.name!r} declares no job material "
                    f"{name!r} (its materials: {known})"
                )


def load_cell(path: Path) -> CompiledCell:
    """Load and compile a cell config; raise ConfigError listing every problem found.

    The cell's own settings and each device are validated apart, and each device is
    checked as far as its valid parts allow, so one mistake never hides another."""
    data = read_yaml(path)
    if data is None:
        raise ConfigError([f"{path}: the file is empty"])
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping at the top level, got {type(data).__name__}"])
    problems: list[str] = []
    _validate(CellConfig, {k: v for k, v in data.items() if k != "devices"}, path, (), problems)
    profile_dirs = _lenient(_DIRS, data.get("profile_dirs", []), [])
    dirs = search_path([d if d.is_absolute() else path.parent / d for d in profile_dirs])
    compiled: dict[int, CompiledDevice] = {}
    profiles: dict[Path, ProfileCheck] = {}  # each profile file is checked once, however many devices use it
    seen: dict[str, int] = {}
    for i, raw in enumerate(_devices(data, path, problems)):
        dev = cast(DeviceConfig | None, _validate(DeviceConfig, raw, path, ("devices", i), problems))
        if (twice := _duplicate(raw, i, seen)) is not None:
            problems.append(f"{path}: devices: {twice}")
        enabled = dev.enabled if dev else not (isinstance(raw, dict) and raw.get("enabled") is False)
        if enabled and (
            device := compile_device(
                raw, dev, index=i, config_path=path, dirs=dirs, problems=problems, profiles=profiles
            )
        ):
            compiled[i] = device
    _check_energy(compiled, path, problems)
    _check_lots(compiled, path, problems)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))  # a shared profile's problems once
    try:
        config = CellConfig.model_validate(data)
    except ValidationError as exc:  # every part passed above; this only guards the seams
        raise ConfigError(format_validation_error(path, exc)) from None
    devices = [replace(d, config=config.devices[i]) for i, d in compiled.items()]
    problems = method_problems(path, devices) + command_problems(path, config.commands, devices)
    if problems:
        raise ConfigError(problems)
    return CompiledCell(path, config, devices, dirs)
