"""Recovery, the promise gateways break: the server restarts (with its namespaces
renumbered, even), stalls, or lacks a node, and the daemon copes without a restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cellctl_sim.opcua import NAMESPACE, SimOpcUaServer
from opcua_testutil import all_good, current_values, expected_values, latest_state, mismatches, opcua_device

from cellctl.config.profiles import find_profile, search_path
from cellctl.testing import Collector, Mosquitto, running_daemon, write_config

pytestmark = pytest.mark.timeout(90)


def went_down_after(c: Collector, device: str, since: float) -> dict[str, Any] | None:
    """The first data message after `since` saying the device is not available."""
    for m in c.on(f"/{device}/data"):
        body = m.json()
        if m.received >= since and (body.get("machine") or {}).get("item_state") == "not_available":
            return body
    return None


async def test_server_restart_shows_the_outage_and_data_resumes_without_a_daemon_restart(
    collector: Collector, broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    async with SimOpcUaServer(tick=0.05, seed=2, auto_tick=False, autonomous=False) as sim:
        sim.machine.start_job("J-1")
        config = write_config(tmp_path, broker.port, [opcua_device("mill", sim.url)], cell=unique)
        async with running_daemon(config):
            await collector.until(lambda _m: all_good(collector, "mill"), what="online, every point good")
            port = sim.port
            restarted_at = time.time()
            await sim.restart(down_for=0.5)
            assert sim.port == port
            down = await collector.until(
                lambda _m: went_down_after(collector, "mill", restarted_at), what="the outage published"
            )
            assert {q["q"] for q in down["quality"].values()} == {"bad"}
            assert len(down["quality"]) == len(expected_values(sim))  # every point, not some
            await collector.until(
                lambda _m: (s := all_good(collector, "mill")) and s["ts"] / 1000 > restarted_at,
                timeout=30,
                what="available again with every point good",
            )
            sim.machine.force_state("Held")
            await sim.step()
            want = expected_values(sim)
            await collector.until(
                lambda _m: not mismatches(current_values(collector, "mill"), want),
                what="values after the restart equal the server's",
            )
        assert sim.starts == 2


async def test_namespace_index_change_between_restarts_is_handled(
    collector: Collector, broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    async with SimOpcUaServer(tick=0.05, seed=3, auto_tick=False, autonomous=False) as sim:
        config = write_config(tmp_path, broker.port, [opcua_device("mill", sim.url)], cell=unique)
        async with running_daemon(config):
            await collector.until(lambda _m: all_good(collector, "mill"), what="online, every point good")
            before = sim.ns
            restarted_at = time.time()
            await sim.restart(namespace_shift=3)
            assert sim.ns == before + 3, "the machine's namespace moved to another index"
            await collector.until(
                lambda _m: (s := all_good(collector, "mill")) and s["ts"] / 1000 > restarted_at + 0.2,
                timeout=30,
                what="every point good again under the new namespace index",
            )
            sim.machine.start_job("J-2")
            await sim.step(30)
            want = expected_values(sim)
            await collector.until(
                lambda _m: not mismatches(current_values(collector, "mill"), want),
                what=f"values read through namespace {NAMESPACE} at its new index equal the server's",
            )


async def test_a_stalled_server_trips_the_keepalive_watchdog_and_recovers(
    collector: Collector, broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    async with SimOpcUaServer(tick=0.05, seed=4) as sim:
        config = write_config(tmp_path, broker.port, [opcua_device("mill", sim.url)], cell=unique)
        async with running_daemon(config):
            await collector.until(lambda _m: all_good(collector, "mill"), what="online")
            stalled_at = time.time()
            sim.stall()
            await collector.until(
                lambda _m: went_down_after(collector, "mill", stalled_at), what="the stall detected"
            )
            # keep-alive 0.5 s + timeout 1 s (+ publishing interval), plus slack for a loaded machine
            detected = went_down_after(collector, "mill", stalled_at)
            assert detected is not None
            assert detected["ts"] / 1000 - stalled_at < 1.55 + 2.0
            state = await collector.until(
                lambda _m: (s := latest_state(collector, "mill")) and not s["available"] and s,
                what="retained state says unavailable",
            )
            assert state["reason"]
            sim.resume()
            resumed_at = time.time()
            await collector.until(
                lambda _m: (s := all_good(collector, "mill")) and s["ts"] / 1000 > resumed_at,
                timeout=30,
                what="recovered after the stall",
            )


def _profile_with_missing_node(tmp_path: Path) -> Path:
    profile = yaml.safe_load((find_profile("sim-opcua-machine", search_path()) or Path("missing")).read_text())
    profile["name"] = "sim-opcua-machine-plus"
    profile["points"].append(
        {
            "id": "ghost",
            "type": "float",
            "description": "a node the server does not have",
            "address": {"node": f"nsu={NAMESPACE};s=Machine.NoSuchNode"},
        }
    )
    profile["points"].append(
        {
            "id": "ghost_path",
            "type": "float",
            "address": {"path": ["Machine", "Nowhere"], "namespace": NAMESPACE},
        }
    )
    profile["points"].append(
        {"id": "foreign", "type": "int", "address": {"node": "nsu=urn:not-on-this-server;i=1"}}
    )
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "sim-opcua-machine-plus.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


async def test_a_missing_node_marks_only_that_point_bad(
    machine: SimOpcUaServer, collector: Collector, broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    folder = _profile_with_missing_node(tmp_path)
    config = write_config(
        tmp_path,
        broker.port,
        [opcua_device("mill", machine.url, "sim-opcua-machine-plus")],
        cell=unique,
        profile_dirs=[str(folder)],
    )
    async with running_daemon(config):
        state = await collector.until(
            lambda _m: (
                (s := latest_state(collector, "mill"))
                and s["available"]
                and all(p.get("reason") != "not yet read" for p in s["points"].values())
                and s
            ),
            what="online with every point read or found missing",
        )
        points = state["points"]
        assert points["ghost"]["q"] == "bad"
        assert "BadNodeIdUnknown" in points["ghost"]["reason"]
        assert "Machine.NoSuchNode" in points["ghost"]["reason"]
        assert points["ghost_path"]["q"] == "bad"
        assert "not found" in points["ghost_path"]["reason"]
        assert points["foreign"]["q"] == "bad"
        assert "urn:not-on-this-server" in points["foreign"]["reason"]
        others = {k: p["q"] for k, p in points.items() if k not in ("ghost", "ghost_path", "foreign")}
        assert set(others.values()) == {"good"}, others
        # the rest of the device keeps working
        machine.machine.start_job("J-3")
        await machine.step(20)
        want = expected_values(machine)
        await collector.until(
            lambda _m: not mismatches(current_values(collector, "mill"), want),
            what="the other points keep following the server",
        )
