"""The shared test kit for cellctl and its drivers: a private broker (the pytest fixtures
`broker`, `broker_fresh`, `unique`, registered through ``pytest11``), an MQTT collector,
`wait_until` in sync and async flavours, a device-context builder, a pty null modem, and
helpers to write a cell config and run the daemon in a test's event loop.

Importable without pytest (only `cellctl.testing.plugin` needs it); the daemon never
imports this package.
"""

from __future__ import annotations

from cellctl.localbroker import Mosquitto, free_port
from cellctl.testing.cell import modbus_device, root_topic, running_daemon, write_config
from cellctl.testing.devices import device_context
from cellctl.testing.mqtt import Collector, Message
from cellctl.testing.pty import PtyBridge
from cellctl.testing.waiting import async_wait_until, wait_until

__all__ = [
    "Collector",
    "Message",
    "Mosquitto",
    "PtyBridge",
    "async_wait_until",
    "device_context",
    "free_port",
    "modbus_device",
    "root_topic",
    "running_daemon",
    "wait_until",
    "write_config",
]
