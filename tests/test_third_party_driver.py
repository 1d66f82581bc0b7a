"""docs/writing-a-driver.md, proven: the guide's files make a driver distribution that
installs with pip and works with `cellctl check` and `cellctl run`, with no change to the
core. The distribution is installed with pip into a folder of its own that the commands
see on PYTHONPATH: the running environment stays as it was for tests running beside it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from cellctl.testing import Collector, Mosquitto, root_topic, write_config

pytestmark = pytest.mark.timeout(300)

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "writing-a-driver.md"
DISTRIBUTION = "cellctl-memdev"
BLOCK = re.compile(r"^```[a-z]*\n# file: (?P<path>\S+)\n(?P<body>.*?)^```$", re.S | re.M)
CELLCTL = [sys.executable, "-m", "cellctl.cli.main"]


def guide_files() -> dict[str, str]:
    """Every code block of the guide that starts with `# file: <path>`."""
    return {m["path"]: m["body"] for m in BLOCK.finditer(GUIDE.read_text(encoding="utf-8"))}


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


class Installed(NamedTuple):
    root: Path  # the distribution's sources, as the guide writes them
    env: dict[str, str]  # an environment whose Python sees it installed


@pytest.fixture(scope="module")
def memdev(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The guide's distribution, written out and installed (not editable) for this module."""
    base = tmp_path_factory.mktemp("guide")
    root = base / DISTRIBUTION
    for rel, body in guide_files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    site = base / "site"
    installed = pip("install", "--no-deps", "--no-build-isolation", "--target", str(site), str(root))
    assert installed.returncode == 0, installed.stderr
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return Installed(root, {**os.environ, "PYTHONPATH": path})


def test_the_guide_has_every_file_of_a_distribution() -> None:
    assert set(guide_files()) == {
        "pyproject.toml",
        "cellctl_memdev/__init__.py",
        "cellctl_memdev/plugin.py",
        "cellctl_memdev/profiles/__init__.py",
        "cellctl_memdev/profiles/memdev-counter.yaml",
        "tests/test_memdev.py",
    }


def test_check_finds_the_driver_and_its_profile(memdev: Installed, tmp_path: Path) -> None:
    device = {"id": "counter-1", "driver": "memdev", "profile": "memdev-counter", "connection": {"device": "b1"}}
    config = write_config(tmp_path, 1883, [device], cell="guide")
    result = subprocess.run(
        [*CELLCTL, "check", "--json", str(config)], capture_output=True, text=True, timeout=60, check=False,
        env=memdev.env,
    )
    assert result.returncode == 0, result.stderr
    assert "memdev-counter" in result.stdout
    assert "cellctl_memdev/profiles/memdev-counter.yaml" in result.stdout
    listed = subprocess.run(
        [*CELLCTL, "profiles", "list"], capture_output=True, text=True, timeout=60, check=False,
        env={**memdev.env, "COLUMNS": "300"},
    )
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "memdev-counter" in line)
    assert DISTRIBUTION in row


def test_a_bad_connection_is_a_config_error(memdev: Installed, tmp_path: Path) -> None:
    device = {"id": "counter-1", "driver": "memdev", "profile": "memdev-counter", "connection": {"port": 1}}
    config = write_config(tmp_path, 1883, [device], cell="guide")
    result = subprocess.run(
        [*CELLCTL, "check", str(config)], capture_output=True, text=True, timeout=60, check=False, env=memdev.env
    )
    assert result.returncode == 2, result.stdout
    assert "devices[0].connection" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_guides_own_tests_pass_with_the_test_kit(memdev: Installed) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=memdev.root, capture_output=True, text=True, timeout=120, check=False, env=memdev.env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_run_publishes_the_devices_values(memdev: Installed, tmp_path: Path, broker: Mosquitto, unique: str) -> None:
    device = {
        "id": "counter-1",
        "driver": "memdev",
        "profile": "memdev-counter",
        "connection": {"device": "bench-1"},
        "poll_interval": "50ms",
    }
    config = write_config(tmp_path, broker.port, [device], cell=unique)
    collector = Collector(broker.port, f"{root_topic(unique)}/#")
    process = subprocess.Popen([*CELLCTL, "--log-format", "json", "run", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=memdev.env)
    try:
        state = collector.wait_for(
            lambda ms: next(
                (m.json() for m in ms if m.topic.endswith("/counter-1/state") and m.json().get("available")),
                None,
            ),
            timeout=30,
            what="the device's state",
        )
        assert state["points"]["label"]["v"] == "bench-1"
        assert state["points"]["label"]["q"] == "good"
        counts = collector.wait_for(
            lambda ms: (
                seen
                if len(seen := [m.json()["values"]["count"] for m in ms
                                if m.topic.endswith("/counter-1/data") and "count" in m.json()["values"]]) >= 3
                else None
            ),
            timeout=30,
            what="three counts",
        )
        assert counts == sorted(counts)
        assert len(set(counts)) == len(counts)
    finally:
        collector.close()
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate(timeout=10)
    assert process.returncode == 0, out.decode(errors="replace")[-2000:]
