"""Test helpers for the OPC UA driver: device entries for cell configs, what consumers
see on MQTT, and what the simulator holds. (A unique module name, not conftest, so it
cannot collide with other test directories of the monorepo.)"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

from cellctl_sim.opcua import SimOpcUaServer

from cellctl.config.profiles import load_profile, search_path
from cellctl.driver import DeviceContext, Reading
from cellctl.testing import Collector, device_context, root_topic
from cellctl.testing import async_wait_until as wait_until

__all__ = ["root_topic", "wait_until"]

PROFILE = "sim-opcua-machine"


def opcua_device(
    device_id: str,
    url: str,
    profile: str = PROFILE,
    *,
    connection: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A device entry with fast timing, so outages show within about a second."""
    return {
        "id": device_id,
        "driver": "opcua",
        "profile": profile,
        "connection": {"endpoint": url, **(connection or {})},
        "options": {"publishing_interval": 0.05, "keepalive": 0.5, **(options or {})},
        "timeout": 1.0,
        **extra,
    }


def sim_name(address: dict[str, Any]) -> str:
    """The simulator's point name of a profile address (node or browse path)."""
    if "node" in address:
        return str(address["node"]).split(";s=Machine.", 1)[1].replace(".", "/")
    return "/".join(address["path"][1:])


def expected_values(sim: SimOpcUaServer, profile: str = PROFILE) -> dict[str, Any]:
    """What the profile's points should read now, straight from the server's nodes."""
    p = load_profile(profile, search_path())
    return {point.id: sim.value(sim_name(point.address)) for point in p.points}


def latest_state(c: Collector, device: str) -> dict[str, Any] | None:
    body: dict[str, Any] | None = c.latest(f"/{device}/state")
    return body


def all_good(c: Collector, device: str) -> dict[str, Any] | None:
    """The device's retained state when it is available with every point good."""
    s = latest_state(c, device)
    if s and s["available"] and all(p["q"] == "good" for p in s["points"].values()):
        return s
    return None


def current_values(c: Collector, device: str) -> dict[str, Any]:
    """What a consumer knows: the newest state snapshot overlaid with later data messages."""
    values: dict[str, Any] = {}
    last_state_time = None
    for m in c.on(f"/{device}/state"):
        values = {k: v["v"] for k, v in m.json()["points"].items() if v["q"] != "bad"}
        last_state_time = m.received
    if last_state_time is None:
        return {}
    for m in c.on(f"/{device}/data"):
        if m.received >= last_state_time:
            values.update(m.json()["values"])
    return values


def tolerances(profile: str = PROFILE) -> dict[str, float]:
    """How far a published value may lag the server's: the profile's deadband (cellctl)
    or the address's server deadband, whichever is larger."""
    p = load_profile(profile, search_path())
    out: dict[str, float] = {}
    for point in p.points:
        ours = point.deadband.absolute if point.deadband and point.deadband.absolute else 0.0
        server = (point.address.get("deadband") or {}).get("absolute", 0.0)
        if ours or server:
            out[point.id] = max(ours, server) + 1e-9
    return out


_TOLERANCE = tolerances()


def same(a: Any, b: Any, tolerance: float = 1e-9) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=tolerance)
    return bool(a == b)


def mismatches(got: dict[str, Any], want: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {
        k: (got.get(k), v)
        for k, v in want.items()
        if k not in got or not same(got[k], v, _TOLERANCE.get(k, 1e-9))
    }


def device_ctx(
    url: str,
    profile: str = PROFILE,
    *,
    connection: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    timeout: float = 1.0,
    device_id: str = "dev",
) -> DeviceContext:
    """A DeviceContext for the driver alone (no daemon), from a shipped profile."""
    return device_context(
        "opcua",
        profile,
        {"endpoint": url, **(connection or {})},
        {"publishing_interval": 0.05, "keepalive": 0.5, **(options or {})},
        device_id=device_id,
        timeout=timeout,
    )


async def first_readings(device: Any, n: int = 1, timeout: float = 10.0) -> list[Reading]:
    """Subscribe until `n` readings arrived, then stop the subscription."""
    readings: list[Reading] = []
    task = asyncio.create_task(device.subscribe(readings.append), name="test-subscribe")
    try:
        await wait_until(lambda: len(readings) >= n or task.done(), timeout, f"{n} reading(s)")
        if task.done():
            task.result()  # raises what ended it
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return readings
