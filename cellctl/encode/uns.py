"""UNS JSON: the topic layout and payloads of docs/topics.md.

<prefix>/<enterprise>/<site>/<area>/<line>/<cell>/status            retained, online/offline
<prefix>/<enterprise>/<site>/<area>/<line>/<cell>/outbox            retained, outbox figures
<prefix>/<enterprise>/<site>/<area>/<line>/<cell>/events            cell events (outbox drops)
<prefix>/<enterprise>/<site>/<area>/<line>/<cell>/<device>/state    retained, full snapshot
<prefix>/<enterprise>/<site>/<area>/<line>/<cell>/<device>/data     changes, one per scan
<prefix>/<enterprise>/<site>/<area>/<line>/<cell>/<device>/points/<point>   per_point mode

Device messages become outbox records here; `UnsDelivery` (cellctl/deliver/uns.py) publishes them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, cast

import orjson
import structlog

from cellctl.config.cell import Identity, Publish
from cellctl.model import DeviceSnapshot, DeviceUpdate, PointState, Quality, QualityChange
from cellctl.outbox import Record

if TYPE_CHECKING:  # the contract's TypedDicts only annotate: not imported at run time (start-up)
    from cellctl.contract.payloads import (
        CurrentJobJson,
        DataJson,
        DeviceRemovedEvent,
        JobEventJson,
        ManifestJson,
        PointJson,
        PointStateJson,
        QualityJson,
        StateJson,
    )

log = structlog.get_logger("cellctl.encode")

PAYLOAD_VERSION = 1
JOB_EVENTS: Final[
    dict[
        str, Literal["job_started", "job_paused", "job_resumed", "job_completed", "job_aborted", "job_failed"]
    ]
] = {
    "started": "job_started",
    "paused": "job_paused",
    "resumed": "job_resumed",
    "completed": "job_completed",
    "aborted": "job_aborted",
    "failed": "job_failed",
}
_HISTORICAL: Final[bytes] = b'{"historical":true,'
_POINT_HEAD: Final[bytes] = b'{"v":'


def uns_historical(payload: bytes) -> bytes:
    """`{"ts":..}` -> `{"historical":true,"ts":..}`: a splice, since replay may resend
    hundreds of thousands of messages. Payloads that are not a non-empty JSON object
    are returned unchanged."""
    if len(payload) > 2 and payload[:1] == b"{" and payload[1:].lstrip()[:1] != b"}":
        return _HISTORICAL + payload[1:]
    return payload


def compact(payload: bytes) -> bytes:
    """A right-sized copy of an orjson payload that will be queued. orjson's bytes keep
    the whole buffer they were written into: measured (orjson 3.13, tracemalloc) 4 KiB
    behind a 30-byte point message and 32 KiB behind a 1.2 KB data message. Queued by the
    thousand (per_point mode, a slow broker) that was most of the daemon's memory, and it
    made the queues' bounds in bytes meaningless. The copy costs ~0.4 us."""
    return bytes(memoryview(payload))


class RecordSink(Protocol):
    """Where encoded messages go: the outbox writer (or, in a benchmark, a bypass)."""

    def put(self, record: Record) -> bool: ...


def cell_root(prefix: str, identity: Identity) -> str:
    levels = [*(prefix.split("/") if prefix else []), identity.enterprise, identity.site]
    levels += [identity.area, identity.line, identity.cell]
    return "/".join(levels)


def _dumps_point_by_point(
    msg: DataJson, values: Mapping[str, Any], quality: dict[str, QualityJson]
) -> tuple[bytes, list[str]]:
    """The slow path for a message orjson refused (an integer beyond 64 bits from a
    device, a type no driver should return): each value that cannot be encoded is sent
    as null with quality bad and the reason, the rest as usual. Returns the names."""
    fixed: dict[str, Any] = {}
    bad: list[str] = []
    for pid, v in values.items():
        try:
            orjson.dumps(v)
            fixed[pid] = v
        except (TypeError, orjson.JSONEncodeError) as exc:
            fixed[pid] = None
            quality[pid] = {"q": Quality.BAD, "reason": f"cannot encode: {exc}"}
            bad.append(pid)
    msg["values"] = fixed
    if quality:
        msg["quality"] = quality
    return orjson.dumps(msg), bad


def quality_json(change: QualityChange) -> QualityJson:
    """`{"q": "bad", "reason": "timeout"}`; no reason key when there is none."""
    if change.reason:
        return {"q": change.quality, "reason": change.reason}
    return {"q": change.quality}


def point_json(p: PointState) -> PointStateJson:
    """One point in a retained state message."""
    entry: PointStateJson = {"v": p.value, "q": p.quality}
    if p.reason:
        entry["reason"] = p.reason
    if p.unit:
        entry["unit"] = p.unit
    if p.src_ts is not None:
        entry["src_ts"] = int(p.src_ts * 1000)
    return entry


def state_json(snapshot: DeviceSnapshot) -> StateJson:
    """The retained per-device state message body."""
    body: StateJson = {
        "version": PAYLOAD_VERSION,
        "ts": snapshot.ts_ms,
        "device": snapshot.device_id,
        "profile": snapshot.profile,
        "driver": snapshot.driver,
        "available": snapshot.available,
        "reason": snapshot.reason,
        "degraded": snapshot.degraded,
        "machine": snapshot.machine.as_dict() if snapshot.machine is not None else None,
        "points": {p.id: point_json(p) for p in snapshot.points},
    }
    if snapshot.job is not None:
        body["job"] = snapshot.job.as_dict()
    if snapshot.oee is not None:
        body["oee"] = snapshot.oee.as_dict()
    if snapshot.oee_shift is not None:
        body["oee_shift"] = snapshot.oee_shift.as_dict()
    return body


class UnsEncoder:
    """Turns the engine's output into UNS JSON records. Implements the engine's DeviceSink."""

    def __init__(self, out: RecordSink, root: str, publish: Publish, qos: int) -> None:
        self.out = out
        self.root = root
        self.per_point = publish.mode == "per_point"
        self.qos = qos
        self._data_topic: dict[str, str] = {}
        self._seq: dict[str, int] = {}
        self._point_quality: dict[str, dict[str, Quality]] = {}
        self._point_topics: dict[str, dict[str, str]] = {}  # per_point: one str per topic, shared
        self.unencodable = 0  # values sent as null/bad because JSON cannot carry them

    @property
    def status_topic(self) -> str:
        return f"{self.root}/status"

    def state_topic(self, device_id: str) -> str:
        return f"{self.root}/{device_id}/state"

    def point_topic(self, device_id: str, point_id: str) -> str:
        return f"{self.root}/{device_id}/points/{point_id}"

    def device_update(self, update: DeviceUpdate) -> None:
        device_id = update.device_id
        topic = self._data_topic.get(device_id)
        if topic is None:
            topic = self._data_topic[device_id] = f"{self.root}/{device_id}/data"
        seq = self._seq.get(device_id, 0) + 1
        self._seq[device_id] = seq
        msg: DataJson = {"ts": update.ts_ms, "seq": seq, "values": update.values}
        if update.quality:
            msg["quality"] = {pid: quality_json(q) for pid, q in update.quality.items()}
        if update.machine is not None:
            msg["machine"] = update.machine.as_dict()
        if update.available is not None:
            msg["available"] = update.available
        try:
            payload = orjson.dumps(msg)
        except (TypeError, orjson.JSONEncodeError):
            payload, bad = _dumps_point_by_point(msg, update.values, msg.get("quality", {}))
            self._unencodable(device_id, bad)
        self.out.put(Record(device_id, topic, compact(payload), self.qos, False, "uns"))
        if update.job is not None:
            self._job(update)
        if self.per_point:
            self._publish_points(update)

    def _job(self, update: DeviceUpdate) -> None:
        """The current job (retained) and each job event, through the outbox like samples."""
        device_id, put, qos = update.device_id, self.out.put, self.qos
        assert update.job is not None
        for e in update.job_events:
            event: JobEventJson = {
                "ts": update.ts_ms,
                "event": JOB_EVENTS[e.event],
                "device": device_id,
                "job": e.record.as_dict(),
            }
            put(Record(device_id, f"{self.root}/{device_id}/events", orjson.dumps(event), qos, False, "uns"))
        job = cast("CurrentJobJson", {"ts": update.ts_ms, **update.job.as_dict()})
        put(Record(device_id, f"{self.root}/{device_id}/job", orjson.dumps(job), qos, True, "uns"))

    def _publish_points(self, update: DeviceUpdate) -> None:
        device_id, ts_ms, values = update.device_id, update.ts_ms, update.values
        known = self._point_quality.setdefault(device_id, {})
        topics = self._point_topics.setdefault(device_id, {})
        put, qos, dumps = self.out.put, self.qos, orjson.dumps
        for point_id, q in update.quality.items():
            known[point_id] = q.quality
            if point_id not in values:
                body: PointJson = {"ts": ts_ms, "q": q.quality}
                if q.reason:
                    body["reason"] = q.reason
                put(Record(device_id, self.point_topic(device_id, point_id), compact(dumps(body)), qos, True))
        # `{"v":<value>,"ts":<ts>,"q":<quality>}` exactly as orjson writes the PointJson
        # dict, assembled from the value's JSON and a tail shared by the scan's points:
        # no dict per value, and the joined bytes are right-sized (no `compact` copy).
        tails: dict[Quality, bytes] = {}
        join = b"".join
        for point_id, value in values.items():
            quality = known.get(point_id, Quality.GOOD)
            tail = tails.get(quality)
            if tail is None:
                tail = tails[quality] = b',"ts":%d,"q":%b}' % (ts_ms, dumps(quality))
            topic = topics.get(point_id)
            if topic is None:
                topic = topics[point_id] = self.point_topic(device_id, point_id)
            put(Record(device_id, topic, join((_POINT_HEAD, dumps(value), tail)), qos, True))

    def device_state(self, snapshot: DeviceSnapshot) -> None:
        body = state_json(snapshot)
        try:
            payload = orjson.dumps(body)
        except (TypeError, orjson.JSONEncodeError):
            points = body["points"]
            bad = []
            for pid, entry in points.items():
                try:
                    orjson.dumps(entry["v"])
                except (TypeError, orjson.JSONEncodeError) as exc:
                    entry["v"], entry["q"], entry["reason"] = None, Quality.BAD, f"cannot encode: {exc}"
                    bad.append(pid)
            payload = orjson.dumps(body)
            self._unencodable(snapshot.device_id, bad)
        self.out.put(
            Record(snapshot.device_id, self.state_topic(snapshot.device_id), payload, self.qos, True, "uns")
        )

    def _unencodable(self, device_id: str, points: list[str]) -> None:
        self.unencodable += len(points)
        if points:
            log.warning("uns_value_not_encodable", device=device_id, points=points[:20])

    def device_available(self, snapshot: DeviceSnapshot) -> None:
        """UNS says it in `state` and in the data's machine state; nothing extra."""

    def device_removed(self, device_id: str) -> None:
        """An event says so, and the device's retained state (and per-point values) are
        cleared: an empty retained message deletes what the broker holds."""
        body: DeviceRemovedEvent = {
            "ts": time.time_ns() // 1_000_000,
            "event": "device_removed",
            "device": device_id,
        }
        self.out.put(Record(device_id, f"{self.root}/events", orjson.dumps(body), self.qos, False, "uns"))
        self.clear_retained(device_id)
        self._data_topic.pop(device_id, None)
        self._point_topics.pop(device_id, None)

    def clear_retained(self, device_id: str) -> None:
        put, qos = self.out.put, self.qos
        put(Record(device_id, self.state_topic(device_id), b"", qos, True, "uns"))
        put(Record(device_id, f"{self.root}/{device_id}/job", b"", qos, True, "uns"))
        for point_id in self._point_quality.pop(device_id, {}):
            put(Record(device_id, self.point_topic(device_id, point_id), b"", qos, True, "uns"))

    def manifest(self, body: ManifestJson) -> None:
        """The retained cell manifest (cellctl/manifest.py)."""
        self.out.put(Record("", f"{self.root}/manifest", orjson.dumps(body), self.qos, True, "uns"))

    def republish_points(self, snapshots: Iterable[DeviceSnapshot], ts_ms: int) -> None:
        """per_point mode, after (re)connecting: every point's current value, retained.
        Point messages stored meanwhile are replayed as history (never retained), so
        without this the broker would not hold the latest value of a point that has not
        changed since."""
        if not self.per_point:
            return
        put, qos = self.out.put, self.qos
        for snap in snapshots:
            known = self._point_quality.setdefault(snap.device_id, {})
            for p in snap.points:
                body: PointJson = {"v": p.value, "ts": ts_ms, "q": p.quality}
                if p.reason:
                    body["reason"] = p.reason
                known[p.id] = p.quality
                put(
                    Record(
                        snap.device_id, self.point_topic(snap.device_id, p.id), orjson.dumps(body), qos, True
                    )
                )
