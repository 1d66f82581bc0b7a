"""Typed Sparkplug B payloads: what an edge node sends and the commands it accepts.

The generated protobuf classes (`sparkplug_b_pb2`) are the wire format; this module is
the only place that touches them. Callers work with small frozen dataclasses and
Python values, and get one exception family (`SparkplugError`) that says which metric
was wrong and why.

Value mapping (specification chapter "Datatype Details"):

    Int8/16/32          int_value   (uint32, negatives as 32-bit two's complement)
    Int64               long_value  (uint64, negatives as 64-bit two's complement)
    UInt8/16/32         int_value   (decoding also accepts long_value, as Tahu JS sends)
    UInt64, DateTime    long_value
    Float / Double      float_value / double_value
    Boolean             boolean_value
    String, Text, UUID  string_value
    Bytes, File         bytes_value

cellctl's point types map to Boolean, Int64, Double and String (`POINT_DATATYPES`).
DataSet, Template and the array types are in the schema but not produced by cellctl;
the helpers refuse them with a clear error instead of guessing.

DATA payloads are encoded without `seq` ("storage form") so they can wait in the
outbox; `with_seq` appends the sequence number at publish time, which yields exactly
the bytes a direct encode with that seq would (seq is field 3, serialised last).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal, TypeAlias

import orjson
from google.protobuf.message import DecodeError as _PbDecodeError

from cellctl.sparkplug import sparkplug_b_pb2 as pb

# -- vocabulary -----------------------------------------------------------------------


class DataType(IntEnum):
    """Sparkplug datatype codes (mirrors the schema's enum, typed for callers)."""

    Unknown = 0
    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12
    DateTime = 13
    Text = 14
    UUID = 15
    DataSet = 16
    Bytes = 17
    File = 18
    Template = 19
    PropertySet = 20
    PropertySetList = 21
    Int8Array = 22
    Int16Array = 23
    Int32Array = 24
    Int64Array = 25
    UInt8Array = 26
    UInt16Array = 27
    UInt32Array = 28
    UInt64Array = 29
    FloatArray = 30
    DoubleArray = 31
    BooleanArray = 32
    StringArray = 33
    DateTimeArray = 34


class QualityCode(IntEnum):
    """Values of the metric property `Quality` (type Int32); the only three the spec allows."""

    BAD = 0
    GOOD = 192
    STALE = 500


# cellctl profile point type -> Sparkplug datatype. Int64 rather than the narrowest type
# that fits: a point's datatype is fixed by its BIRTH for the whole session, profile ints
# have no declared width, and scaled values can outgrow any width guessed from limits.
# Small non-negative values cost the same varint bytes whatever the declared width.
POINT_DATATYPES: Final[Mapping[str, DataType]] = {
    "bool": DataType.Boolean,
    "int": DataType.Int64,
    "float": DataType.Double,
    "string": DataType.String,
}

# cellctl quality -> Sparkplug quality code. `uncertain` (a readable value outside its
# declared limits) is GOOD in Sparkplug's three-value scheme, as OPC "engineering units
# exceeded" is commonly mapped; the cellctl detail travels in QUALITY_DETAIL_KEY.
QUALITY_CODES: Final[Mapping[str, QualityCode]] = {
    "good": QualityCode.GOOD,
    "uncertain": QualityCode.GOOD,
    "bad": QualityCode.BAD,
}
QUALITY_KEY: Final = "Quality"
QUALITY_DETAIL_KEY: Final = "cellctl/quality"
QUALITY_REASON_KEY: Final = "cellctl/reason"

BDSEQ_METRIC: Final = "bdSeq"
REBIRTH_METRIC: Final = "Node Control/Rebirth"
SEQ_MODULUS: Final = 256

Scalar: TypeAlias = bool | int | float | str | bytes
PropertyData: TypeAlias = (
    "bool | int | float | str | Mapping[str, PropertyValue] | Sequence[Mapping[str, PropertyValue]] | None"
)


class SparkplugError(ValueError):
    """Base of every error this module raises. `metric` names the metric concerned
    (name or `alias N`), when there is one."""

    def __init__(self, message: str, *, metric: str | None = None) -> None:
        super().__init__(f"metric {metric}: {message}" if metric else message)
        self.metric = metric
        self.detail = message


class EncodeError(SparkplugError):
    """Refused to encode: the caller's value does not fit the metric's datatype."""


class DecodeError(SparkplugError):
    """The bytes are not a Sparkplug B payload we can read."""


class CommandError(DecodeError):
    """An NCMD/DCMD that is malformed or asks for something not birthed; nothing of it
    may be executed."""


# -- typed objects ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PropertyValue:
    """One property of a metric. `value` None means null (`is_null`)."""

    datatype: DataType
    value: PropertyData = None


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric as sent or received. `value` None means null (`is_null`).

    `datatype` is needed to encode even where it is not sent (DATA, CMD)."""

    name: str | None = None
    alias: int | None = None
    datatype: DataType | None = None
    value: Scalar | None = None
    timestamp: int | None = None
    properties: Mapping[str, PropertyValue] | None = None
    is_historical: bool = False
    is_transient: bool = False

    @property
    def label(self) -> str:
        return repr(self.name) if self.name is not None else f"alias {self.alias}"


@dataclass(frozen=True, slots=True)
class Payload:
    """A decoded Sparkplug B payload."""

    timestamp: int | None
    seq: int | None
    metrics: tuple[Metric, ...]
    uuid: str | None = None
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class MetricDef:
    """A metric as birthed: what DATA encoding and CMD validation look up."""

    name: str
    datatype: DataType
    alias: int | None = None


class MetricTable:
    """The metrics of one BIRTH (node or device), by name and by alias."""

    __slots__ = ("by_alias", "by_name")

    def __init__(self, defs: Iterable[MetricDef]) -> None:
        self.by_name: dict[str, MetricDef] = {}
        self.by_alias: dict[int, MetricDef] = {}
        for d in defs:
            if d.name in self.by_name:
                raise EncodeError("defined twice", metric=repr(d.name))
            self.by_name[d.name] = d
            if d.alias is not None:
                other = self.by_alias.get(d.alias)
                if other is not None:
                    raise EncodeError(
                        f"alias {d.alias} is already used by {other.name!r}", metric=repr(d.name)
                    )
                self.by_alias[d.alias] = d

    def __len__(self) -> int:
        return len(self.by_name)

    def __iter__(self) -> Iterator[MetricDef]:
        return iter(self.by_name.values())


@dataclass(frozen=True, slots=True)
class MetricWrite:
    """One validated write of an NCMD/DCMD, resolved to a birthed metric."""

    name: str
    alias: int | None
    datatype: DataType
    value: Scalar
    timestamp: int | None


@dataclass(frozen=True, slots=True)
class Command:
    """A validated NCMD/DCMD: every write names a birthed metric with a value of its type."""

    timestamp: int | None
    writes: tuple[MetricWrite, ...]

    def value_of(self, name: str) -> Scalar | None:
        for w in self.writes:
            if w.name == name:
                return w.value
        return None


@dataclass(frozen=True, slots=True)
class HostState:
    """A primary host application's STATE message (Sparkplug 3.0 JSON form)."""

    online: bool
    timestamp: int


# -- sequence numbers -------------------------------------------------------------------


def next_seq(seq: int) -> int:
    """The sequence number after `seq`: 0..255, wrapping 255 -> 0 (also used for bdSeq)."""
    return (seq + 1) % SEQ_MODULUS


class SeqCounter:
    """The edge node's message sequence, shared by every N* and D* message but NDEATH.

    `birth()` gives the NBIRTH its 0; every later message takes `next()`."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def birth(self) -> int:
        self._next = 1
        return 0

    def next(self) -> int:
        seq = self._next
        self._next = (seq + 1) % SEQ_MODULUS
        return seq

    @property
    def upcoming(self) -> int:
        return self._next


# -- value encoding -----------------------------------------------------------------------

_U32: Final = (1 << 32) - 1
_U64: Final = (1 << 64) - 1
_F32_MAX: Final = 3.4028234663852886e38

# datatype -> (oneof field, min, max, two's complement mask or 0)
_INT_KINDS: Final[Mapping[int, tuple[str, int, int, int]]] = {
    DataType.Int8: ("int_value", -(1 << 7), (1 << 7) - 1, _U32),
    DataType.Int16: ("int_value", -(1 << 15), (1 << 15) - 1, _U32),
    DataType.Int32: ("int_value", -(1 << 31), (1 << 31) - 1, _U32),
    DataType.Int64: ("long_value", -(1 << 63), (1 << 63) - 1, _U64),
    DataType.UInt8: ("int_value", 0, (1 << 8) - 1, 0),
    DataType.UInt16: ("int_value", 0, (1 << 16) - 1, 0),
    DataType.UInt32: ("int_value", 0, _U32, 0),
    DataType.UInt64: ("long_value", 0, _U64, 0),
    DataType.DateTime: ("long_value", 0, _U64, 0),
}
_SIGNED_BITS: Final[Mapping[int, int]] = {
    DataType.Int8: 8,
    DataType.Int16: 16,
    DataType.Int32: 32,
    DataType.Int64: 64,
}
_FLOAT_FIELDS: Final[Mapping[int, str]] = {DataType.Float: "float_value", DataType.Double: "double_value"}
_STRING_TYPES: Final = frozenset({DataType.String, DataType.Text, DataType.UUID})
_BYTES_TYPES: Final = frozenset({DataType.Bytes, DataType.File})
_METRIC_TYPES: Final = frozenset(
    {*_INT_KINDS, *_FLOAT_FIELDS, DataType.Boolean, *_STRING_TYPES, *_BYTES_TYPES}
)
_PROPERTY_TYPES: Final = frozenset(
    {
        *_INT_KINDS,
        *_FLOAT_FIELDS,
        DataType.Boolean,
        *_STRING_TYPES,
        DataType.PropertySet,
        DataType.PropertySetList,
    }
)

_ScalarHolder: TypeAlias = "pb.Payload.Metric | pb.Payload.PropertyValue"


def _type_name(datatype: int) -> str:
    try:
        return DataType(datatype).name
    except ValueError:
        return f"unknown datatype {datatype}"


def _set_scalar(msg: _ScalarHolder, datatype: int, value: object, label: str) -> None:
    """Put `value` into the oneof field `datatype` calls for, refusing what does not fit."""
    kind = _INT_KINDS.get(datatype)
    if kind is not None:
        field, lo, hi, mask = kind
        if not isinstance(value, int) or isinstance(value, bool):
            raise EncodeError(
                f"{_type_name(datatype)} needs an int, got {type(value).__name__}", metric=label
            )
        if not lo <= value <= hi:
            raise EncodeError(f"{value} is out of range for {_type_name(datatype)}", metric=label)
        setattr(msg, field, value & mask if value < 0 else value)
        return
    ffield = _FLOAT_FIELDS.get(datatype)
    if ffield is not None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise EncodeError(
                f"{_type_name(datatype)} needs a number, got {type(value).__name__}", metric=label
            )
        setattr(msg, ffield, value)
        return
    if datatype == DataType.Boolean:
        if not isinstance(value, bool):
            raise EncodeError(f"Boolean needs a bool, got {type(value).__name__}", metric=label)
        msg.boolean_value = value
        return
    if datatype in _STRING_TYPES:
        if not isinstance(value, str):
            raise EncodeError(f"{_type_name(datatype)} needs a str, got {type(value).__name__}", metric=label)
        msg.string_value = value
        return
    if datatype in _BYTES_TYPES and isinstance(msg, pb.Payload.Metric):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise EncodeError(f"{_type_name(datatype)} needs bytes, got {type(value).__name__}", metric=label)
        msg.bytes_value = bytes(value)
        return
    raise EncodeError(f"datatype {_type_name(datatype)} is not supported by cellctl's codec", metric=label)


def _fill_properties(ps: pb.Payload.PropertySet, props: Mapping[str, PropertyValue], label: str) -> None:
    for key, pv in props.items():
        ps.keys.append(key)
        _fill_property(ps.values.add(), pv, f"{label} property {key!r}")


def _fill_property(msg: pb.Payload.PropertyValue, pv: PropertyValue, label: str) -> None:
    dt = pv.datatype
    if dt not in _PROPERTY_TYPES:
        raise EncodeError(f"datatype {_type_name(dt)} is not allowed for a property", metric=label)
    msg.type = dt
    value = pv.value
    if value is None:
        msg.is_null = True
    elif dt == DataType.PropertySet:
        if not isinstance(value, Mapping):
            raise EncodeError("PropertySet needs a mapping", metric=label)
        _fill_properties(msg.propertyset_value, value, label)
    elif dt == DataType.PropertySetList:
        if isinstance(value, Mapping) or not isinstance(value, Sequence) or isinstance(value, str):
            raise EncodeError("PropertySetList needs a sequence of mappings", metric=label)
        for i, item in enumerate(value):
            _fill_properties(msg.propertysets_value.propertyset.add(), item, f"{label}[{i}]")
    else:
        _set_scalar(msg, dt, value, label)


def _check_u64(value: int, what: str, label: str | None = None) -> None:
    if not 0 <= value <= _U64:
        raise EncodeError(f"{what} {value} is outside 0..2^64-1", metric=label)


_Role: TypeAlias = Literal["birth", "data", "command"]


def _fill_metric(pbm: pb.Payload.Metric, m: Metric, role: _Role, default_ts: int | None) -> None:
    """Write one metric as BIRTH (name, alias, datatype), DATA (alias only) or CMD
    (name or alias) require; every metric of BIRTH/DATA carries a timestamp."""
    label = m.label
    dt = m.datatype
    if dt is None:
        raise EncodeError("has no datatype", metric=label)
    if role == "birth":
        if not m.name:
            raise EncodeError("a BIRTH metric needs a name", metric=label)
        pbm.name = m.name
        if m.alias is not None:
            _check_u64(m.alias, "alias", label)
            pbm.alias = m.alias
        pbm.datatype = dt
    elif role == "data":
        if m.alias is None:
            raise EncodeError("a DATA metric needs an alias (names are sent in BIRTH only)", metric=label)
        _check_u64(m.alias, "alias", label)
        pbm.alias = m.alias
    elif m.alias is not None:
        _check_u64(m.alias, "alias", label)
        pbm.alias = m.alias
    elif m.name:
        pbm.name = m.name
    else:
        raise EncodeError("a command metric needs a name or an alias", metric=label)
    ts = m.timestamp if m.timestamp is not None else default_ts
    if ts is not None:
        _check_u64(ts, "timestamp", label)
        pbm.timestamp = ts
    if m.is_historical:
        pbm.is_historical = True
    if m.is_transient:
        pbm.is_transient = True
    if m.value is None:
        if dt not in _METRIC_TYPES:
            raise EncodeError(f"datatype {_type_name(dt)} is not supported by cellctl's codec", metric=label)
        pbm.is_null = True
    else:
        _set_scalar(pbm, dt, m.value, label)
    if m.properties:
        _fill_properties(pbm.properties, m.properties, label)


def _payload(timestamp: int | None, seq: int | None) -> pb.Payload:
    p = pb.Payload()
    if timestamp is not None:
        _check_u64(timestamp, "payload timestamp")
        p.timestamp = timestamp
    if seq is not None:
        if not 0 <= seq < SEQ_MODULUS:
            raise EncodeError(f"seq {seq} is outside 0..255")
        p.seq = seq
    return p


def _add_metrics(p: pb.Payload, metrics: Iterable[Metric], role: _Role, default_ts: int | None) -> None:
    add = p.metrics.add
    for m in metrics:
        _fill_metric(add(), m, role, default_ts)


def _check_birth_names(metrics: Sequence[Metric], reserved: Iterable[str] = ()) -> None:
    names: set[str] = set(reserved)
    aliases: set[int] = set()
    for m in metrics:
        if m.name in names:
            raise EncodeError("appears twice in one BIRTH (or uses a reserved name)", metric=m.label)
        if m.name is not None:
            names.add(m.name)
        if m.alias is not None:
            if m.alias in aliases:
                raise EncodeError(f"alias {m.alias} appears twice in one BIRTH", metric=m.label)
            aliases.add(m.alias)


# -- encoders (edge node side) ------------------------------------------------------------


def encode_nbirth(
    *,
    bd_seq: int,
    timestamp: int,
    metrics: Sequence[Metric] = (),
    bd_seq_datatype: DataType = DataType.Int64,
) -> bytes:
    """NBIRTH: seq 0, the session's bdSeq, `Node Control/Rebirth` = false (both without
    alias, so hosts can address them by name), then the node's own metrics."""
    _check_birth_names(metrics, reserved=(BDSEQ_METRIC, REBIRTH_METRIC))
    p = _payload(timestamp, 0)
    _fill_metric(p.metrics.add(), Metric(BDSEQ_METRIC, None, bd_seq_datatype, bd_seq), "birth", timestamp)
    _fill_metric(p.metrics.add(), Metric(REBIRTH_METRIC, None, DataType.Boolean, False), "birth", timestamp)
    _add_metrics(p, metrics, "birth", timestamp)
    return p.SerializeToString()


def encode_dbirth(*, seq: int, timestamp: int, metrics: Sequence[Metric]) -> bytes:
    """DBIRTH: every metric the device will report, with name, alias, datatype and value."""
    _check_birth_names(metrics)
    p = _payload(timestamp, seq)
    _add_metrics(p, metrics, "birth", timestamp)
    return p.SerializeToString()


def encode_data(*, timestamp: int, metrics: Iterable[Metric], seq: int | None = None) -> bytes:
    """NDATA/DDATA: changed metrics by alias only. Without `seq` this is the storage form
    the outbox keeps; `with_seq` completes it when it is published."""
    p = _payload(timestamp, seq)
    _add_metrics(p, metrics, "data", timestamp)
    return p.SerializeToString()


# One DATA value of a birthed metric: (alias, datatype, value); the metric's timestamp is
# the payload's. What `DataBuilder` produces for the plain values of a scan, instead of
# a `Metric` each (measured: building the Metric and `_fill_metric`'s checks cost more
# than the protobuf itself).
PlainValue: TypeAlias = tuple[int, int, "Scalar | None"]


def encode_data_items(*, timestamp: int, items: Iterable[Metric | PlainValue]) -> bytes:
    """`encode_data` (storage form, no seq) of metrics and plain values, in their order,
    byte-identical to `encode_data` of the same values as `Metric(alias=, datatype=,
    value=, timestamp=timestamp)`. Aliases come from a BIRTH (checked there). Raises
    EncodeError like `encode_data` for a value that does not fit its datatype."""
    p = _payload(timestamp, None)
    add = p.metrics.add
    int_kinds, float_fields = _INT_KINDS, _FLOAT_FIELDS
    for item in items:
        if isinstance(item, Metric):
            _fill_metric(add(), item, "data", timestamp)
            continue
        alias, dt, value = item
        pbm = add()
        pbm.alias = alias
        pbm.timestamp = timestamp
        kind = int_kinds.get(dt)
        if kind is not None and type(value) is int:
            field, lo, hi, mask = kind
            if lo <= value <= hi:
                setattr(pbm, field, value & mask if value < 0 else value)
                continue
        elif type(value) is float:
            ffield = float_fields.get(dt)
            if ffield is not None:
                setattr(pbm, ffield, value)
                continue
        # everything else (None, bool, str, bytes, out of range, wrong type): the full path
        if value is None:
            if dt not in _METRIC_TYPES:
                unsupported = f"datatype {_type_name(dt)} is not supported by cellctl's codec"
                raise EncodeError(unsupported, metric=f"alias {alias}")
            pbm.is_null = True
        else:
            _set_scalar(pbm, dt, value, f"alias {alias}")
    return p.SerializeToString()


def encode_ndeath(
    *, bd_seq: int, timestamp: int | None = None, bd_seq_datatype: DataType = DataType.Int64
) -> bytes:
    """NDEATH (the MQTT Will, and the clean-shutdown message): only bdSeq, never a seq."""
    p = _payload(timestamp, None)
    _fill_metric(p.metrics.add(), Metric(BDSEQ_METRIC, None, bd_seq_datatype, bd_seq), "birth", timestamp)
    return p.SerializeToString()


def encode_ddeath(*, seq: int, timestamp: int) -> bytes:
    """DDEATH: no metrics, just the node's next seq and the time."""
    return _payload(timestamp, seq).SerializeToString()


def encode_command(*, timestamp: int | None, metrics: Iterable[Metric]) -> bytes:
    """NCMD/DCMD as a host would send them (for tests and tools): no seq, alias or name."""
    p = _payload(timestamp, None)
    _add_metrics(p, metrics, "command", None)
    return p.SerializeToString()


def _seq_field(seq: int) -> bytes:
    # field 3, wire type 0 (varint): tag 0x18; 0..255 needs one or two varint bytes
    return bytes((0x18, seq)) if seq < 0x80 else bytes((0x18, (seq & 0x7F) | 0x80, seq >> 7))


_SEQ_FIELDS: Final = tuple(_seq_field(s) for s in range(SEQ_MODULUS))


def with_seq(storage_form: bytes, seq: int) -> bytes:
    """Complete a payload encoded without seq (`encode_data(seq=None)`) for publishing.

    Appending a field to a serialised message is a valid protobuf merge, and since seq
    is field 3 the result is byte-identical to encoding with the seq directly."""
    return storage_form + _SEQ_FIELDS[seq]


def to_historical(
    storage_form: bytes, *, seq: int, known_aliases: Mapping[int, MetricDef] | None = None
) -> tuple[bytes, int]:
    """Re-encode a stored DATA payload for replay after a new BIRTH: every metric marked
    `is_historical`, the new session's `seq`, and (given the current BIRTH's aliases)
    metrics that are no longer birthed left out. Returns (payload, metrics left out);
    a payload with no metric left is still returned, so the caller can ack and count it."""
    if not 0 <= seq < SEQ_MODULUS:
        raise EncodeError(f"seq {seq} is outside 0..255")
    p = _parse(storage_form)
    dropped = 0
    if known_aliases is not None:
        for i in range(len(p.metrics) - 1, -1, -1):
            m = p.metrics[i]
            if not (m.HasField("alias") and m.alias in known_aliases):
                del p.metrics[i]
                dropped += 1
    for m in p.metrics:
        m.is_historical = True
    p.seq = seq
    return p.SerializeToString(), dropped


def metric_count(payload: bytes) -> int:
    """How many metrics a payload carries (a replayed DATA left empty is not sent)."""
    return len(_parse(payload).metrics)


def quality_properties(quality: str, reason: str | None = None) -> dict[str, PropertyValue]:
    """Metric properties for a cellctl quality: the spec's `Quality` (Int32 code) plus,
    when it is not good, cellctl's own detail and reason (Sparkplug has no 'uncertain')."""
    code = QUALITY_CODES.get(quality)
    if code is None:
        raise EncodeError(f"unknown quality {quality!r} (expected good, uncertain or bad)")
    props = {QUALITY_KEY: PropertyValue(DataType.Int32, int(code))}
    if quality != "good":
        props[QUALITY_DETAIL_KEY] = PropertyValue(DataType.String, quality)
    if reason:
        props[QUALITY_REASON_KEY] = PropertyValue(DataType.String, reason)
    return props


# -- decoding ---------------------------------------------------------------------------------


def _parse(data: bytes) -> pb.Payload:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"a payload is bytes, got {type(data).__name__}")
    try:
        return pb.Payload.FromString(bytes(data))
    except (_PbDecodeError, RecursionError, ValueError) as exc:
        raise DecodeError(f"malformed Sparkplug B payload ({len(data)} bytes): {exc}") from None


def _text(value: str | bytes, what: str, label: str | None) -> str:
    # proto2 strings are not UTF-8 checked on parse; the runtime hands back bytes then
    if isinstance(value, str):
        return value
    raise DecodeError(f"{what} is not valid UTF-8", metric=label)


def _signed(u: int, bits: int) -> int:
    return u - (1 << bits) if u >> (bits - 1) else u


def _int_from_wire(u: int, field: str, datatype: int, label: str) -> int:
    """Undo the two's complement of a signed type: 32-bit in int_value (as the spec and
    Tahu write Int8..Int32), 64-bit in long_value. A narrower bit pattern (0xFF for an
    Int8 -1) is read as the unsigned number it also is, so it fails the range check:
    an ambiguous value is refused rather than guessed, since commands reach machines."""
    bits = _SIGNED_BITS.get(datatype)
    _, lo, hi, _ = _INT_KINDS[datatype]
    if bits is None:
        value = u
    elif field == "int_value":
        value = _signed(u, 32)
    else:
        value = _signed(u, 64)
    if not lo <= value <= hi:
        raise DecodeError(f"{value} is out of range for {_type_name(datatype)}", metric=label)
    return value


_NUMERIC_FIELDS: Final = frozenset({"int_value", "long_value"})


def _scalar_from(msg: _ScalarHolder, field: str | None, datatype: int | None, label: str) -> Scalar:
    """The typed Python value of a metric/property value field, given its datatype."""
    if field is None:
        raise DecodeError("has no value and is not marked null", metric=label)
    raw = getattr(msg, field)
    if datatype is None or datatype == DataType.Unknown:
        if field in ("string_value",):
            return _text(raw, "string value", label)
        if isinstance(raw, (bool, int, float, str, bytes)):
            return raw
        raise DecodeError(f"{field} needs a datatype to be read", metric=label)
    if datatype in _INT_KINDS:
        if field not in _NUMERIC_FIELDS:
            raise DecodeError(f"{_type_name(datatype)} value sent in {field}", metric=label)
        return _int_from_wire(int(raw), field, datatype, label)
    if datatype in _FLOAT_FIELDS:
        if field not in ("float_value", "double_value"):
            raise DecodeError(f"{_type_name(datatype)} value sent in {field}", metric=label)
        return float(raw)
    if datatype == DataType.Boolean:
        if field != "boolean_value":
            raise DecodeError(f"Boolean value sent in {field}", metric=label)
        return bool(raw)
    if datatype in _STRING_TYPES:
        if field != "string_value":
            raise DecodeError(f"{_type_name(datatype)} value sent in {field}", metric=label)
        return _text(raw, "string value", label)
    if datatype in _BYTES_TYPES:
        if field != "bytes_value":
            raise DecodeError(f"{_type_name(datatype)} value sent in {field}", metric=label)
        return bytes(raw)
    raise DecodeError(f"datatype {_type_name(datatype)} is not supported by cellctl's codec", metric=label)


_MAX_PROPERTY_DEPTH: Final = 8


def _properties_from(ps: pb.Payload.PropertySet, label: str, depth: int = 0) -> dict[str, PropertyValue]:
    if len(ps.keys) != len(ps.values):
        raise DecodeError(f"property set has {len(ps.keys)} keys but {len(ps.values)} values", metric=label)
    if depth > _MAX_PROPERTY_DEPTH:
        raise DecodeError("property sets nested too deeply", metric=label)
    out: dict[str, PropertyValue] = {}
    for key, pv in zip(ps.keys, ps.values, strict=True):
        k = _text(key, "property key", label)
        out[k] = _property_from(pv, f"{label} property {k!r}", depth)
    return out


def _property_from(pv: pb.Payload.PropertyValue, label: str, depth: int) -> PropertyValue:
    dt = pv.type if pv.HasField("type") else DataType.Unknown
    try:
        datatype = DataType(dt)
    except ValueError:
        raise DecodeError(f"unknown datatype {dt}", metric=label) from None
    if pv.is_null:
        return PropertyValue(datatype, None)
    field = pv.WhichOneof("value")
    if field == "propertyset_value":
        return PropertyValue(datatype, _properties_from(pv.propertyset_value, label, depth + 1))
    if field == "propertysets_value":
        return PropertyValue(
            datatype, [_properties_from(s, label, depth + 1) for s in pv.propertysets_value.propertyset]
        )
    if field == "extension_value":
        raise DecodeError("property extension values are not supported", metric=label)
    value = _scalar_from(pv, field, None if dt == DataType.Unknown else dt, label)
    if isinstance(value, bytes):  # the schema gives properties no bytes field
        raise DecodeError("a property cannot hold bytes", metric=label)
    return PropertyValue(datatype, value)


def _metric_from(pbm: pb.Payload.Metric, table: MetricTable | None) -> Metric:
    name = _text(pbm.name, "metric name", None) if pbm.HasField("name") else None
    alias = pbm.alias if pbm.HasField("alias") else None
    label = repr(name) if name is not None else f"alias {alias}"
    datatype: int | None = pbm.datatype if pbm.HasField("datatype") else None
    if datatype is None and table is not None:
        d = table.by_alias.get(alias) if alias is not None else None
        if d is None and name is not None:
            d = table.by_name.get(name)
        datatype = d.datatype if d is not None else None
    dt: DataType | None = None
    if datatype is not None:
        try:
            dt = DataType(datatype)
        except ValueError:
            raise DecodeError(f"unknown datatype {datatype}", metric=label) from None
    value: Scalar | None = None
    if not pbm.is_null:
        value = _scalar_from(pbm, pbm.WhichOneof("value"), dt, label)
    props = _properties_from(pbm.properties, label) if pbm.HasField("properties") else None
    return Metric(
        name=name,
        alias=alias,
        datatype=dt,
        value=value,
        timestamp=pbm.timestamp if pbm.HasField("timestamp") else None,
        properties=props,
        is_historical=pbm.is_historical,
        is_transient=pbm.is_transient,
    )


def decode_payload(data: bytes, *, table: MetricTable | None = None) -> Payload:
    """Any Sparkplug B payload into typed objects. Metrics without a datatype (DATA, CMD)
    are typed through `table` (the BIRTH they refer to) when given, else left raw."""
    p = _parse(data)
    return Payload(
        timestamp=p.timestamp if p.HasField("timestamp") else None,
        seq=p.seq if p.HasField("seq") else None,
        metrics=tuple(_metric_from(m, table) for m in p.metrics),
        uuid=_text(p.uuid, "uuid", None) if p.HasField("uuid") else None,
        body=p.body if p.HasField("body") else None,
    )


def decode_command(data: bytes, table: MetricTable) -> Command:
    """Validate an NCMD/DCMD against the metrics its BIRTH announced.

    Every metric must name (or alias) a birthed metric, agree with its datatype if it
    states one, carry a non-null value of that type and in its range. Any problem raises
    CommandError for the whole command: a partly valid command executes nothing.
    Integers are accepted in int_value or long_value and Float/Double in either float
    field, since host implementations differ there (Tahu JS puts UInt32 in long_value)."""
    try:
        p = _parse(data)
    except DecodeError as exc:
        raise CommandError(exc.detail) from None
    if not p.metrics:
        raise CommandError("command carries no metrics")
    writes: list[MetricWrite] = []
    for i, pbm in enumerate(p.metrics):
        writes.append(_command_write(i, pbm, table))
    return Command(timestamp=p.timestamp if p.HasField("timestamp") else None, writes=tuple(writes))


def _command_write(i: int, pbm: pb.Payload.Metric, table: MetricTable) -> MetricWrite:
    has_name, has_alias = pbm.HasField("name"), pbm.HasField("alias")
    if not has_name and not has_alias:
        raise CommandError(f"metric #{i} has neither a name nor an alias")
    name = pbm.name if has_name else None
    if isinstance(name, bytes):
        raise CommandError(f"metric #{i} has a name that is not valid UTF-8")
    label = repr(name) if name is not None else f"alias {pbm.alias}"
    d: MetricDef | None = None
    if has_alias:
        d = table.by_alias.get(pbm.alias)
        if d is None:
            raise CommandError("was not birthed (unknown alias)", metric=label)
        if name is not None and name != d.name:
            raise CommandError(f"alias {pbm.alias} belongs to {d.name!r}, not {name!r}", metric=label)
    else:
        assert name is not None
        d = table.by_name.get(name)
        if d is None:
            raise CommandError("was not birthed", metric=label)
    if pbm.HasField("datatype") and pbm.datatype != d.datatype:
        raise CommandError(
            f"states datatype {_type_name(pbm.datatype)} but was birthed as {d.datatype.name}", metric=label
        )
    if pbm.is_null:
        raise CommandError("a command cannot write null", metric=label)
    try:
        value = _scalar_from(pbm, pbm.WhichOneof("value"), d.datatype, label)
    except DecodeError as exc:
        raise CommandError(exc.detail, metric=exc.metric) from None
    # a double sent for a Float metric must survive the narrowing it will get
    if (
        d.datatype == DataType.Float
        and isinstance(value, float)
        and math.isfinite(value)
        and abs(value) > _F32_MAX
    ):
        raise CommandError(f"{value} is out of range for Float", metric=label)
    return MetricWrite(
        name=d.name,
        alias=d.alias,
        datatype=d.datatype,
        value=value,
        timestamp=pbm.timestamp if pbm.HasField("timestamp") else None,
    )


def decode_state(data: bytes) -> HostState:
    """A primary host's `spBv1.0/STATE/<host_id>` payload: JSON with a boolean `online`
    and an integer `timestamp` (ms). Anything else raises DecodeError."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"STATE payload is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise DecodeError("STATE payload is not a JSON object")
    online, ts = body.get("online"), body.get("timestamp")
    if not isinstance(online, bool):
        raise DecodeError(f"STATE 'online' must be true or false, got {online!r}")
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
        raise DecodeError(f"STATE 'timestamp' must be a non-negative integer (ms), got {ts!r}")
    return HostState(online=online, timestamp=ts)
