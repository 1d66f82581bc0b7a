"""Build a driver's `DeviceContext` the way the daemon does, for tests of a driver alone
(no daemon, no MQTT): the plugin's own models validate the connection, options and each
point's address, and the profile comes from the search path or from the test."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cellctl.config.profile import Profile
from cellctl.config.profiles import load_profile, search_path
from cellctl.driver import DeviceContext, DriverPlugin, PointSpec
from cellctl.plugins import load_driver


def device_context(
    plugin: DriverPlugin | str,
    profile: Profile | str,
    connection: Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
    *,
    device_id: str = "dev",
    timeout: float = 1.0,
    poll_interval: float = 1.0,
    profile_dirs: list[Path] | None = None,
) -> DeviceContext:
    """A context for `plugin` (an object or an installed driver's name) with every point of
    `profile` (an object or a name on the search path, `profile_dirs` first). Raises the
    plugin's ValidationError for a bad connection, options or address, and ValueError
    when the plugin's own point check refuses a point."""
    driver = load_driver(plugin) if isinstance(plugin, str) else plugin
    prof = profile if isinstance(profile, Profile) else load_profile(profile, search_path(profile_dirs))
    points = []
    for i, p in enumerate(prof.points):
        spec = PointSpec(
            index=i, id=p.id, type=p.type, access=p.access, address=driver.address_model.model_validate(p.address)
        )
        problem = driver.check_point(spec)
        if problem:
            raise ValueError(f"profile {prof.name!r}: point {p.id!r}: {problem}")
        points.append(spec)
    return DeviceContext(
        device_id=device_id,
        connection=driver.connection_model.model_validate(dict(connection)),
        options=driver.options_model.model_validate(dict(options or {})),
        points=points,
        timeout=timeout,
        poll_interval=poll_interval,
    )
