"""per_point mode's value messages are assembled from pieces (decision 0018), not dumped
from a dict: they must stay byte for byte what orjson writes for the PointJson dict, for
every kind of value a driver returns and every quality."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from cellctl.config.cell import Publish
from cellctl.encode.uns import UnsEncoder
from cellctl.model import DeviceUpdate, Quality, QualityChange
from cellctl.outbox import Record

ROOT = "uns/v1/e/s/a/l/c"

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)


class Collect:
    def __init__(self) -> None:
        self.records: list[Record] = []

    def put(self, record: Record) -> bool:
        self.records.append(record)
        return True


@given(
    point_values=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), values, min_size=1, max_size=8),
    qualities=st.dictionaries(st.sampled_from(["p0", "p1", "p2"]), st.sampled_from(list(Quality)), max_size=3),
    ts=st.integers(min_value=0, max_value=2**53),
)
def test_point_messages_are_what_orjson_writes_for_the_point_dict(
    point_values: dict[str, object], qualities: dict[str, Quality], ts: int
) -> None:
    out = Collect()
    enc = UnsEncoder(out, ROOT, Publish(mode="per_point"), 1)
    # qualities first (a scan where only the quality changed), then the values
    enc.device_update(DeviceUpdate("d1", ts - 1 if ts else 0, {}, {p: QualityChange(q, "x") for p, q in qualities.items()}))
    out.records.clear()
    enc.device_update(DeviceUpdate("d1", ts, point_values, {}))
    points = {r.topic: r for r in out.records if "/points/" in r.topic}
    assert set(points) == {f"{ROOT}/d1/points/{p}" for p in point_values}
    for pid, v in point_values.items():
        rec = points[f"{ROOT}/d1/points/{pid}"]
        expected = orjson.dumps({"v": v, "ts": ts, "q": qualities.get(pid, Quality.GOOD)})
        assert rec.payload == expected
        assert (rec.qos, rec.retain, rec.stream) == (1, True, "d1")
