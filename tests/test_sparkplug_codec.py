"""Sparkplug B codec: round trips for every datatype cellctl uses, read back both through
our decoder and straight through the generated classes, and commands that must be refused."""

from __future__ import annotations

import contextlib
import math
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellctl.sparkplug import sparkplug_b_pb2 as pb
from cellctl.sparkplug.codec import (
    BDSEQ_METRIC,
    POINT_DATATYPES,
    QUALITY_DETAIL_KEY,
    QUALITY_KEY,
    QUALITY_REASON_KEY,
    REBIRTH_METRIC,
    CommandError,
    DataType,
    DecodeError,
    EncodeError,
    Metric,
    MetricDef,
    MetricTable,
    PropertyValue,
    QualityCode,
    SeqCounter,
    decode_command,
    decode_payload,
    decode_state,
    encode_command,
    encode_data,
    encode_data_items,
    encode_dbirth,
    encode_ddeath,
    encode_nbirth,
    encode_ndeath,
    next_seq,
    quality_properties,
    to_historical,
    with_seq,
)

pytestmark = pytest.mark.timeout(60)

TS = 1_764_012_938_123


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


# (datatype, values that must survive a round trip); extremes of every range included
CASES: list[tuple[DataType, list[Any]]] = [
    (DataType.Int8, [0, 1, -1, 127, -128]),
    (DataType.Int16, [0, -1, 32767, -32768]),
    (DataType.Int32, [0, -1, 2**31 - 1, -(2**31)]),
    (DataType.Int64, [0, -1, 2**63 - 1, -(2**63), 1041]),
    (DataType.UInt8, [0, 255]),
    (DataType.UInt16, [0, 65535]),
    (DataType.UInt32, [0, 2**32 - 1]),
    (DataType.UInt64, [0, 2**64 - 1]),
    (DataType.DateTime, [0, TS]),
    (DataType.Float, [0.0, 1.5, -2.25, f32(0.1), math.inf]),
    (DataType.Double, [0.0, 230.12, -1e300, 5e-324, math.inf, -math.inf]),
    (DataType.Boolean, [True, False]),
    (DataType.String, ["", "executing", "spindle überlast ⚠"]),
    (DataType.Text, ["line 1\nline 2"]),
    (DataType.UUID, ["2f1c6c1e-9b7a-4c1e-8a50-8d7b1f0c2a11"]),
    (DataType.Bytes, [b"", b"\x00\xff\x10"]),
    (DataType.File, [b"G1 X10\n"]),
]
FLAT = [(dt, v) for dt, vs in CASES for v in vs]


def birth_of(dt: DataType, value: Any, **kw: Any) -> bytes:
    return encode_dbirth(seq=1, timestamp=TS, metrics=[Metric("m", 7, dt, value, **kw)])


@pytest.mark.parametrize(("dt", "value"), FLAT, ids=[f"{d.name}={v!r}" for d, v in FLAT])
def test_birth_round_trip_every_datatype(dt: DataType, value: Any) -> None:
    got = decode_payload(birth_of(dt, value)).metrics[0]
    assert got.datatype == dt
    assert got.value == value
    assert type(got.value) is type(value)


@pytest.mark.parametrize("dt", [dt for dt, _ in CASES])
def test_null_round_trips_as_is_null_without_value(dt: DataType) -> None:
    data = birth_of(dt, None)
    raw = pb.Payload.FromString(data).metrics[0]
    assert raw.is_null
    assert raw.WhichOneof("value") is None
    assert raw.datatype == dt
    assert decode_payload(data).metrics[0].value is None


def test_point_types_map_to_the_documented_datatypes() -> None:
    assert {
        "bool": DataType.Boolean,
        "int": DataType.Int64,
        "float": DataType.Double,
        "string": DataType.String,
    } == POINT_DATATYPES
    for dt in POINT_DATATYPES.values():  # the generated enum agrees with ours
        assert int(pb.DataType.Value(dt.name)) == int(dt)


def test_signed_values_on_the_wire_follow_the_spec() -> None:
    """Read with the generated classes only: Int8..Int32 in int_value as 32-bit two's
    complement, Int64 in long_value as 64-bit, UInt32 in int_value."""
    metrics = [
        Metric("a", 1, DataType.Int8, -1),
        Metric("b", 2, DataType.Int32, -5),
        Metric("c", 3, DataType.Int64, -1),
        Metric("d", 4, DataType.UInt32, 2**32 - 1),
        Metric("e", 5, DataType.UInt64, 2**64 - 1),
        Metric("f", 6, DataType.Float, 1.5),
    ]
    raw = pb.Payload.FromString(encode_dbirth(seq=9, timestamp=TS, metrics=metrics))
    by = {m.name: m for m in raw.metrics}
    assert by["a"].WhichOneof("value") == "int_value"
    assert by["a"].int_value == 0xFFFFFFFF
    assert by["b"].int_value == 2**32 - 5
    assert by["c"].WhichOneof("value") == "long_value"
    assert by["c"].long_value == 2**64 - 1
    assert by["d"].WhichOneof("value") == "int_value"
    assert by["d"].int_value == 2**32 - 1
    assert by["e"].long_value == 2**64 - 1
    assert by["f"].WhichOneof("value") == "float_value"
    assert by["f"].float_value == 1.5
    assert all(m.timestamp == TS and m.HasField("datatype") and m.HasField("alias") for m in raw.metrics)
    assert raw.seq == 9
    assert raw.timestamp == TS


def test_narrow_bit_patterns_are_refused_not_guessed() -> None:
    """0xFF in an Int8 could be -1 (8-bit pattern) or 255: neither the spec's 32-bit
    sign extension, so the decoder refuses it instead of guessing."""
    p = pb.Payload(timestamp=TS, seq=1)
    m = p.metrics.add(name="x", alias=1, datatype=DataType.Int8, timestamp=TS)
    m.int_value = 0xFF
    with pytest.raises(DecodeError, match="255 is out of range for Int8"):
        decode_payload(p.SerializeToString())
    m.int_value = 0xFFFFFF80
    assert decode_payload(p.SerializeToString()).metrics[0].value == -128
    m.long_value = 2**64 - 2  # an Int8 -2 written 64 bits wide is unambiguous too
    assert decode_payload(p.SerializeToString()).metrics[0].value == -2


def test_properties_round_trip_with_nesting_null_and_quality() -> None:
    props = {
        **quality_properties("uncertain", "above max 100"),
        "engUnit": PropertyValue(DataType.String, "°C"),
        "engLow": PropertyValue(DataType.Double, -40.0),
        "gain": PropertyValue(DataType.Int32, -3),
        "calibrated": PropertyValue(DataType.Boolean, True),
        "serial": PropertyValue(DataType.UInt64, 2**64 - 1),
        "note": PropertyValue(DataType.String, None),
        "nested": PropertyValue(DataType.PropertySet, {"k": PropertyValue(DataType.Int64, 5)}),
        "list": PropertyValue(
            DataType.PropertySetList,
            [{"a": PropertyValue(DataType.Float, 0.5)}, {"b": PropertyValue(DataType.Boolean, False)}],
        ),
    }
    data = encode_dbirth(seq=1, timestamp=TS, metrics=[Metric("t", 1, DataType.Double, 23.5, properties=props)])
    got = decode_payload(data).metrics[0].properties
    assert got == props
    raw = pb.Payload.FromString(data).metrics[0].properties
    q = raw.values[list(raw.keys).index(QUALITY_KEY)]
    assert q.type == DataType.Int32
    assert q.WhichOneof("value") == "int_value"
    assert q.int_value == 192
    assert raw.values[list(raw.keys).index("note")].is_null


@pytest.mark.parametrize(
    ("quality", "code", "extra"),
    [("good", QualityCode.GOOD, set()), ("uncertain", QualityCode.GOOD, {QUALITY_DETAIL_KEY}),
     ("bad", QualityCode.BAD, {QUALITY_DETAIL_KEY, QUALITY_REASON_KEY})],
)
def test_quality_property_uses_spec_codes(quality: str, code: int, extra: set[str]) -> None:
    props = quality_properties(quality, "timeout" if quality == "bad" else None)
    assert props[QUALITY_KEY] == PropertyValue(DataType.Int32, code)
    assert set(props) - {QUALITY_KEY} == extra
    with pytest.raises(EncodeError, match="unknown quality"):
        quality_properties("stale-ish")


def test_is_historical_and_is_transient_round_trip() -> None:
    data = encode_data(timestamp=TS, seq=4, metrics=[
        Metric(alias=3, datatype=DataType.Double, value=1.0, is_historical=True, is_transient=True)])
    raw = pb.Payload.FromString(data).metrics[0]
    assert raw.is_historical
    assert raw.is_transient
    table = MetricTable([MetricDef("x", DataType.Double, 3)])
    got = decode_payload(data, table=table).metrics[0]
    assert got.is_historical
    assert got.is_transient
    assert got.value == 1.0
    assert got.datatype == DataType.Double


# -- property test: any value of any supported type survives BIRTH and DATA --------------

INT_BOUNDS = {
    DataType.Int8: (-(2**7), 2**7 - 1), DataType.Int16: (-(2**15), 2**15 - 1),
    DataType.Int32: (-(2**31), 2**31 - 1), DataType.Int64: (-(2**63), 2**63 - 1),
    DataType.UInt8: (0, 2**8 - 1), DataType.UInt16: (0, 2**16 - 1), DataType.UInt32: (0, 2**32 - 1),
    DataType.UInt64: (0, 2**64 - 1), DataType.DateTime: (0, 2**64 - 1),
}


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[DataType, Any]:
    dt = draw(st.sampled_from([dt for dt, _ in CASES]))
    if draw(st.integers(0, 9)) == 0:
        return dt, None
    if dt in INT_BOUNDS:
        lo, hi = INT_BOUNDS[dt]
        return dt, draw(st.integers(lo, hi))
    if dt == DataType.Float:
        return dt, draw(st.floats(width=32, allow_nan=False))
    if dt == DataType.Double:
        return dt, draw(st.floats(allow_nan=False))
    if dt == DataType.Boolean:
        return dt, draw(st.booleans())
    if dt in (DataType.Bytes, DataType.File):
        return dt, draw(st.binary(max_size=64))
    return dt, draw(st.text(max_size=40))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(typed_values(), min_size=1, max_size=20), ts=st.integers(0, 2**64 - 1))
def test_any_value_round_trips_through_birth_and_data(items: list[tuple[DataType, Any]], ts: int) -> None:
    metrics = [Metric(f"p{i}", i + 10, dt, v, timestamp=ts) for i, (dt, v) in enumerate(items)]
    table = MetricTable(MetricDef(m.name or "", m.datatype or DataType.Unknown, m.alias) for m in metrics)
    birth = decode_payload(encode_dbirth(seq=1, timestamp=ts, metrics=metrics))
    data = decode_payload(encode_data(timestamp=ts, metrics=metrics, seq=2), table=table)
    assert birth.metrics == tuple(metrics)
    assert [(m.alias, m.value, m.timestamp) for m in data.metrics] == [(m.alias, m.value, ts) for m in metrics]
    assert all(m.name is None for m in data.metrics)
    # and the generated classes alone read the same timestamps and null flags
    raw = pb.Payload.FromString(encode_data(timestamp=ts, metrics=metrics, seq=2))
    assert [m.is_null for m in raw.metrics] == [m.value is None for m in metrics]
    assert not any(m.HasField("name") or m.HasField("datatype") for m in raw.metrics)


@pytest.mark.parametrize(
    ("dt", "value", "match"),
    [(DataType.Int8, 128, "out of range"), (DataType.UInt8, -1, "out of range"),
     (DataType.Int64, 2**63, "out of range"), (DataType.Int64, 1.5, "needs an int"),
     (DataType.Int32, True, "needs an int"), (DataType.Boolean, 1, "needs a bool"),
     (DataType.Double, "1", "needs a number"), (DataType.String, b"x", "needs a str"),
     (DataType.DataSet, 1, "not supported"), (DataType.Int8Array, b"", "not supported")],
)
def test_encoder_refuses_values_that_do_not_fit(dt: DataType, value: Any, match: str) -> None:
    with pytest.raises(EncodeError, match=match) as info:
        birth_of(dt, value)
    assert info.value.metric == "'m'"


# -- message shapes (read with the generated classes only) --------------------------------


def test_nbirth_has_seq_zero_bdseq_and_rebirth_without_alias() -> None:
    data = encode_nbirth(bd_seq=17, timestamp=TS, metrics=[Metric("Node Info/Version", 1, DataType.String, "0.1")])
    raw = pb.Payload.FromString(data)
    assert raw.HasField("seq")
    assert raw.seq == 0
    assert raw.timestamp == TS
    bd, rebirth, info = raw.metrics
    assert (bd.name, bd.datatype, bd.WhichOneof("value"), bd.long_value) == (BDSEQ_METRIC, DataType.Int64, "long_value", 17)
    assert (rebirth.name, rebirth.datatype, rebirth.boolean_value) == (REBIRTH_METRIC, DataType.Boolean, False)
    assert not bd.HasField("alias")
    assert not rebirth.HasField("alias")
    assert rebirth.HasField("boolean_value")
    assert info.alias == 1
    assert all(m.timestamp == TS for m in raw.metrics)
    with pytest.raises(EncodeError, match="reserved"):
        encode_nbirth(bd_seq=0, timestamp=TS, metrics=[Metric(BDSEQ_METRIC, 9, DataType.Int64, 1)])


def test_ndeath_carries_only_bdseq_and_no_seq() -> None:
    raw = pb.Payload.FromString(encode_ndeath(bd_seq=255, timestamp=TS))
    assert not raw.HasField("seq")
    (m,) = raw.metrics
    assert (m.name, m.datatype, m.long_value) == (BDSEQ_METRIC, DataType.Int64, 255)
    uint = pb.Payload.FromString(encode_ndeath(bd_seq=3, bd_seq_datatype=DataType.UInt64)).metrics[0]
    assert uint.datatype == DataType.UInt64
    assert uint.long_value == 3


def test_ddeath_has_seq_and_timestamp_only() -> None:
    raw = pb.Payload.FromString(encode_ddeath(seq=200, timestamp=TS))
    assert raw.seq == 200
    assert raw.timestamp == TS
    assert not raw.metrics


def test_birth_refuses_duplicates_and_missing_names() -> None:
    with pytest.raises(EncodeError, match="twice"):
        encode_dbirth(seq=1, timestamp=TS, metrics=[Metric("a", 1, DataType.Boolean, True)] * 2)
    with pytest.raises(EncodeError, match="alias 1 appears twice"):
        encode_dbirth(seq=1, timestamp=TS, metrics=[Metric("a", 1, DataType.Boolean, True),
                                                    Metric("b", 1, DataType.Boolean, True)])
    with pytest.raises(EncodeError, match="needs a name"):
        encode_dbirth(seq=1, timestamp=TS, metrics=[Metric(None, 1, DataType.Boolean, True)])
    with pytest.raises(EncodeError, match="no datatype"):
        encode_dbirth(seq=1, timestamp=TS, metrics=[Metric("a", 1, None, True)])


def test_data_needs_aliases_and_sends_no_names() -> None:
    with pytest.raises(EncodeError, match="needs an alias"):
        encode_data(timestamp=TS, metrics=[Metric("a", None, DataType.Double, 1.0)])
    raw = pb.Payload.FromString(encode_data(timestamp=TS, seq=5, metrics=[Metric("a", 4, DataType.Double, 1.0)]))
    assert not raw.metrics[0].HasField("name")
    assert raw.metrics[0].alias == 4


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 200, 255])
def test_with_seq_equals_direct_encoding(seq: int) -> None:
    ms = [Metric(alias=i, datatype=DataType.Double, value=i / 3) for i in range(5)]
    stored = encode_data(timestamp=TS, metrics=ms)
    assert not pb.Payload.FromString(stored).HasField("seq")
    assert with_seq(stored, seq) == encode_data(timestamp=TS, metrics=ms, seq=seq)
    assert pb.Payload.FromString(with_seq(stored, seq)).seq == seq


def test_seq_counter_wraps_and_restarts_at_birth() -> None:
    c = SeqCounter()
    assert c.birth() == 0
    seen = [c.next() for _ in range(300)]
    assert seen[:3] == [1, 2, 3]
    assert seen[254] == 255
    assert seen[255] == 0
    assert seen[256] == 1
    assert c.birth() == 0
    assert c.next() == 1
    assert next_seq(255) == 0
    assert next_seq(7) == 8


def test_to_historical_marks_every_metric_sets_seq_and_drops_unbirthed() -> None:
    stored = encode_data(timestamp=TS, metrics=[Metric(alias=a, datatype=DataType.Int64, value=a) for a in (1, 2, 3)])
    known = {1: MetricDef("a", DataType.Int64, 1), 3: MetricDef("c", DataType.Int64, 3)}
    out, dropped = to_historical(stored, seq=42, known_aliases=known)
    raw = pb.Payload.FromString(out)
    assert dropped == 1
    assert raw.seq == 42
    assert raw.timestamp == TS
    assert [(m.alias, m.is_historical, m.long_value) for m in raw.metrics] == [(1, True, 1), (3, True, 3)]
    with pytest.raises(DecodeError, match="malformed"):
        to_historical(b"\xff\xff", seq=1)


# -- commands --------------------------------------------------------------------------------

NODE = MetricTable([MetricDef(REBIRTH_METRIC, DataType.Boolean), MetricDef(BDSEQ_METRIC, DataType.Int64)])
DEVICE = MetricTable([
    MetricDef("spindle_speed", DataType.Double, 21),
    MetricDef("program", DataType.String, 22),
    MetricDef("enable", DataType.Boolean, 23),
    MetricDef("count", DataType.UInt32, 24),
    MetricDef("offset", DataType.Int16, 25),
    MetricDef("gain", DataType.Float, 26),
])


def test_ncmd_rebirth_by_name() -> None:
    cmd = decode_command(encode_command(timestamp=TS, metrics=[Metric(REBIRTH_METRIC, None, DataType.Boolean, True)]), NODE)
    assert cmd.timestamp == TS
    assert cmd.value_of(REBIRTH_METRIC) is True
    assert cmd.writes[0].datatype == DataType.Boolean


def test_dcmd_by_alias_is_typed_from_the_birth() -> None:
    data = encode_command(timestamp=TS, metrics=[
        Metric(alias=21, datatype=DataType.Double, value=1200.0),
        Metric(alias=25, datatype=DataType.Int16, value=-3),
        Metric(alias=22, datatype=DataType.String, value="O1000"),
    ])
    cmd = decode_command(data, DEVICE)
    assert [(w.name, w.value) for w in cmd.writes] == [("spindle_speed", 1200.0), ("offset", -3), ("program", "O1000")]


def test_command_accepts_the_field_variants_hosts_use() -> None:
    p = pb.Payload(timestamp=TS)
    p.metrics.add(alias=24).long_value = 7  # Tahu JS puts UInt32 in long_value
    p.metrics.add(name="spindle_speed").float_value = 1.5  # a float for a Double
    p.metrics.add(alias=26, datatype=DataType.Float).double_value = 0.25
    cmd = decode_command(p.SerializeToString(), DEVICE)
    assert [w.value for w in cmd.writes] == [7, 1.5, 0.25]


def _cmd(**fields: Any) -> bytes:
    p = pb.Payload(timestamp=TS)
    m = p.metrics.add()
    for k, v in fields.items():
        setattr(m, k, v)
    return p.SerializeToString()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xff\xff\xff", "malformed Sparkplug B payload"),
        (b"", "no metrics"),
        (pb.Payload(timestamp=TS).SerializeToString(), "no metrics"),
        (_cmd(boolean_value=True), "neither a name nor an alias"),
        (_cmd(name="nope", boolean_value=True), "'nope': was not birthed"),
        (_cmd(alias=99, boolean_value=True), "alias 99: was not birthed"),
        (_cmd(alias=23, name="program", boolean_value=True), "alias 23 belongs to 'enable'"),
        (_cmd(alias=23, datatype=DataType.Int32, int_value=1), "states datatype Int32 but was birthed as Boolean"),
        (_cmd(alias=23, datatype=77, int_value=1), "unknown datatype 77"),
        (_cmd(alias=23, is_null=True), "cannot write null"),
        (_cmd(alias=23), "has no value"),
        (_cmd(alias=23, int_value=1), "Boolean value sent in int_value"),
        (_cmd(alias=21, string_value="fast"), "Double value sent in string_value"),
        (_cmd(alias=25, int_value=40000), "out of range for Int16"),
        (_cmd(alias=24, long_value=2**32), "out of range for UInt32"),
        (_cmd(alias=26, double_value=1e39), "out of range for Float"),
        (b"\x12\x07\x0a\x03\xff\xfe\xfdp\x01", "not valid UTF-8"),
    ],
)
def test_malformed_or_unbirthed_commands_are_refused_with_a_clear_error(data: bytes, match: str) -> None:
    with pytest.raises(CommandError, match=match):
        decode_command(data, DEVICE)


def test_one_bad_metric_refuses_the_whole_command() -> None:
    data = encode_command(timestamp=TS, metrics=[Metric(alias=21, datatype=DataType.Double, value=1.0),
                                                 Metric(alias=99, datatype=DataType.Double, value=2.0)])
    with pytest.raises(CommandError, match="alias 99"):
        decode_command(data, DEVICE)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_command_decoder(data: bytes) -> None:
    try:
        cmd = decode_command(data, DEVICE)
    except CommandError:
        return
    assert cmd.writes
    assert all(w.name in DEVICE.by_name for w in cmd.writes)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_payload_decoder(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_payload(data)


def test_state_message_parsing() -> None:
    s = decode_state(b'{"online": true, "timestamp": 1764012938123}')
    assert s.online
    assert s.timestamp == 1764012938123
    for bad, match in [(b"ONLINE", "not JSON"), (b"[]", "not a JSON object"),
                       (b'{"online": "yes", "timestamp": 1}', "'online'"),
                       (b'{"online": false}', "'timestamp'"), (b'{"online": false, "timestamp": -1}', "'timestamp'")]:
        with pytest.raises(DecodeError, match=match):
            decode_state(bad)


# -- encode_data_items: the DATA fast path ------------------------------------------------------

_DATA_TYPES = [
    *POINT_DATATYPES.values(),
    *(DataType[n] for n in ("Int8", "Int16", "Int32", "UInt8", "UInt16", "UInt32", "UInt64", "Float", "DateTime")),
]
_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.binary(max_size=5),
)


def _outcome(fn: Any) -> bytes | str:
    try:
        result: bytes = fn()
        return result
    except EncodeError:
        return "EncodeError"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 1000), st.sampled_from(_DATA_TYPES), _ANY_VALUE, st.booleans()),
        max_size=8,
    )
)
def test_encode_data_items_is_byte_identical_to_encode_data(items: list[tuple[int, int, Any, bool]]) -> None:
    """Plain (alias, datatype, value) tuples, mixed with Metrics, encode exactly as the
    same values as Metrics; a value that does not fit fails both ways."""
    ts = 1_764_012_938_123
    quality = {QUALITY_KEY: PropertyValue(DataType.Int32, 0)}
    mixed: list[Any] = []
    metrics: list[Metric] = []
    for alias, dt, value, as_metric in items:
        m = Metric(alias=alias, datatype=DataType(dt), value=value, timestamp=ts, properties=quality if as_metric else None)
        metrics.append(m)
        mixed.append(m if as_metric else (alias, dt, value))
    assert _outcome(lambda: encode_data_items(timestamp=ts, items=mixed)) == _outcome(
        lambda: encode_data(timestamp=ts, metrics=metrics)
    )
