"""Finding drivers: every driver, built-in or third-party, is an entry point in the
``cellctl.drivers`` group. Only the drivers a cell uses are imported, so a cell without
OPC UA devices never pays for importing asyncua."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from cellctl.driver import DriverPlugin

GROUP = "cellctl.drivers"


class DriverNotFound(LookupError):
    pass


def available_drivers() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


@cache
def load_driver(name: str) -> DriverPlugin:
    matches = entry_points(group=GROUP, name=name)
    if not matches:
        have = ", ".join(available_drivers()) or "none"
        raise DriverNotFound(f"driver {name!r} is not installed (installed drivers: {have})")
    ep = next(iter(matches))
    plugin: DriverPlugin = ep.load()
    return plugin
