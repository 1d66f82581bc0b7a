"""Pure conversions between OPC UA and cellctl: status codes to quality, received values
to a point's value type, and values to write into a node's built-in data type.

No asyncua import: built-in types are named by their OPC UA numbers (Part 6, 5.1.2),
which are also the ns=0 NodeIds of the data types, so tables here are checkable by
property tests without a server.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import uuid
from collections.abc import Callable
from enum import IntEnum
from typing import Any, Final

from cellctl.driver import Quality

_SEVERITY_MASK: Final = 0xC000_0000
_CODE_MASK: Final = 0xFFFF_0000


def quality_of(code: int) -> Quality:
    """Severity bits of a StatusCode (Part 4, 7.39): 00 good, 01 uncertain, 1x bad."""
    severity = code & _SEVERITY_MASK
    if severity == 0:
        return Quality.GOOD
    if severity == 0x4000_0000:
        return Quality.UNCERTAIN
    return Quality.BAD


def code_only(code: int) -> int:
    """The status without its info bits (limit, overflow, ...), for naming it."""
    return code & _CODE_MASK


class Builtin(IntEnum):
    """OPC UA built-in data types (their ns=0 numeric NodeIds are the same numbers)."""

    Boolean = 1
    SByte = 2
    Byte = 3
    Int16 = 4
    UInt16 = 5
    Int32 = 6
    UInt32 = 7
    Int64 = 8
    UInt64 = 9
    Float = 10
    Double = 11
    String = 12
    DateTime = 13
    Guid = 14
    ByteString = 15
    XmlElement = 16
    NodeId = 17
    ExpandedNodeId = 18
    StatusCode = 19
    QualifiedName = 20
    LocalizedText = 21
    ExtensionObject = 22
    DataValue = 23
    Variant = 24
    DiagnosticInfo = 25


INT_RANGES: Final[dict[Builtin, tuple[int, int]]] = {
    Builtin.SByte: (-(2**7), 2**7 - 1),
    Builtin.Byte: (0, 2**8 - 1),
    Builtin.Int16: (-(2**15), 2**15 - 1),
    Builtin.UInt16: (0, 2**16 - 1),
    Builtin.Int32: (-(2**31), 2**31 - 1),
    Builtin.UInt32: (0, 2**32 - 1),
    Builtin.Int64: (-(2**63), 2**63 - 1),
    Builtin.UInt64: (0, 2**64 - 1),
}
_FLOAT32_MAX: Final = 3.4028234663852886e38

# Data types cellctl can map to a point value type, for `cellctl browse --profile-skeleton`.
POINT_TYPE_OF: Final[dict[Builtin, str]] = {
    Builtin.Boolean: "bool",
    **dict.fromkeys(INT_RANGES, "int"),
    Builtin.Float: "float",
    Builtin.Double: "float",
    Builtin.String: "string",
    Builtin.LocalizedText: "string",
    Builtin.DateTime: "string",
    Builtin.Guid: "string",
    Builtin.NodeId: "string",
    Builtin.QualifiedName: "string",
    Builtin.StatusCode: "int",
}


def text_of(value: Any) -> str:
    """A received value as a string point's value."""
    if isinstance(value, str):
        return value
    text = getattr(value, "Text", None)  # LocalizedText
    if text is not None or type(value).__name__ == "LocalizedText":
        return text or ""
    name = getattr(value, "Name", None)  # QualifiedName
    if isinstance(name, str):
        return name
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    to_string = getattr(value, "to_string", None)  # NodeId
    if callable(to_string):
        return str(to_string())
    return str(value)


class Unconvertible(ValueError):
    """A received value that does not fit the point's value type (that point goes bad)."""


def _to_int(value: Any) -> int:
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    value_of = getattr(value, "value", None)  # StatusCode, enums
    if isinstance(value_of, int):
        return value_of
    raise Unconvertible(f"value {value!r} is not an integer")


def _to_float(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    raise Unconvertible(f"value {value!r} is not a number")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise Unconvertible(f"value {value!r} is not a boolean")


def _to_string(value: Any) -> str:
    return text_of(value)


ACCEPTED: Final[dict[str, frozenset[type]]] = {
    "bool": frozenset({bool}),
    "int": frozenset({int}),
    "float": frozenset({float, int}),
    "string": frozenset({str}),
}
CONVERT: Final[dict[str, Callable[[Any], Any]]] = {
    "bool": _to_bool,
    "int": _to_int,
    "float": _to_float,
    "string": _to_string,
}


def received(point_type: str, value: Any) -> Any:
    """A received value as `point_type` (the slow path; the fast path checks the type
    against ACCEPTED first). Arrays and structures are refused: a point is one scalar."""
    if isinstance(value, list):
        raise Unconvertible(f"array value ({len(value)} elements) for a scalar point")
    if value is None:
        raise Unconvertible("the server sent no value (null)")
    return CONVERT[point_type](value)


def to_builtin(value: Any, builtin: Builtin, what: str) -> Any:
    """`value` as a Python value asyncua encodes as `builtin`; ValueError quoting the value
    when it does not fit (nothing is sent then)."""
    if builtin == Builtin.Boolean:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{what}: {value!r} is not a Boolean (true/false)")
    if builtin in INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{what}: {value!r} is not an integer for data type {builtin.name}")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{what}: {value!r} is not an integer for data type {builtin.name}")
            value = int(value)
        low, high = INT_RANGES[builtin]
        if not low <= value <= high:
            raise ValueError(f"{what}: {value!r} is outside {builtin.name} ({low}..{high})")
        return value
    if builtin in (Builtin.Float, Builtin.Double):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{what}: {value!r} is not a number for data type {builtin.name}")
        number = float(value)
        if builtin == Builtin.Float and math.isfinite(number) and abs(number) > _FLOAT32_MAX:
            raise ValueError(f"{what}: {value!r} is outside the range of data type Float (32 bits)")
        return number
    if builtin in (Builtin.String, Builtin.XmlElement):
        if not isinstance(value, str):
            raise ValueError(f"{what}: {value!r} is not a string for data type {builtin.name}")
        return value
    if builtin == Builtin.DateTime:
        if isinstance(value, dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(value, dt.UTC)
        if isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{what}: {value!r} is not an ISO 8601 date and time") from None
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
        raise ValueError(f"{what}: {value!r} is not a date and time (epoch seconds or ISO 8601)")
    if builtin == Builtin.ByteString:
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except ValueError:
                raise ValueError(f"{what}: {value!r} is not base64 for data type ByteString") from None
        raise ValueError(f"{what}: {value!r} is not bytes (or base64 text) for data type ByteString")
    if builtin == Builtin.Guid:
        try:
            return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
        except ValueError:
            raise ValueError(f"{what}: {value!r} is not a GUID") from None
    raise ValueError(f"{what}: writing data type {builtin.name} is not supported")
