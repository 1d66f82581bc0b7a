"""The daemon shell: wire config, engine and publisher together; run until SIGINT or
SIGTERM; shut down cleanly and within bounded time."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from cellctl import __version__, systemd
from cellctl.config.loader import CompiledCell
from cellctl.engine.cell import Cell
from cellctl.publish.mqtt import MqttSession
from cellctl.publish.uns import UnsPublisher, cell_root

log = structlog.get_logger("cellctl.daemon")

SHUTDOWN_TIMEOUT = 5.0


def default_client_id(compiled: CompiledCell) -> str:
    i = compiled.config.identity
    return "-".join(["cellctl", i.enterprise, i.site, i.area, i.line, i.cell])[:128]


class Daemon:
    """One running cell. `stop` ends it; `started` is set once devices are running."""

    def __init__(self, compiled: CompiledCell) -> None:
        cfg = compiled.config
        self.compiled = compiled
        self.stop = asyncio.Event()
        self.started = asyncio.Event()
        root = cell_root(cfg.publish.prefix, cfg.identity)
        self.session = MqttSession(
            cfg.backbone,
            client_id=cfg.backbone.client_id or default_client_id(compiled),
            status_topic=f"{root}/status",
            on_connected=self._on_connected,
        )
        self.publisher = UnsPublisher(self.session, root, cfg.publish, cfg.backbone.qos)
        self.cell = Cell(compiled, self.publisher)

    def _on_connected(self) -> None:
        self.cell.republish_all()

    async def _watchdog(self, interval: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop.set)
        log.info(
            "cellctl_starting",
            version=__version__,
            config=str(self.compiled.path),
            devices=len(self.compiled.devices),
            broker=f"{self.compiled.config.backbone.host}:{self.compiled.config.backbone.port}",
        )
        try:
            async with self.session, asyncio.TaskGroup() as tg:
                cell_task = tg.create_task(self.cell.run(self.stop), name="cell")
                interval = systemd.watchdog_interval()
                watchdog = tg.create_task(self._watchdog(interval), name="watchdog") if interval else None
                systemd.notify("READY=1")
                self.started.set()
                await self.stop.wait()
                systemd.notify("STOPPING=1")
                log.info("cellctl_stopping")
                if watchdog is not None:
                    watchdog.cancel()
                async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                    await cell_task
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(Exception):
                        loop.remove_signal_handler(sig)
            log.info("cellctl_stopped", published=self.session.published, dropped=self.session.dropped)
