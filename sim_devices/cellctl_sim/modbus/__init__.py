"""Simulated Modbus devices (TCP and RTU over a pty) with fault injection.

    async with SimModbusServer({1: "energy-meter", 2: "machine-plc"}, tick=0.1, seed=1) as sim:
        port = await sim.serve_tcp()          # 127.0.0.1, a free port
        sim.unit(2).value("good_parts")       # what a correct client decodes now
"""

from cellctl_sim.modbus.devices import DEVICE_TYPES, DeviceModel
from cellctl_sim.modbus.faults import ExceptionRule, Faults
from cellctl_sim.modbus.registers import Order, Point, RegisterMap, Table, Value, WireType
from cellctl_sim.modbus.server import DEFAULT_UNITS, Listener, SimModbusServer
from cellctl_sim.modbus.traffic import Traffic
from cellctl_sim.modbus.unit import SimUnit

__all__ = [
    "DEFAULT_UNITS",
    "DEVICE_TYPES",
    "DeviceModel",
    "ExceptionRule",
    "Faults",
    "Listener",
    "Order",
    "Point",
    "RegisterMap",
    "SimModbusServer",
    "SimUnit",
    "Table",
    "Traffic",
    "Value",
    "WireType",
]
