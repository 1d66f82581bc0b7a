"""UNS JSON: the topic layout and payloads of docs/topics.md.

<prefix>/<enterprise>/<site>/<area>/<line>/<cell>/status            retained, online/offline
<prefix>/<enterprise>/<site>/<area>/<line>/<cell>/outbox            retained, outbox figures
<prefix>/<enterprise>/<site>/<area>/<line>/<cell>/events            cell events (outbox drops)
<prefix>/<enterprise>/<site>/<area>/<line>/<cell>/<device>/state    retained, full snapshot
<prefix>/<enterprise>/<site>/<area>/<line>/<cell>/<device>/data     changes, one per scan
<prefix>/<enterprise>/<site>/<area>/<line>/<cell>/<device>/points/<point>   per_point mode

Device messages become outbox records here; `UnsDelivery` (uns_delivery.py) publishes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from cellctl.config.cell import Identity, Publish
from cellctl.engine.points import PointTable
from cellctl.outbox import Record

PAYLOAD_VERSION = 1


class RecordSink(Protocol):
    """Where encoded messages go: the outbox writer (or, in a benchmark, a bypass)."""

    def put(self, record: Record) -> bool: ...


class PointsView(Protocol):
    """A device's current point values (the engine's DeviceRunner)."""

    id: str
    table: PointTable


def cell_root(prefix: str, identity: Identity) -> str:
    levels = [*(prefix.split("/") if prefix else []), identity.enterprise, identity.site]
    levels += [identity.area, identity.line, identity.cell]
    return "/".join(levels)


class UnsPublisher:
    """Turns runner output into UNS JSON records. Implements the engine's DeviceSink."""

    def __init__(self, out: RecordSink, root: str, publish: Publish, qos: int) -> None:
        self.out = out
        self.root = root
        self.per_point = publish.mode == "per_point"
        self.qos = qos
        self._data_topic: dict[str, str] = {}
        self._seq: dict[str, int] = {}
        self._point_quality: dict[str, dict[str, str]] = {}

    @property
    def status_topic(self) -> str:
        return f"{self.root}/status"

    def state_topic(self, device_id: str) -> str:
        return f"{self.root}/{device_id}/state"

    def point_topic(self, device_id: str, point_id: str) -> str:
        return f"{self.root}/{device_id}/points/{point_id}"

    def device_data(
        self,
        device_id: str,
        ts_ms: int,
        values: dict[str, Any],
        quality: dict[str, dict[str, str]],
        machine: dict[str, Any] | None,
    ) -> None:
        topic = self._data_topic.get(device_id)
        if topic is None:
            topic = self._data_topic[device_id] = f"{self.root}/{device_id}/data"
        seq = self._seq.get(device_id, 0) + 1
        self._seq[device_id] = seq
        msg: dict[str, Any] = {"ts": ts_ms, "seq": seq, "values": values}
        if quality:
            msg["quality"] = quality
        if machine is not None:
            msg["machine"] = machine
        self.out.put(Record(device_id, topic, orjson.dumps(msg), self.qos, False, "uns"))
        if self.per_point:
            self._publish_points(device_id, ts_ms, values, quality)

    def _publish_points(
        self, device_id: str, ts_ms: int, values: dict[str, Any], quality: dict[str, dict[str, str]]
    ) -> None:
        known = self._point_quality.setdefault(device_id, {})
        put, qos = self.out.put, self.qos
        for point_id, q in quality.items():
            known[point_id] = q["q"]
            if point_id not in values:
                body = {"ts": ts_ms, **q}
                put(Record(device_id, self.point_topic(device_id, point_id), orjson.dumps(body), qos, True))
        for point_id, value in values.items():
            body = {"v": value, "ts": ts_ms, "q": known.get(point_id, "good")}
            put(Record(device_id, self.point_topic(device_id, point_id), orjson.dumps(body), qos, True))

    def device_state(self, device_id: str, state: dict[str, Any]) -> None:
        body = {"version": PAYLOAD_VERSION, **state}
        self.out.put(
            Record(device_id, self.state_topic(device_id), orjson.dumps(body), self.qos, True, "uns")
        )

    def device_available(self, device_id: str, available: bool) -> None:
        """UNS says it in `state` and in the data's machine state; nothing extra."""

    def republish_points(self, views: Iterable[PointsView], ts_ms: int) -> None:
        """per_point mode, after (re)connecting: every point's current value, retained.
        Point messages stored meanwhile are replayed as history (never retained), so
        without this the broker would not hold the latest value of a point that has not
        changed since."""
        if not self.per_point:
            return
        put, qos = self.out.put, self.qos
        for view in views:
            t = view.table
            known = self._point_quality.setdefault(view.id, {})
            for i, point_id in enumerate(t.ids):
                body: dict[str, Any] = {"v": t.value[i], "ts": ts_ms, "q": t.quality[i]}
                if t.reason[i]:
                    body["reason"] = t.reason[i]
                known[point_id] = t.quality[i]
                put(Record(view.id, self.point_topic(view.id, point_id), orjson.dumps(body), qos, True))
