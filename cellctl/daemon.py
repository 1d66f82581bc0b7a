"""The daemon shell: wire config, engine, outbox and publishers together; run until SIGINT
or SIGTERM; shut down cleanly and within bounded time.

    engine/     runners ──DeviceUpdate──▶ FanOut
    encode/       ──▶ UnsEncoder ──────┐                     ┌─▶ UnsDelivery   (session "uns")
                  └─▶ SparkplugEncoder ┴▶ outbox/ OutboxWriter ┴─▶ SparkplugNode (session "sparkplug")
                                          (SQLite WAL)   deliver/ on_stored, per format
    commands/   <root>/cmd/<device> (UnsCommands) ─┐
                NCMD/DCMD (SparkplugCommands) ─────┤
                job folders (JobFolder) ───────────┴▶ CommandRouter (policy, one worker per
                device, interlocks, read-back) ──▶ runner.write / Caller / JobControl
                every outcome ──▶ Audit ──▶ log, <root>/events (outbox), Commands/* node metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import structlog

from cellctl import __version__, systemd
from cellctl.commands.audit import Audit
from cellctl.commands.folder import JobFolder, folder_specs
from cellctl.commands.router import CommandRouter
from cellctl.commands.uns import UnsCommands
from cellctl.config.loader import CompiledCell, CompiledDevice, load_cell
from cellctl.deliver.delivery import Delivery
from cellctl.deliver.mqtt import MqttSession
from cellctl.deliver.report import OutboxReporter
from cellctl.deliver.uns import UnsDelivery
from cellctl.encode.fanout import FanOut
from cellctl.encode.uns import UnsEncoder, cell_root
from cellctl.engine.cell import Cell
from cellctl.engine.runner import now_ms
from cellctl.errors import ConfigError
from cellctl.manifest import build_manifest
from cellctl.outbox import DropEvent, Outbox, OutboxError, OutboxWriter, Record
from cellctl.reload import diff_cells
from cellctl.statefile import StateFileError

if TYPE_CHECKING:
    from cellctl.contract.payloads import CommandEventJson
    from cellctl.deliver.sparkplug import SparkplugNode
    from cellctl.observe.server import ObserveServer
    from cellctl.status.server import StatusServer

log = structlog.get_logger("cellctl.daemon")

SHUTDOWN_TIMEOUT = 5.0
PID_FILE = "cellctl.pid"  # in the state dir: `cellctl reload` finds the daemon by it
DRAIN_TIMEOUT = 2.0


def default_client_id(compiled: CompiledCell) -> str:
    i = compiled.config.identity
    return "-".join(["cellctl", i.enterprise, i.site, i.area, i.line, i.cell])[:128]


def state_dir(compiled: CompiledCell) -> Path:
    """`state_dir`, relative to the config file when relative; created if missing."""
    path = compiled.config.state_dir
    if not path.is_absolute():
        path = compiled.path.parent / path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            [
                f"{compiled.path}: state_dir: cannot create {str(path)!r}: {exc.strerror}"
                " (set state_dir, or run under systemd with StateDirectory=cellctl)"
            ]
        ) from None
    return path


class _Dispatch:
    """The writer's on_stored: each committed record to the delivery of its format."""

    def __init__(self, deliveries: Sequence[Delivery]) -> None:
        self.by_fmt: dict[str, Delivery] = {d.fmt: d for d in deliveries}
        self.only = deliveries[0] if len(deliveries) == 1 else None

    def __call__(self, records: Sequence[Record], ids: Sequence[int]) -> None:
        if self.only is not None:
            self.only.on_stored(records, ids)
            return
        split: dict[str, tuple[list[Record], list[int]]] = {f: ([], []) for f in self.by_fmt}
        for rec, oid in zip(records, ids, strict=True):
            part = split.get(rec.fmt)
            if part is not None:
                part[0].append(rec)
                part[1].append(oid)
        for fmt, (recs, oids) in split.items():
            if recs:
                self.by_fmt[fmt].on_stored(recs, oids)


class Daemon:
    """One running cell. `stop` ends it; `started` is set once devices are running.

    The outbox is opened in `run()`: a locked or corrupt outbox raises ConfigError
    (exit code 2) before anything starts."""

    def __init__(self, compiled: CompiledCell) -> None:
        cfg = compiled.config
        self.compiled = compiled
        self.stop = asyncio.Event()
        self.started = asyncio.Event()
        self.reloads = 0
        self._restart_with: CompiledCell | None = None
        self._previous = compiled
        self._terminating = False
        self.observer: ObserveServer | None = None
        self._reload_tasks: set[asyncio.Task[bool]] = set()
        self._reload_lock = asyncio.Lock()
        started_ms = now_ms()
        self.joined: dict[str, int] = {d.config.id: started_ms for d in compiled.devices}
        self.root = cell_root(cfg.publish.prefix, cfg.identity)
        self.state_dir = state_dir(compiled)
        self.outbox = self._open_outbox()
        try:
            self._build()
        except BaseException:
            self.outbox.close()
            raise

    def _open_outbox(self) -> Outbox:
        ob = self.compiled.config.outbox
        try:
            return Outbox(
                self.state_dir / "outbox.sqlite", max_bytes=ob.max_bytes, max_age_s=ob.max_age, fsync=ob.fsync
            )
        except OutboxError as exc:
            raise ConfigError([f"{self.compiled.path}: state_dir: {exc}"]) from None

    def _build(self) -> None:
        cfg = self.compiled.config
        formats = cfg.publish.formats
        self.fanout = FanOut()
        self.cell = Cell(self.compiled, self.fanout, state_dir=self.state_dir)
        self.audit = Audit()
        self.folder_specs = folder_specs(self.compiled)
        self.router = CommandRouter(
            self.compiled, self.cell.runner, self.audit, folders={d: f.running for d, f in self.folder_specs.items()}
        )
        self.job_folders = [JobFolder(f, self.router.submit, self.cell.runner) for f in self.folder_specs.values()]
        self.reporter: OutboxReporter | None = None
        self._removed: set[str] = set()  # devices removed by a reload (their retained state is cleared)
        self.writer = OutboxWriter(
            self.outbox,
            on_drop=self._on_drop,
            min_interval_s=cfg.outbox.commit_interval,
            rounds=self.cell.rounds if cfg.outbox.commit_gather == "round" else None,
        )
        client_id = cfg.backbone.client_id or default_client_id(self.compiled)
        replay_rate = cfg.outbox.replay_rate
        self.uns: UnsDelivery | None = None
        self.node: SparkplugNode | None = None
        deliveries: list[Delivery] = []
        if "uns" in formats:
            self.uns = UnsDelivery(
                cfg.backbone,
                client_id=client_id,
                writer=self.writer,
                replay_rate=replay_rate,
                root=self.root,
                on_live=self._uns_live,
            )
            self.publisher: UnsEncoder | None = UnsEncoder(
                self.writer, self.root, cfg.publish, cfg.backbone.qos
            )
            self.fanout.sinks.append(self.publisher)
            deliveries.append(self.uns)
            self.uns.commands = UnsCommands(
                self.root, self.router, self.uns.send_reply, max_program_bytes=cfg.commands.max_program_bytes
            )
            self.audit.sinks.append(self._audit_event)
        else:
            self.publisher = None
        if "sparkplug" in formats:
            # imported only when configured: the codec pulls in protobuf (start-up time)
            from cellctl.deliver.sparkplug import SparkplugNode
            from cellctl.sparkplug.topics import case_collisions

            spb_client = cfg.sparkplug.client_id or (
                client_id if formats == ["sparkplug"] else f"{client_id}-spb"[:128]
            )
            try:
                self.node = SparkplugNode(
                    cfg.backbone,
                    cfg.sparkplug,
                    group_id=cfg.sparkplug_group_id,
                    edge_node_id=cfg.sparkplug_edge_node_id,
                    client_id=spb_client,
                    writer=self.writer,
                    replay_rate=replay_rate,
                    devices=self.compiled.devices,
                    state_dir=self.state_dir,
                    shift_oee=bool(cfg.oee.shifts),
                )
            except StateFileError as exc:
                raise ConfigError([f"{self.compiled.path}: state_dir: {exc}"]) from None
            self.node.attach(self.cell.snapshots, self.router, self.audit)
            self.fanout.sinks.append(self.node.encoder)
            deliveries.append(self.node)
            for a, b in case_collisions([d.config.id for d in self.compiled.devices]):
                log.warning("sparkplug_device_ids_differ_only_by_case", first=a, second=b)
        self.deliveries = deliveries
        self.writer.on_stored = _Dispatch(deliveries)
        self.reporter = OutboxReporter(self.writer, uns=self.uns, node=self.node)
        self.status_page: StatusServer | None = None
        if cfg.status_page is not None:  # the local status page, off unless configured
            from cellctl.status.server import StatusServer

            self.status_page = StatusServer(self, cfg.status_page)
            self.fanout.sinks.append(self.status_page.feed)

    def _audit_event(self, event: CommandEventJson) -> None:
        """Every command outcome, durable: through the outbox to `<root>/events`."""
        assert self.uns is not None
        self.writer.put(Record("cmd", self.uns.events_topic, orjson.dumps(event), 1, False, "uns"))

    def _uns_live(self) -> None:
        """The UNS session is live: retained messages of current state go out again (also
        the manifest, and the clearing of devices removed while the broker was away)."""
        self.cell.republish_all()
        if self.publisher is not None:
            self.publisher.republish_points(self.cell.snapshots(), now_ms())
            for device_id in self._removed:
                self.publisher.clear_retained(device_id)
        self._publish_manifest()

    def _publish_manifest(self) -> None:
        if self.publisher is not None:
            self.publisher.manifest(build_manifest(self.compiled, self.joined, now_ms()))

    # -- reload --------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config and its profiles; refuse an invalid one (the running config
        stays); otherwise start added devices, stop removed ones (published as removed),
        restart changed ones, and leave the others untouched. True when applied."""
        async with self._reload_lock:
            systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                return await self._reload()
            except Exception as exc:  # a reload never ends the daemon
                log.exception("reload_failed", config=str(self.compiled.path), error=repr(exc))
                return False
            finally:
                systemd.notify("READY=1")

    async def _reload(self) -> bool:
        path = self.compiled.path
        try:
            new = await asyncio.to_thread(load_cell, path)
        except ConfigError as exc:
            log.warning("reload_refused", config=str(path), problems=exc.problems, kept="the running config")
            return False
        except Exception as exc:  # a reload never ends the daemon
            log.exception("reload_failed", config=str(path), error=repr(exc), kept="the running config")
            return False
        diff = diff_cells(self.compiled, new)
        # a job folder moved or added by a device's options (the deprecated job_dir)
        folders = [] if folder_specs(new) == self.folder_specs else ["job folders"]
        if diff.other_sections or folders:
            # the sessions (and possibly the outbox) are built on these: start them anew,
            # cleanly (status offline/online, NDEATH and new births)
            log.info("reload_restarting_sessions", sections=[*diff.other_sections, *folders])
            self._restart_with = new
            self.reloads += 1
            self.stop.set()
            return True
        ts = now_ms()
        for device_id in diff.removed:
            await self._remove_device(device_id, announce=True)
        for device in diff.changed:
            await self._remove_device(device.config.id, announce=False)
            self._add_device(device, ts)
        for device in diff.added:
            self._add_device(device, ts)
        self.compiled = new
        self.cell.compiled = new
        self.router.update_devices(new)
        self.reloads += 1
        self._publish_manifest()
        log.info(
            "reloaded",
            added=[d.config.id for d in diff.added],
            removed=diff.removed,
            changed=[d.config.id for d in diff.changed],
            unchanged=len(diff.unchanged),
        )
        return True

    async def _remove_device(self, device_id: str, *, announce: bool) -> None:
        runner = await self.cell.remove(device_id)
        if runner is None:
            return
        if announce:
            self.fanout.device_removed(device_id)
            self._removed.add(device_id)
            self.joined.pop(device_id, None)
        elif self.node is not None:
            self.node.encoder.device_removed(device_id)  # DDEATH; the new version births again
        if self.node is not None:
            self.node.remove_device(device_id)

    def _add_device(self, device: CompiledDevice, ts: int) -> None:
        device_id = device.config.id
        self._removed.discard(device_id)
        self.joined.setdefault(device_id, ts)
        if self.node is not None:
            self.node.add_device(device)
        self.cell.add(device)

    def _on_drop(self, event: DropEvent) -> None:
        if self.reporter is not None:
            self.reporter.on_drop(event)
        if self.status_page is not None:
            self.status_page.on_drop(event.reason, event.count)

    @property
    def session(self) -> MqttSession:
        """The first format's MQTT session (tests and the demo look at it)."""
        return self.deliveries[0].session

    async def _watchdog(self, interval: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.terminate)
            loop.add_signal_handler(signal.SIGHUP, self._reload_soon)
        pid_file = self.state_dir / PID_FILE
        with contextlib.suppress(OSError):
            pid_file.write_text(f"{os.getpid()}\n", encoding="utf-8")
        try:
            while True:
                await self._run_once()
                new, self._restart_with = self._restart_with, None
                if new is None or self._terminating:
                    break
                try:
                    self._rebuild(new)
                except ConfigError as exc:  # e.g. the new state_dir's outbox cannot be opened
                    log.warning("reload_refused", problems=exc.problems, kept="the previous config")
                    self._rebuild(self._previous)
                self.stop.clear()
        finally:
            with contextlib.suppress(OSError):
                pid_file.unlink()
            if install_signal_handlers:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    with contextlib.suppress(Exception):
                        loop.remove_signal_handler(sig)
            stats = self.outbox.stats()
            self.outbox.close()
            log.info(
                "cellctl_stopped",
                published=sum(d.session.published for d in self.deliveries),
                dropped=stats.dropped_total,
                dropped_by_reason=stats.dropped_by_reason,
                outbox_backlog=stats.messages,
                outbox_commits=self.writer.cycles,
                outbox_committed=self.writer.committed_total,
                **{f"{d.fmt}_{k}": v for d in self.deliveries for k, v in d.stats().items()},
            )

    def terminate(self) -> None:
        """SIGINT/SIGTERM: stop for good (also in the middle of a session restart)."""
        self._terminating = True
        self.stop.set()

    def _rebuild(self, new: CompiledCell) -> None:
        """After a reload that changed more than the devices: the same outbox (or the new
        one, if its place or bounds changed) and everything else built anew."""
        old = self._previous = self.compiled
        self.compiled = new
        self.root = cell_root(new.config.publish.prefix, new.config.identity)
        if (state_dir(new), new.config.outbox) != (self.state_dir, old.config.outbox):
            self.outbox.close()
            self.state_dir = state_dir(new)
            self.outbox = self._open_outbox()
        ts = now_ms()
        self.joined = {d.config.id: self.joined.get(d.config.id, ts) for d in new.devices}
        self._build()

    async def _run_once(self) -> None:
        cfg = self.compiled.config
        stats = self.outbox.stats()
        log.info(
            "cellctl_starting",
            version=__version__,
            config=str(self.compiled.path),
            devices=len(self.compiled.devices),
            broker=f"{cfg.backbone.host}:{cfg.backbone.port}",
            formats=cfg.publish.formats,
            state_dir=str(self.state_dir),
            outbox_backlog=stats.messages,
        )
        async with contextlib.AsyncExitStack() as stack:
            # /metrics and /health (metrics: section), from before the broker is up; the
            # server (prometheus_client, wsgiref) is imported only when configured
            self.observer = None
            if cfg.metrics is not None:
                from cellctl.observe import server as observe

                self.observer = await stack.enter_async_context(observe.serving(self, cfg.metrics))
            for d in self.deliveries:
                await stack.enter_async_context(d.session)
            async with asyncio.TaskGroup() as tg:
                writer_task = tg.create_task(self.writer.run(), name="outbox-writer")
                helpers = [tg.create_task(d.run(), name=f"delivery:{d.fmt}") for d in self.deliveries]
                assert self.reporter is not None
                helpers.append(tg.create_task(self.reporter.run(), name="outbox-report"))
                helpers.append(tg.create_task(self.router.run(), name="command-router"))
                helpers += [tg.create_task(f.run(), name=f"job-folder:{f.spec.device_id}") for f in self.job_folders]
                cell_task = tg.create_task(self.cell.run(self.stop), name="cell")
                if self.status_page is not None:
                    helpers.append(tg.create_task(self.status_page.run(), name="status-page"))
                interval = systemd.watchdog_interval()
                if interval:
                    helpers.append(tg.create_task(self._watchdog(interval), name="watchdog"))
                systemd.notify("READY=1")
                self.started.set()
                await self.stop.wait()
                restarting = self._restart_with is not None
                if not restarting:
                    systemd.notify("STOPPING=1")
                log.info("cellctl_restarting" if restarting else "cellctl_stopping")
                async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                    await cell_task  # devices stopped; their final states are put
                for t in helpers:
                    t.cancel()  # replay stops first: the final live messages settle sooner
                await self._drain()
                for d in self.deliveries:
                    await d.close()
                writer_task.cancel()  # commits what is queued (acks included), bounded

    def _reload_soon(self) -> None:
        """SIGHUP: reload in a task of its own (the signal handler must not wait)."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    async def _drain(self) -> None:
        """Bounded: what was put is committed and handed over, and what was sent is acked,
        so the final states leave the outbox now rather than at the next start."""
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await self.writer.flush()
                for d in self.deliveries:
                    await d.settle()
        except TimeoutError:
            log.info("cellctl_stop_left_in_outbox", backlog=self.writer.backlog)
