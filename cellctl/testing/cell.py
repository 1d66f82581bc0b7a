"""Write a cell config for a test and run the daemon in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from cellctl.daemon import Daemon


def write_config(
    tmp_path: Path,
    broker_port: int,
    devices: list[dict[str, Any]],
    *,
    cell: str,
    publish: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write tmp_path/cell.yaml for a broker on 127.0.0.1:`broker_port` with fast timing;
    sections passed as keywords replace the defaults."""
    config = {
        "identity": {"enterprise": "test", "site": "lab", "area": "a1", "line": "l1", "cell": cell},
        "state_dir": str(tmp_path / "state"),
        "outbox": {"fsync": "off"},  # tmpfs semantics are enough here; crash tests set their own
        "backbone": {"host": "127.0.0.1", "port": broker_port, "reconnect_min": 0.2, "reconnect_max": 1},
        "publish": {"prefix": "uns/v1", "state_min_interval": 0.1, **(publish or {})},
        "devices": devices,
    }
    for key, value in extra.items():  # sections given by the test replace the defaults
        config[key] = value
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def modbus_device(device_id: str, profile: str, port: int, unit: int, **extra: Any) -> dict[str, Any]:
    """A Modbus TCP device entry with fast timing (50 ms polls), so outages show quickly."""
    return {
        "id": device_id,
        "driver": "modbus",
        "profile": profile,
        "connection": {"transport": "tcp", "host": "127.0.0.1", "port": port, "unit": unit},
        "poll_interval": 0.05,
        "timeout": 0.5,
        **extra,
    }


def root_topic(cell: str) -> str:
    """The UNS root of a cell written by `write_config`."""
    return f"uns/v1/test/lab/a1/l1/{cell}"


@contextlib.asynccontextmanager
async def running_daemon(config_path: Path) -> AsyncIterator[Daemon]:
    """The daemon for `config_path`, started (and stopped, bounded) in this event loop."""
    from cellctl.config.loader import load_cell
    from cellctl.daemon import Daemon

    daemon = Daemon(load_cell(config_path))
    task = asyncio.create_task(daemon.run(install_signal_handlers=False), name="daemon-under-test")
    try:
        async with asyncio.timeout(10):
            await daemon.started.wait()
        yield daemon
    finally:
        daemon.stop.set()
        async with asyncio.timeout(15):
            await task
