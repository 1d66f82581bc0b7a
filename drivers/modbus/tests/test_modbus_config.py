"""Config models and the plugin's config-time checks (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from cellctl_modbus.config import ModbusAddress, ModbusConnection, ModbusOptions
from cellctl_modbus.plugin import plugin
from modbus_testutil import device_ctx, spec
from pydantic import ValidationError

from cellctl.driver import DriverPlugin


def addr(**kw: Any) -> ModbusAddress:
    return ModbusAddress.model_validate(kw)


def test_address_defaults() -> None:
    a = addr(table="coil", start=3)
    assert (a.type, a.order, a.count) == ("bool", "ABCD", 1)
    a = addr(table="holding", start=10, type="float64", order="DCBA")
    assert (a.count, a.end) == (4, 14)
    assert addr(table="input", start=0, type="string", length=8).count == 8


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"table": "holding", "start": 0}, "needs a 'type'"),
        ({"table": "holding", "start": 0, "type": "bool"}, "type bool is for coil/discrete"),
        ({"table": "coil", "start": 0, "type": "int16"}, "holds single bits: type must be bool"),
        ({"table": "holding", "start": 0, "type": "bit"}, "type bit needs 'bit'"),
        ({"table": "holding", "start": 0, "type": "int16", "bit": 3}, "'bit' only applies to type bit"),
        ({"table": "holding", "start": 0, "type": "bit", "bit": 16}, "less than or equal to 15"),
        ({"table": "holding", "start": 0, "type": "string"}, "type string needs 'length'"),
        ({"table": "holding", "start": 0, "type": "int32", "length": 2}, "'length' only applies"),
        ({"table": "holding", "start": 65535, "type": "int32"}, "runs past address 65535"),
        ({"table": "holding", "start": 65536, "type": "int16"}, "less than or equal to 65535"),
        ({"table": "holding", "start": 0, "type": "int16", "order": "BACD"}, "ABCD"),
        ({"table": "holding", "start": 0, "type": "int16", "unit": 1}, "Extra inputs"),
        ({"table": "register", "start": 0, "type": "int16"}, "holding"),
    ],
)
def test_address_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModbusAddress.model_validate(data)


def test_address_is_frozen() -> None:
    a = addr(table="coil", start=3)
    with pytest.raises(ValidationError):
        a.start = 4


def test_connection_tcp_and_rtu() -> None:
    c = ModbusConnection.model_validate({"transport": "tcp", "host": "10.0.0.5"})
    assert (c.port, c.unit) == (502, 1)
    r = ModbusConnection.model_validate({"transport": "rtu", "serial_port": "/dev/ttyUSB0", "unit": 7})
    assert (r.baudrate, r.parity, r.stopbits, r.bytesize) == (19200, "E", 1, 8)
    assert r.describe() == "rtu /dev/ttyUSB0 19200 8E1 unit 7"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"transport": "tcp"}, "needs 'host'"),
        ({"transport": "rtu"}, "needs 'serial_port'"),
        ({"transport": "tcp", "host": "h", "baudrate": 9600}, "baudrate: only for transport rtu"),
        (
            {"transport": "rtu", "serial_port": "/dev/x", "host": "h", "port": 1},
            "host, port: only for transport tcp",
        ),
        ({"transport": "rtu", "serial_port": "/dev/x", "unit": 0}, "broadcast"),
        ({"transport": "tcp", "host": "h", "unit": 248}, "less than or equal to 247"),
        ({"transport": "rtu", "serial_port": "/dev/x", "parity": "M"}, "'N', 'E' or 'O'"),
        ({"transport": "udp", "host": "h"}, "'tcp' or 'rtu'"),
    ],
)
def test_connection_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModbusConnection.model_validate(data)


def test_options() -> None:
    o = ModbusOptions()
    assert (o.max_registers, o.max_bits, o.max_gap, o.request_mode, o.pause_between_requests) == (
        125,
        2000,
        10,
        "merged",
        0.0,
    )
    assert ModbusOptions.model_validate({"pause_between_requests": "20ms"}).pause_between_requests == 0.02
    for bad in ({"max_registers": 126}, {"max_bits": 0}, {"max_gap": -1}, {"request_mode": "x"}, {"foo": 1}):
        with pytest.raises(ValidationError):
            ModbusOptions.model_validate(bad)


def test_plugin_satisfies_the_protocol() -> None:
    p: DriverPlugin = plugin
    assert p.name == "modbus"
    assert p.address_model is ModbusAddress


@pytest.mark.parametrize(
    ("value_type", "access", "address", "error"),
    [
        ("bool", "r", {"table": "coil", "start": 0}, None),
        ("bool", "rw", {"table": "holding", "start": 0, "type": "bit", "bit": 3}, None),
        ("int", "r", {"table": "holding", "start": 0, "type": "uint32"}, None),
        ("float", "r", {"table": "input", "start": 0, "type": "int16"}, None),
        ("float", "r", {"table": "input", "start": 0, "type": "float32"}, None),
        ("string", "r", {"table": "holding", "start": 0, "type": "string", "length": 4}, None),
        ("int", "r", {"table": "coil", "start": 0}, "carries a bool value, but the point is type int"),
        ("int", "r", {"table": "holding", "start": 0, "type": "float32"}, "carries a float value"),
        ("string", "r", {"table": "holding", "start": 0, "type": "int16"}, "carries an int or float value"),
        ("bool", "w", {"table": "discrete", "start": 0}, "access w on the discrete table"),
        ("int", "rw", {"table": "input", "start": 0, "type": "int16"}, "access rw on the input table"),
    ],
)
def test_check_point(value_type: str, access: str, address: dict[str, Any], error: str | None) -> None:
    got = plugin.check_point(spec(0, value_type, access, **address))
    if error is None:
        assert got is None
    else:
        assert got is not None
        assert error in got


def test_plan_summary() -> None:
    conn = ModbusConnection(transport="tcp", host="h")
    points = [spec(i, "int", table="holding", start=i * 2, type="int32") for i in range(12)]
    points += [spec(12, "bool", table="coil", start=100)]
    points += [spec(13, "int", table="holding", start=33, type="int16")]  # gap of 10: merged
    assert plugin.plan_summary(device_ctx(conn, points)) == [
        "holding 0..33 (34 registers, 13 points)",
        "coil 100..100 (1 bit, 1 point)",
    ]
    assert len(plugin.plan_summary(device_ctx(conn, points, request_mode="per_point"))) == 14


def test_plan_summary_rejects_a_point_too_big_for_the_options() -> None:
    conn = ModbusConnection(transport="tcp", host="h")
    points = [spec(0, "string", table="holding", start=0, type="string", length=100)]
    assert plugin.plan_summary(device_ctx(conn, points)) == ["holding 0..99 (100 registers, 1 point)"]
    with pytest.raises(ValueError, match="more than one request may read \\(50\\)"):
        plugin.plan_summary(device_ctx(conn, points, max_registers=50))


def test_registered_under_the_entry_point() -> None:
    from cellctl.plugins import load_driver

    assert load_driver("modbus") is plugin
