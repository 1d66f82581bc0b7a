"""The cell as a Sparkplug B 3.0 edge node; each device a Sparkplug device.

Session (docs/sparkplug.md has the full picture):
- Every CONNECT carries a Will: NDEATH with the next bdSeq, persisted first (`BdSeqFile`).
- On connect: subscribe NCMD and DCMD (and the primary host's STATE, if configured);
  then, at the current point of the record stream (`Delivery.go_live`), NBIRTH (seq 0,
  the session's bdSeq, `Node Control/Rebirth`, the outbox metrics), one DBIRTH per
  device with every metric, a DDEATH after the DBIRTH of a device that is unavailable,
  and from then on live DDATA; stored DATA is replayed behind it with `is_historical`.
- `seq` is shared by every message but NDEATH and assigned when a message is published:
  stored DATA has none (`with_seq` / `to_historical` complete it).
- A device that becomes unavailable gets a DDEATH, and a DBIRTH when it returns; both
  are placed in the record stream with `OutboxWriter.after_put`, so no DDATA of that
  device can overtake them.
- NCMD `Node Control/Rebirth`: the births again (same bdSeq). DCMD: see commands.py.
- Primary host: births wait for a valid `STATE` online; on a newer offline the node
  publishes NDEATH, disconnects and connects again (spec), and data waits in the outbox.
- Clean stop: NDEATH, then DISCONNECT (MQTT 5: "disconnect with will message").

The engine's output reaches it through the encoder (cellctl/encode/sparkplug.py:
DDATA into the outbox, births and deaths handed here); NCMD/DCMD are validated by
cellctl/commands/sparkplug.py and accepted writes run through cellctl/commands/router.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import structlog

from cellctl.commands.audit import Audit
from cellctl.commands.model import Command, CommandResult, Source, client_declared
from cellctl.commands.policy import Refusal
from cellctl.commands.router import CommandRouter
from cellctl.commands.sparkplug import PointWrite, SparkplugCommands
from cellctl.config.cell import Backbone, SparkplugConfig
from cellctl.config.loader import CompiledDevice
from cellctl.deliver.delivery import Delivery
from cellctl.deliver.mqtt import NO_PROPERTIES, Inbound, Message, PublishRefused
from cellctl.encode.sparkplug import DeviceModel, SparkplugEncoder, device_model, encode_safely
from cellctl.model import DeviceSnapshot
from cellctl.outbox import OutboxStats, OutboxWriter, Record, Stored
from cellctl.sparkplug.codec import (
    REBIRTH_METRIC,
    DataType,
    DecodeError,
    Metric,
    MetricDef,
    MetricTable,
    SeqCounter,
    decode_state,
    encode_data,
    encode_dbirth,
    encode_ddeath,
    encode_nbirth,
    encode_ndeath,
    metric_count,
    to_historical,
    with_seq,
)
from cellctl.sparkplug.state import AliasBook, BdSeqFile
from cellctl.sparkplug.topics import (
    MessageType,
    NodeTopics,
    ParsedStateTopic,
    TopicError,
    parse_topic,
    state_topic,
)

log = structlog.get_logger("cellctl.sparkplug")

# Node metrics in NBIRTH, updated by NDATA (UInt64 counters and gauges).
NODE_METRICS = (
    "Outbox/Messages",
    "Outbox/Bytes",
    "Outbox/Dropped",
    "Commands/Refused",
    "Commands/Done",
    "Commands/Failed",
)
COMMAND_METRICS = {"refused": "Commands/Refused", "done": "Commands/Done", "failed": "Commands/Failed"}
NODE_DATA_INTERVAL = 5.0  # NDATA with the node metrics at most this often
REBIRTH_MIN_INTERVAL = 1.0  # rebirth requests closer than this are coalesced


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class SparkplugNode(Delivery):
    """The edge node's session: births, seq, bdSeq, primary host, node metrics, and the
    dispatch of NCMD/DCMD. Call `attach(snapshots, executor)` before running; the engine
    feeds `encoder`."""

    fmt = "sparkplug"

    def __init__(
        self,
        backbone: Backbone,
        config: SparkplugConfig,
        *,
        group_id: str,
        edge_node_id: str,
        client_id: str,
        writer: OutboxWriter,
        replay_rate: int,
        devices: Sequence[CompiledDevice],
        state_dir: Path,
        shift_oee: bool = False,  # the cell has a shift calendar: OEE/shift/... metrics
    ) -> None:
        super().__init__(backbone, client_id=client_id, writer=writer, replay_rate=replay_rate)
        self.config = config
        self.shift_oee = shift_oee
        self.topics = NodeTopics(group_id, edge_node_id)
        self.bd_datatype = DataType[config.bdseq_datatype]
        self.historical_qos = config.historical_qos
        # QoS 1 for replay means QoS 1 for every message of the node: a broker sends QoS 0
        # at once but queues QoS 1 beyond its in-flight limit, so mixing them would reach
        # subscribers out of seq order (a strict host then asks for a rebirth).
        self.message_qos = config.historical_qos
        self.force_qos = 1 if config.historical_qos == 1 else None
        self.bdseq = BdSeqFile(state_dir / "bdseq")
        self.aliases = AliasBook(state_dir / "aliases.json")
        self.models: dict[str, DeviceModel] = {
            d.config.id: device_model(d, self.aliases, shift_oee=shift_oee) for d in devices
        }
        self.node_table = self.aliases.table(
            AliasBook.NODE, [(name, DataType.UInt64) for name in NODE_METRICS]
        )
        # the rebirth metric is addressed by name (it has no alias); commands may name it
        self.command_table = MetricTable([MetricDef(REBIRTH_METRIC, DataType.Boolean), *self.node_table])
        self.aliases.save()  # before any birth uses them (StateFileError: the daemon exits 2)
        self.router = SparkplugCommands(
            self.command_table, self.models, device_writes=config.device_writes, on_refused=self._refused
        )
        self.encoder = SparkplugEncoder(
            self.models, writer, {d: self.topics.device(MessageType.DDATA, d) for d in self.models}
        )
        self.encoder.births = self
        self.seq = SeqCounter()
        self.bd: int | None = None  # bdSeq of the current session (its Will and NBIRTH)
        self._next_bd: int | None = None
        self._snapshots: Callable[[], Sequence[DeviceSnapshot]] = list
        self.commands: CommandRouter | None = None
        self.audit: Audit | None = None
        self._dcmds = 0
        self._ncmds = 0
        self._birthed: dict[str, bool] = {}  # as published in this session
        self._epoch = 0  # +1 whenever births are scheduled; older device births/deaths are moot
        self._node_values: dict[str, int] = dict.fromkeys(NODE_METRICS, 0)
        self._ndata_at = -NODE_DATA_INTERVAL  # monotonic time of the last NDATA
        self._ndata_later: asyncio.TimerHandle | None = None
        self._rebirth_pending = False  # requested, births not published yet
        self._rebirth_at = -REBIRTH_MIN_INTERVAL  # monotonic time the last rebirth was published
        self._rebirth_later: asyncio.TimerHandle | None = None
        self.rebirths_coalesced = 0
        self._node_sent: dict[str, int] = {}
        self._host_ts: int | None = None  # newest primary host STATE timestamp seen
        self._host_online = False
        self._restart_wanted = asyncio.Event()
        self.births = 0
        self.rebirths = 0
        self.historical_metrics_dropped = 0
        for note, what in ((self.bdseq.recovered, "bdseq"), (self.aliases.recovered, "aliases")):
            if note:
                log.warning("sparkplug_state_recovered", file=what, detail=note)

    def attach(
        self, snapshots: Callable[[], Sequence[DeviceSnapshot]], commands: CommandRouter, audit: Audit
    ) -> None:
        """Where births take the devices' current state from (the engine's cell), where
        validated DCMD writes go, and the audit every command outcome is counted in."""
        self._snapshots = snapshots
        self.commands = commands
        self.audit = audit
        audit.sinks.append(self._command_outcome)

    def _refused(self, reason: str, message: str, where: dict[str, str]) -> None:
        """A refusal of the Sparkplug layer: audited like every other command."""
        if self.commands is None:
            return
        self._dcmds += 1
        source = Source("sparkplug", where.get("topic"))
        bare = Command(f"spb-{self._dcmds}", where.get("device", "node"), "write", {}, source, now_ms())
        self.commands.refuse(bare, Refusal(reason, message))  # type: ignore[arg-type]  # reasons of one vocabulary

    def _command_outcome(self, _event: Mapping[str, object]) -> None:
        if self.audit is None:
            return
        for outcome, name in COMMAND_METRICS.items():
            self._node_values[name] = self.audit.outcomes[outcome]
        self._maybe_ndata()

    def _submit_writes(self, topic: str, writes: Sequence[PointWrite], props: Inbound = NO_PROPERTIES) -> None:
        if self.commands is None:
            return
        self._dcmds += 1
        for i, w in enumerate(writes):
            self.commands.submit(
                Command(
                    f"dcmd-{self._dcmds}-{i}" if len(writes) > 1 else f"dcmd-{self._dcmds}",
                    w.device_id,
                    "write",
                    {"point": w.point_id, "value": w.value},
                    Source("sparkplug", topic, client_declared(props.user_properties)),
                    now_ms(),
                )
            )

    # -- devices added and removed by a reload ---------------------------------------------

    def add_device(self, device: CompiledDevice) -> None:
        """A device added (or replaced) by a reload: its metrics get lasting aliases now;
        its DBIRTH follows its first reading or failure."""
        model = device_model(device, self.aliases, shift_oee=self.shift_oee)
        self.aliases.save()
        self.models[model.id] = model
        self.encoder.add_device(model, self.topics.device(MessageType.DDATA, model.id))

    def remove_device(self, device_id: str) -> None:
        """After the encoder's DDEATH (device_removed): commands for it are refused from now."""
        self.models.pop(device_id, None)
        self._birthed.pop(device_id, None)

    @property
    def encode_fallbacks(self) -> int:
        fallbacks: int = self.encoder.encode_fallbacks
        return fallbacks

    # -- BirthScheduler (from the encoder, at put time) -----------------------------------

    def device_birth(self, device_id: str, ts: int, metrics: list[Metric]) -> None:
        epoch = self._epoch
        self.writer.after_put(lambda: self._device_birth(epoch, device_id, ts, metrics))

    def device_death(self, device_id: str) -> None:
        epoch = self._epoch
        self.writer.after_put(lambda: self._device_death(epoch, device_id))

    def _device_birth(self, epoch: int, device_id: str, ts: int, metrics: list[Metric]) -> None:
        def publish() -> None:
            if epoch != self._epoch or not self.live:
                return  # births since then (or the next session's) say it
            self._publish_dbirth(device_id, ts, metrics)
            self._birthed[device_id] = True

        self.in_order(publish)

    def _device_death(self, epoch: int, device_id: str) -> None:
        def publish() -> None:
            if epoch != self._epoch or not self.live:
                return
            self._publish(
                self.topics.device(MessageType.DDEATH, device_id),
                encode_ddeath(seq=self.seq.next(), timestamp=now_ms()),
            )
            self._birthed[device_id] = False
            log.info("sparkplug_device_death", device=device_id)

        self.in_order(publish)

    # -- births -------------------------------------------------------------------------------

    def _publish(self, topic: str, payload: bytes) -> None:
        """Session-scoped messages: QoS 0 (see `message_qos`), never retained, never stored."""
        # when refused, the connection is going away: the next session births everything again
        with contextlib.suppress(PublishRefused):
            self.session.publish(topic, payload, self.message_qos, False)

    def _publish_dbirth(self, device_id: str, ts: int, metrics: list[Metric]) -> None:
        seq = self.seq.next()
        payload, bad = encode_safely(lambda ms: encode_dbirth(seq=seq, timestamp=ts, metrics=ms), metrics)
        self.encoder.encode_fallbacks += bad
        self._publish(self.topics.device(MessageType.DBIRTH, device_id), payload)

    def _node_metrics(self, ts: int) -> list[Metric]:
        return [
            Metric(
                name=d.name, alias=d.alias, datatype=d.datatype, value=self._node_values[d.name], timestamp=ts
            )
            for d in self.node_table
        ]

    def _capture_births(self) -> tuple[int, list[Metric], list[tuple[str, list[Metric], bool]]]:
        """What the births say, taken now: records put after this point follow them."""
        self._epoch += 1
        ts = now_ms()
        devices = [
            (snap.device_id, self.encoder.birth(snap), snap.available)
            for snap in self._snapshots()
            if snap.device_id in self.models and snap.known  # the others are birthed when first heard of
        ]
        return ts, self._node_metrics(ts), devices

    def _births(self, *, fresh: bool) -> None:
        """Births at this point of the stream, then live (a new connection, or catching up)."""
        ts, node, devices = self._capture_births()
        bd = self.bd
        self.go_live(fresh=fresh, before=lambda: self._publish_births(bd, ts, node, devices))

    def _request_rebirth(self) -> bool:
        """NCMD rebirth, debounced: a request made before the last rebirth's births went out
        is answered by them; one made soon after them waits for REBIRTH_MIN_INTERVAL, and
        every request meanwhile joins it. A burst of requests gives one or two rebirths.
        True when this request joined one already under way."""
        if self._rebirth_pending or self._rebirth_later is not None:
            self.rebirths_coalesced += 1
            return True
        wait = self._rebirth_at + REBIRTH_MIN_INTERVAL - time.monotonic()
        if wait > 0:
            self._rebirth_later = asyncio.get_running_loop().call_later(wait, self._rebirth_now)
            return False
        self._rebirth_now()
        return False

    def _audit_rebirth(self, topic: str, props: Inbound, *, joined: bool) -> None:
        """A rebirth request is a command like any other: one audit event (done), with
        the sender's MQTT 5 user properties as client-declared identity. It never goes
        through the router: it addresses the edge node's session, not a device."""
        if self.audit is None:
            return
        self._ncmds += 1
        ts = now_ms()
        cmd = Command(
            f"ncmd-{self._ncmds}", "node", "rebirth", {},
            Source("sparkplug", topic, client_declared(props.user_properties)), ts,
        )
        if not self.live:
            message = "not connected: the next session births everything anyway"
        elif joined:
            message = "joined the rebirth under way"
        else:
            message = None
        self.audit.accepted()
        self.audit.final(
            cmd, CommandResult(cmd.request_id, "node", "rebirth", "done", ts, message=message, accepted_ms=ts, finished_ms=now_ms())
        )

    def _rebirth_now(self) -> None:
        self._rebirth_later = None
        if not self.live:
            return  # the next session births anyway
        self.rebirths += 1
        log.info("sparkplug_rebirth_requested", bd_seq=self.bd, coalesced=self.rebirths_coalesced)
        self._rebirth()

    def _rebirth(self) -> None:
        """NCMD rebirth: the same births on the same connection; live data goes on."""
        ts, node, devices = self._capture_births()
        bd, gen = self.bd, self.gen
        self._rebirth_pending = True

        def publish() -> None:
            self._rebirth_pending = False
            self._rebirth_at = time.monotonic()
            if gen == self.gen and self.live:
                self._publish_births(bd, ts, node, devices)

        self.writer.after_put(lambda: self.in_order(publish))

    def _publish_births(
        self, bd: int | None, ts: int, node: list[Metric], devices: list[tuple[str, list[Metric], bool]]
    ) -> None:
        assert bd is not None
        self.seq.birth()
        self._publish(
            self.topics.nbirth,
            encode_nbirth(bd_seq=bd, timestamp=ts, metrics=node, bd_seq_datatype=self.bd_datatype),
        )
        self._node_sent = {
            m.name: int(m.value) for m in node if m.name is not None and isinstance(m.value, int)
        }
        for device_id, metrics, _ in devices:
            self._publish_dbirth(device_id, ts, metrics)
        for device_id, _, available in devices:
            self._birthed[device_id] = available
            if not available:
                self._publish(
                    self.topics.device(MessageType.DDEATH, device_id),
                    encode_ddeath(seq=self.seq.next(), timestamp=ts),
                )
        self.births += 1
        log.info(
            "sparkplug_births",
            bd_seq=bd,
            devices=len(devices),
            unavailable=sum(1 for d in devices if not d[2]),
        )

    # -- Delivery hooks -------------------------------------------------------------------------

    def will(self) -> Message:
        """Executor thread, before each CONNECT: the next bdSeq, stored before it is used."""
        bd = self.bdseq.next_session()
        self._next_bd = bd
        return Message(
            self.topics.ndeath, encode_ndeath(bd_seq=bd, bd_seq_datatype=self.bd_datatype), 1, False
        )

    def on_session_up(self) -> None:
        self.bd = self._next_bd
        self._birthed = {}
        subs = [(self.topics.ncmd, 1), (self.topics.dcmd_filter, 1)]
        if self.config.primary_host is not None:
            subs.append((state_topic(self.config.primary_host), 1))
            self._host_online = False
            log.info("sparkplug_waiting_for_primary_host", host=self.config.primary_host)
        try:
            self.session.subscribe(subs)
        except PublishRefused:
            return  # gone again already; session_down follows
        if self.config.primary_host is None:
            self._births(fresh=True)

    def on_session_down(self) -> None:
        self._birthed = {}
        self._rebirth_pending = False
        self._host_online = False

    def live_payload(self, rec: Record) -> bytes:
        return with_seq(rec.payload, self.seq.next())

    def historical(self, m: Stored) -> tuple[bytes, int, bool] | None:
        model = self.models.get(m.stream)
        known = model.table.by_alias if model is not None else {}
        try:
            payload, dropped = to_historical(m.payload, seq=self.seq.upcoming, known_aliases=known)
        except DecodeError as exc:
            log.warning("sparkplug_stored_payload_unreadable", id=m.id, error=str(exc))
            return None
        if dropped:
            self.historical_metrics_dropped += dropped
            if metric_count(payload) == 0:
                return None
        self.seq.next()
        return payload, self.historical_qos, False

    def fell_behind(self) -> None:
        """A message could not be published: its seq is lost, so a rebirth resets the
        sequence; what was refused is replayed after the births."""
        self._births(fresh=False)

    def farewell(self) -> Message | None:
        if self.bd is None:
            return None
        return Message(
            self.topics.ndeath,
            encode_ndeath(bd_seq=self.bd, timestamp=now_ms(), bd_seq_datatype=self.bd_datatype),
            1,
            False,
        )

    async def close(self) -> None:
        """NDEATH before DISCONNECT; MQTT 5 asks the broker to send the Will instead."""
        self.live = False
        if self.session.backbone.protocol == "5":
            await self.session.close(None, will=True)
        else:
            await self.session.close(self.farewell())

    # -- incoming ------------------------------------------------------------------------------

    def message(self, topic: str, payload: bytes, retain: bool = False, props: Inbound = NO_PROPERTIES) -> None:
        try:
            parsed = parse_topic(topic)
        except TopicError as exc:
            log.warning("sparkplug_topic_ignored", topic=topic, error=str(exc))
            return
        if isinstance(parsed, ParsedStateTopic):
            self._host_state(parsed.host_id, payload)
            return
        if parsed.group_id != self.topics.group_id or parsed.edge_node_id != self.topics.edge_node_id:
            return
        if retain and parsed.message_type in (MessageType.NCMD, MessageType.DCMD):
            self.router.refuse_retained(topic)
        elif parsed.message_type == MessageType.NCMD:
            if self.router.node_command(payload):
                joined = self._request_rebirth() if self.live else False
                self._audit_rebirth(topic, props, joined=joined)
        elif parsed.message_type == MessageType.DCMD and parsed.device_id is not None:
            birthed = self.live and self._birthed.get(parsed.device_id, False)
            writes = self.router.device_command(parsed.device_id, payload, birthed=birthed)
            if writes:
                self._submit_writes(topic, writes, props)
        self._node_values["Commands/Refused"] = self._refused_total()
        self._maybe_ndata()

    def _refused_total(self) -> int:
        """Every refusal: the Sparkplug layer's and the router's (the audit counts both)."""
        if self.audit is not None:
            return self.audit.outcomes["refused"]
        return self.router.refused_total

    def _host_state(self, host_id: str, payload: bytes) -> None:
        if host_id != self.config.primary_host:
            return
        try:
            state = decode_state(payload)
        except DecodeError as exc:
            log.warning("sparkplug_state_invalid", host=host_id, error=str(exc))
            return
        last = self._host_ts
        if last is not None and state.timestamp < last:
            log.info("sparkplug_state_stale", host=host_id, online=state.online, timestamp=state.timestamp)
            return
        self._host_ts = state.timestamp
        if state.online:
            if not self._host_online:
                self._host_online = True
                log.info("sparkplug_primary_host_online", host=host_id)
                self._births(fresh=True)
        elif last is None or state.timestamp > last or self._host_online:
            # a newer offline: stop, say NDEATH, connect again and wait for online
            was = self._host_online
            self._host_online = False
            self.pause()
            log.warning("sparkplug_primary_host_offline", host=host_id, was_online=was)
            if was or last is not None:
                self._restart_wanted.set()

    # -- node metrics ------------------------------------------------------------------------------

    def update_outbox(self, stats: OutboxStats) -> None:
        v = self._node_values
        v["Outbox/Messages"], v["Outbox/Bytes"], v["Outbox/Dropped"] = (
            stats.messages,
            stats.bytes,
            stats.dropped_total,
        )
        v["Commands/Refused"] = self._refused_total()
        self._maybe_ndata()

    def _maybe_ndata(self) -> None:
        """NDATA with the node metrics that changed since the last BIRTH or NDATA, at most
        every NODE_DATA_INTERVAL (a flood of refused commands is one NDATA, not one each)."""
        if not self.live or self._ndata_later is not None:
            return
        wait = self._ndata_at + NODE_DATA_INTERVAL - time.monotonic()
        if wait > 0:
            self._ndata_later = asyncio.get_running_loop().call_later(wait, self._ndata_now)
            return
        self._ndata_now()

    def _ndata_now(self) -> None:
        self._ndata_later = None
        if not self.live:
            return
        ts = now_ms()
        changed = [
            Metric(alias=d.alias, datatype=d.datatype, value=self._node_values[d.name], timestamp=ts)
            for d in self.node_table
            if self._node_sent.get(d.name) != self._node_values[d.name]
        ]
        if not changed:
            return
        self._publish(self.topics.ndata, encode_data(timestamp=ts, metrics=changed, seq=self.seq.next()))
        self._ndata_at = time.monotonic()
        for m in changed:
            d = self.node_table.by_alias[m.alias] if m.alias is not None else None
            if d is not None and isinstance(m.value, int):
                self._node_sent[d.name] = m.value

    # -- the node's tasks ------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(super().run(), name="replay:sparkplug")
            tg.create_task(self._act(), name="sparkplug-actions")

    async def _act(self) -> None:
        """What the MQTT callbacks cannot do synchronously: reconnect (primary host offline)."""
        while True:
            await self._restart_wanted.wait()
            self._restart_wanted.clear()
            await self.session.restart(self.farewell())

    @property
    def birthed(self) -> Mapping[str, bool]:
        return dict(self._birthed)
