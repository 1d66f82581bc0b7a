"""The UNS JSON session: status with a last will, the outbox's figures and drop events,
and how stored UNS messages are replayed (marked `"historical": true`, never retained,
so an old `state` can never replace a newer retained one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from cellctl.commands.uns import UnsCommands, command_filter
from cellctl.config.cell import Backbone
from cellctl.deliver.delivery import Delivery
from cellctl.deliver.mqtt import NO_PROPERTIES, Inbound, Message, PublishRefused
from cellctl.encode.uns import uns_historical
from cellctl.outbox import OutboxStats, OutboxWriter, Stored

if TYPE_CHECKING:  # the contract's TypedDicts only annotate: not imported at run time (start-up)
    from cellctl.contract.payloads import OutboxDroppedEvent, OutboxJson, StatusJson


class UnsDelivery(Delivery):
    fmt = "uns"

    def __init__(
        self,
        backbone: Backbone,
        *,
        client_id: str,
        writer: OutboxWriter,
        replay_rate: int,
        root: str,
        on_live: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(backbone, client_id=client_id, writer=writer, replay_rate=replay_rate)
        self.root = root
        self.status_topic = f"{root}/status"
        self.outbox_topic = f"{root}/outbox"
        self.events_topic = f"{root}/events"
        self.on_live = on_live  # the cell republishes every retained state (after going live)
        self.commands: UnsCommands | None = None  # `<root>/cmd/<device>` (set by the daemon)

    def will(self) -> Message:
        body: StatusJson = {"status": "offline", "reason": "connection_lost"}
        return Message(self.status_topic, orjson.dumps(body), 1, True)

    def farewell(self) -> Message:
        body: StatusJson = {"status": "offline", "reason": "shutdown"}
        return Message(self.status_topic, orjson.dumps(body), 1, True)

    def on_session_up(self) -> None:
        try:
            # Subscribe first: the broker handles one connection's packets in order, so a
            # client that sees "online" knows the command topics are already subscribed.
            if self.commands is not None:
                self.session.subscribe([(command_filter(self.root), 1)])
            online: StatusJson = {"status": "online"}
            self.session.publish(self.status_topic, orjson.dumps(online), 1, True)
        except PublishRefused:
            return  # gone again already; session_down follows
        self.go_live(fresh=True)
        if self.on_live is not None:
            self.on_live()  # records put now are after the cut: they go out live

    def message(self, topic: str, payload: bytes, retain: bool = False, props: Inbound = NO_PROPERTIES) -> None:
        """Only command topics are subscribed; anything else is ignored."""
        if self.commands is not None and self.commands.is_command(topic):
            self.commands.message(
                topic,
                payload,
                retain,
                response_topic=props.response_topic,
                correlation_data=props.correlation_data,
                user_properties=props.user_properties,
            )

    def send_reply(self, topic: str, payload: bytes, correlation: bytes | None) -> bool:
        """A command's result, sent directly (QoS 1, never retained): False when not connected."""
        try:
            self.session.publish(topic, payload, 1, False, correlation_data=correlation)
        except PublishRefused:
            return False
        return True

    def historical(self, m: Stored) -> tuple[bytes, int, bool]:
        return uns_historical(m.payload), m.qos, False

    # -- cell-level messages, sent directly (current figures; the next ones supersede them) --

    def publish_outbox(self, stats: OutboxStats, ts_ms: int) -> bool:
        body: OutboxJson = {
            "ts": ts_ms,
            "messages": stats.messages,
            "bytes": stats.bytes,
            "max_bytes": stats.max_bytes,
            "oldest_ts": stats.oldest_created_ms,
            "dropped_total": stats.dropped_total,
            "dropped": stats.dropped_by_reason,
        }
        return self._send(self.outbox_topic, orjson.dumps(body), True)

    def publish_event(self, event: OutboxDroppedEvent) -> bool:
        return self._send(self.events_topic, orjson.dumps(event), False)

    def _send(self, topic: str, payload: bytes, retain: bool) -> bool:
        """Whether the message went out (the caller keeps it for later if not)."""
        try:
            self.session.publish(topic, payload, 1, retain)
        except PublishRefused:
            return False
        return True
