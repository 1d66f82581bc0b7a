"""Live reload (issue 12 item 3) against a real broker and simulated devices: an invalid
config is refused and the running one stays; added devices start, removed ones are
published as removed (retained state cleared, an event, Sparkplug DDEATH), changed ones
restart, and unchanged ones keep their session and publish with no gap; the manifest
follows every reload. Also through SIGHUP on a real `cellctl run` and `cellctl reload`."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, modbus_device, root_topic, running_daemon, wait_until, write_config
from cellctl.testing.sparkplug import Capture, check_node

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def meters() -> AsyncIterator[int]:
    async with SimModbusServer(
        {1: "energy-meter", 2: "energy-meter", 3: "energy-meter"}, tick=0.05, seed=5
    ) as sim:
        yield await sim.serve_tcp()


@pytest.fixture
def collector(broker: Mosquitto, unique: str) -> Iterator[Collector]:
    c = Collector(broker.port, f"{root_topic(unique)}/#")
    yield c
    c.close()


def devices(port: int, *units: tuple[str, int], **extra: Any) -> list[dict[str, Any]]:
    return [
        modbus_device(name, "sim-energy-meter", port, unit, poll_interval=0.05, **extra)
        for name, unit in units
    ]


def rewrite(path: Path, **changes: Any) -> None:
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config.update(changes)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")


def seqs(c: Collector, device: str) -> list[int]:
    return [m.json()["seq"] for m in c.on(f"/{device}/data")]


async def test_reload_adds_removes_and_leaves_unchanged_devices_alone(
    broker: Mosquitto, meters: int, collector: Collector, unique: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, broker.port, devices(meters, ("a", 1), ("b", 2)), cell=unique)
    async with running_daemon(config) as daemon:
        await collector.until(
            lambda _m: len(seqs(collector, "a")) >= 5 and seqs(collector, "b"), what="a and b"
        )
        runner_a = daemon.cell.runner("a")
        rewrite(config, devices=devices(meters, ("a", 1), ("c", 3)))
        assert await daemon.reload()
        mark = len(seqs(collector, "a"))
        await collector.until(lambda _m: len(seqs(collector, "c")) >= 3, what="the added device publishing")
        await collector.until(lambda _m: len(seqs(collector, "a")) >= mark + 10, what="a publishing on")
        assert daemon.cell.runner("a") is runner_a, "an unchanged device keeps its runner and session"
        assert daemon.cell.runner("b") is None
        await collector.until(
            lambda _m: [m for m in collector.on("/b/state") if m.payload == b""],
            what="b's retained state cleared",
        )
        events = [m.json() for m in collector.on("/events")]
        assert {"event": "device_removed", "device": "b"}.items() <= next(
            e for e in events if e.get("event") == "device_removed"
        ).items()
        manifest = await collector.until(
            lambda _m: (
                (ms := collector.on("/manifest"))
                and [d["id"] for d in ms[-1].json()["devices"]] == ["a", "c"]
                and ms[-1].json()
            ),
            what="the manifest after the reload",
        )
    a = seqs(collector, "a")
    assert a == list(range(a[0], a[0] + len(a))), "no message of a lost across the reload"
    times = [m.received for m in collector.on("/a/data")]
    assert max(b - t for t, b in itertools.pairwise(times)) < 2.0, "no gap in a's data (polled every 50 ms)"
    assert manifest["devices"][1]["joined_ts"] > manifest["devices"][0]["joined_ts"]
    assert daemon.reloads == 1


async def test_an_invalid_config_is_refused_and_the_running_config_stays(  # noqa: PLR0917
    broker: Mosquitto,
    meters: int,
    collector: Collector,
    unique: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, broker.port, devices(meters, ("a", 1)), cell=unique)
    async with running_daemon(config) as daemon:
        await collector.until(lambda _m: len(seqs(collector, "a")) >= 3, what="a publishing")
        runner_a = daemon.cell.runner("a")
        rewrite(
            config, devices=[*devices(meters, ("a", 1)), {"id": "x", "driver": "modbus", "profile": "nope"}]
        )
        assert not await daemon.reload()
        mark = len(seqs(collector, "a"))
        await collector.until(lambda _m: len(seqs(collector, "a")) >= mark + 5, what="a publishing on")
        assert daemon.cell.runner("a") is runner_a
        assert daemon.reloads == 0
    log = capsys.readouterr().out
    assert log.count("reload_refused") == 1
    assert "profile 'nope' not found" in log


async def test_a_new_backbone_and_identity_restart_the_sessions_cleanly(
    broker: Mosquitto, broker_fresh: Mosquitto, meters: int, unique: str, tmp_path: Path
) -> None:
    """Issue 12 item 3: backbone or identity changes reconnect the session (new births)."""
    config = write_config(tmp_path, broker.port, devices(meters, ("a", 1)), cell=unique)
    first = Collector(broker.port, f"{root_topic(unique)}/#")
    second = Collector(broker_fresh.port, f"{root_topic(unique + '-b')}/#")
    try:
        async with running_daemon(config) as daemon:
            await first.until(lambda _m: len(first.on("/a/data")) >= 3, what="a on the first broker")
            backbone = yaml.safe_load(config.read_text(encoding="utf-8"))["backbone"]
            identity = yaml.safe_load(config.read_text(encoding="utf-8"))["identity"]
            rewrite(
                config,
                backbone={**backbone, "port": broker_fresh.port},
                identity={**identity, "cell": unique + "-b"},
            )
            assert await daemon.reload()
            await second.until(
                lambda _m: len(second.on("/a/data")) >= 3, timeout=20, what="a on the new broker"
            )
            await second.until(
                lambda _m: [m for m in second.on("/status") if m.json() == {"status": "online"}],
                what="online there",
            )
            assert not daemon.stop.is_set()
        offline = [m.json() for m in first.on("/status") if m.payload]
        assert offline[-1] == {"status": "offline", "reason": "shutdown"}, "a clean goodbye on the old broker"
    finally:
        first.close()
        second.close()


async def test_a_changed_device_restarts_and_sparkplug_says_removed_and_added(
    broker: Mosquitto, meters: int, unique: str, tmp_path: Path
) -> None:
    group, edge = "test-lab-a1", f"l1-{unique}"
    config = write_config(
        tmp_path,
        broker.port,
        devices(meters, ("a", 1), ("b", 2)),
        cell=unique,
        publish={"formats": ["sparkplug"]},
    )
    cap = Capture(broker.port, f"spBv1.0/{group}/#")
    try:
        async with running_daemon(config) as daemon:
            await cap.until(
                lambda m: {x.device for x in m if x.kind == "DDATA"} >= {"a", "b"}, what="a and b DDATA"
            )
            runner_a = daemon.cell.runner("a")
            rewrite(config, devices=[modbus_device("a", "sim-energy-meter", meters, 1, poll_interval=0.1)])
            assert await daemon.reload()
            await cap.until(
                lambda m: [x for x in m if x.kind == "DDEATH" and x.device == "b"], what="b's DDEATH"
            )
            await cap.until(
                lambda m: len([x for x in m if x.kind == "DBIRTH" and x.device == "a"]) >= 2,
                what="a birthed again",
            )
            assert daemon.cell.runner("a") is not runner_a, "a changed device restarts"
            msgs = cap.snapshot()
    finally:
        cap.close()
    check_node(msgs, group, edge)
    after_death = msgs[next(i for i, m in enumerate(msgs) if m.kind == "DDEATH" and m.device == "b") :]
    assert not [m for m in after_death if m.kind == "DDATA" and m.device == "b"], (
        "no data of a removed device"
    )


def test_sighup_and_cellctl_reload_reach_a_real_daemon(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    """`cellctl reload` sends SIGHUP to the daemon of that config (found by its pid file)."""
    sim_proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cellctl_sim.modbus",
            "--tcp",
            "127.0.0.1:0",
            "--unit",
            "1=energy-meter",
            "--unit",
            "2=energy-meter",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert sim_proc.stdout is not None
        line = sim_proc.stdout.readline()
        port = int(line.split("127.0.0.1:")[1].split()[0])
        config = write_config(tmp_path, broker.port, devices(port, ("a", 1)), cell=unique)
        c = Collector(broker.port, f"{root_topic(unique)}/#")
        daemon = subprocess.Popen([sys.executable, "-m", "cellctl.cli.main", "run", str(config)])
        try:
            wait_until(lambda: len(c.on("/a/data")) >= 3, timeout=20, what="a publishing")
            rewrite(config, devices=devices(port, ("a", 1), ("b", 2)))
            done = subprocess.run(
                [sys.executable, "-m", "cellctl.cli.main", "reload", str(config), "--json"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert f'"pid":{daemon.pid}' in done.stdout
            wait_until(lambda: len(c.on("/b/data")) >= 3, timeout=20, what="b added by the reload")
            os.kill(daemon.pid, signal.SIGTERM)
            assert daemon.wait(20) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(5)
            c.close()
        gone = subprocess.run(
            [sys.executable, "-m", "cellctl.cli.main", "reload", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert gone.returncode == 1
        assert "no cellctl daemon is running" in gone.stderr
    finally:
        sim_proc.send_signal(signal.SIGINT)
        try:
            sim_proc.wait(10)
        except subprocess.TimeoutExpired:
            sim_proc.kill()
        time.sleep(0)
