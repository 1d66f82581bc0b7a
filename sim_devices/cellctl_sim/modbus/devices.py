"""The simulated device types: a register map each, and how its values evolve per tick.

Models run on simulated time (tick count x tick interval), never on the wall clock
(except the bench time stamp), so a seeded simulator stepped by hand is deterministic.
Every value a model reports is already in the form a correct client decodes
(`registers.canonical`), so tests compare with `==`.
"""

from __future__ import annotations

import math
import random
import time
from typing import ClassVar

from cellctl_sim.modbus.registers import (
    FLOAT32_MAX,
    INT_LIMITS,
    Order,
    Point,
    RegisterImage,
    RegisterMap,
    Table,
    Value,
    WireType,
    canonical,
)

HR, IR, CO, DI = Table.HOLDING, Table.INPUT, Table.COIL, Table.DISCRETE


class DeviceModel:
    """Base of a device type: owns the engineering values and renders them to registers.

    Subclasses set `TYPE`, `MAP` and `DESCRIPTION` and implement `evolve`. A model with
    `SHARED = True` may serve several units at once from one register image (the bench
    does, so a hundred bench units cost one render per tick).
    """

    TYPE: ClassVar[str]
    DESCRIPTION: ClassVar[str]
    MAP: ClassVar[RegisterMap]
    SHARED: ClassVar[bool] = False

    def __init__(self, rng: random.Random, tick: float) -> None:
        self.rng = rng
        self.tick = tick
        self.t = 0.0  # simulated seconds since start
        self.ticks = 0
        self._points = {p.name: p for p in self.MAP}
        self.values: dict[str, Value] = {}

    # -- driven by the server --------------------------------------------------------
    def advance(self) -> None:
        """One tick: move simulated time on and let the model evolve."""
        self.ticks += 1
        self.t = self.ticks * self.tick
        self.evolve(self.tick)

    def evolve(self, dt: float) -> None:
        raise NotImplementedError

    def render(self, image: RegisterImage) -> None:
        """Write every point's current value into the register image."""
        for p in self.MAP.points:
            image.put(p, self.values[p.name])

    # -- engineering values ----------------------------------------------------------
    def value(self, name: str) -> Value:
        if name not in self._points:
            raise KeyError(f"{self.TYPE} has no point {name!r}")
        return self.values[name]

    def snapshot(self) -> dict[str, Value]:
        return {p.name: self.value(p.name) for p in self.MAP.points}

    def set(self, name: str, value: Value) -> None:
        """Take a value from outside: a client write, or a test forcing a situation.

        The model adopts it as its own state (a forced state code restarts that
        state's dwell time, a written setpoint stays until written again).
        """
        point = self._points.get(name)
        if point is None:
            raise KeyError(f"{self.TYPE} has no point {name!r}")
        self._adopt(name, canonical(point, value))

    def _adopt(self, name: str, value: Value) -> None:
        self.values[name] = value

    def _put(self, name: str, value: Value) -> None:
        self.values[name] = canonical(self._points[name], value)


# ------------------------------------------------------------------------------------
# energy-meter
# ------------------------------------------------------------------------------------
def _f32(name: str, start: int, unit: str, evolves: str) -> Point:
    return Point(name, IR, start, WireType.FLOAT32, Order.CDAB, unit=unit, evolves=evolves)


class EnergyMeter(DeviceModel):
    TYPE = "energy-meter"
    DESCRIPTION = "3-phase energy meter; input registers, float32 low word first (CDAB)"
    MAP = RegisterMap(
        (
            _f32("voltage_l1", 0, "V", "230 V + 4 V slow sine (5 min) + noise"),
            _f32("voltage_l2", 2, "V", "as L1, phase shifted"),
            _f32("voltage_l3", 4, "V", "as L1, phase shifted"),
            _f32("current_l1", 6, "A", "12 A + 5 A slow sine (2 min) + noise, never negative"),
            _f32("current_l2", 8, "A", "as L1, phase shifted"),
            _f32("current_l3", 10, "A", "as L1, phase shifted"),
            _f32("power_total", 12, "kW", "sum of V x I x PF over the phases / 1000"),
            _f32("power_factor", 14, "", "0.90 + 0.05 sine (10 min) + noise, at most 1"),
            _f32("frequency", 16, "Hz", "50 Hz + 0.03 Hz sine + noise"),
            Point(
                "energy_import", IR, 18, WireType.FLOAT64, Order.CDAB, unit="kWh",
                evolves="integral of power_total over simulated time; never decreases",
            ),
            Point(
                "serial_number", IR, 22, WireType.UINT32, Order.CDAB,
                evolves="fixed per unit (random from the seed)",
            ),
        )
    )

    def __init__(self, rng: random.Random, tick: float) -> None:
        super().__init__(rng, tick)
        self._phase = [rng.uniform(0, 2 * math.pi) for _ in range(3)]
        self._energy = round(rng.uniform(1_000.0, 50_000.0), 3)
        self._serial = rng.randrange(20_000_000, 29_999_999)
        self.evolve(0.0)

    def evolve(self, dt: float) -> None:
        t, rng, w = self.t, self.rng, 2 * math.pi
        pf = min(1.0, 0.90 + 0.05 * math.sin(w * t / 600) + rng.gauss(0, 0.002))
        power = 0.0
        for i, ph in enumerate(self._phase, start=1):
            v = 230.0 + 4.0 * math.sin(w * t / 300 + ph) + rng.gauss(0, 0.3)
            a = max(0.0, 12.0 + 5.0 * math.sin(w * t / 120 + ph) + rng.gauss(0, 0.1))
            self._put(f"voltage_l{i}", v)
            self._put(f"current_l{i}", a)
            power += v * a * pf / 1000.0
        self._put("power_total", power)
        self._put("power_factor", pf)
        self._put("frequency", 50.0 + 0.03 * math.sin(w * t / 45) + rng.gauss(0, 0.005))
        self._energy += power * dt / 3600.0
        self._put("energy_import", self._energy)
        self._put("serial_number", self._serial)

    def _adopt(self, name: str, value: Value) -> None:
        super()._adopt(name, value)
        if name == "energy_import":
            self._energy = float(value)
        elif name == "serial_number":
            self._serial = int(value)


# ------------------------------------------------------------------------------------
# machine-plc
# ------------------------------------------------------------------------------------
OFF, IDLE, RUNNING, HELD, ALARM, SETUP = range(6)
STATE_NAMES = {OFF: "off", IDLE: "idle", RUNNING: "running", HELD: "held", ALARM: "alarm", SETUP: "setup"}
ALARM_TEXTS = {17: "spindle overload", 23: "coolant level low", 42: "door interlock open", 99: "emergency stop"}
PROGRAMS = ("O1001 BRACKET", "O2040 FLANGE-A", "O3310 HOUSING", "O0815-SHAFT-LONG")  # the last fills all 16 chars
# how long (simulated seconds) each state lasts before the next transition
_DWELL = {OFF: (5, 10), IDLE: (3, 8), RUNNING: (20, 60), HELD: (3, 10), ALARM: (5, 15), SETUP: (8, 20)}
# status word bits
ST_POWERED, ST_RUNNING, ST_ALARM, ST_DOOR, ST_HEARTBEAT = 0, 1, 2, 3, 15


class MachinePlc(DeviceModel):
    TYPE = "machine-plc"
    DESCRIPTION = "machine PLC; holding registers (ABCD), a run-enable coil and an e-stop input"
    MAP = RegisterMap(
        (
            Point(
                "state_code", HR, 0, WireType.UINT16,
                evolves="0 off, 1 idle, 2 running, 3 held, 4 alarm, 5 setup: idle -> running 20-60 s -> idle, "
                "sometimes setup, off, held or alarm",
            ),
            Point("alarm_code", HR, 1, WireType.UINT16, evolves="17, 23, 42 or 99 while in alarm, else 0"),
            Point(
                "status_word", HR, 2, WireType.UINT16,
                evolves="bit 0 powered, 1 running, 2 alarm, 3 door open, 15 heartbeat (toggles every tick)",
            ),
            Point("door_open", HR, 2, WireType.BIT, bit=ST_DOOR, evolves="open in setup, sometimes when idle"),
            Point("spindle_speed", HR, 3, WireType.UINT16, unit="rpm", evolves="~8000 rpm while running, ramps"),
            Point("good_parts", HR, 4, WireType.UINT32, evolves="+1 per part (every 2.5-4 s while running)"),
            Point("bad_parts", HR, 6, WireType.UINT32, evolves="+1 instead of good_parts for ~4 % of parts"),
            Point(
                "temperature", HR, 8, WireType.INT16, unit="0.1 degC",
                evolves="degC x 10: ~24 degC idle, ~42 degC running, first-order lag + noise",
            ),
            Point("program_name", HR, 10, WireType.STRING, length=8, evolves="changes on entering setup"),
            Point("setpoint", HR, 18, WireType.FLOAT32, writable=True, evolves="keeps what a client writes"),
            Point(
                "run_enable", CO, 0, WireType.BOOL, writable=True,
                evolves="written by clients; while false the machine does not start, and holds if running",
            ),
            Point("estop", DI, 0, WireType.BOOL, evolves="true during an alarm 99 (emergency stop)"),
        )
    )

    def __init__(self, rng: random.Random, tick: float) -> None:
        super().__init__(rng, tick)
        self.state = IDLE
        self._until = rng.uniform(2, 5)
        self.alarm = 0
        self.good = 0
        self.bad = 0
        self._temp = 235.0
        self._spindle = 0.0
        self.door = False
        self.program = PROGRAMS[0]
        self.setpoint = 100.0
        self.run_enable = True
        self._heartbeat = False
        self._next_part = math.inf
        self._publish()

    # state machine ------------------------------------------------------------------
    def _enter(self, state: int, *, alarm: int | None = None) -> None:
        self.state = state
        lo, hi = _DWELL[state]
        self._until = self.t + self.rng.uniform(lo, hi)
        self.alarm = 0
        self.door = False
        if state == ALARM:
            self.alarm = alarm if alarm else self.rng.choice(tuple(ALARM_TEXTS))
            self.door = self.alarm == 42
        elif state == SETUP:
            self.program = self.rng.choice([p for p in PROGRAMS if p != self.program])
            self.door = True
        elif state == IDLE:
            self.door = self.rng.random() < 0.15
        self._next_part = self.t + self._cycle_time() if state == RUNNING else math.inf

    def _cycle_time(self) -> float:
        return self.rng.uniform(2.5, 4.0)

    def _transition(self) -> None:
        """The state's dwell time is over: pick what comes next."""
        if self.state == IDLE:
            if not self.run_enable:
                self._until = self.t + 1.0
                return
            r = self.rng.random()
            self._enter(SETUP if r < 0.08 else OFF if r < 0.12 else RUNNING)
        elif self.state == HELD:
            if self.run_enable:
                self._enter(RUNNING)
            else:
                self._until = self.t + 1.0
        else:  # running (batch done), alarm (cleared), setup (done), off (switched on)
            self._enter(IDLE)

    def evolve(self, dt: float) -> None:
        self._heartbeat = not self._heartbeat
        if self.state == RUNNING and not self.run_enable:
            self._enter(HELD)
        if self.t >= self._until:
            self._transition()
        while self.state == RUNNING and self.t >= self._next_part:
            if self.rng.random() < 0.04:
                self.bad += 1
            else:
                self.good += 1
            self._next_part += self._cycle_time()
            r = self.rng.random()
            if r < 0.01:
                self._enter(ALARM)
            elif r < 0.03:
                self._enter(HELD)
        target_temp = {RUNNING: 420.0, HELD: 330.0, ALARM: 300.0, OFF: 200.0}.get(self.state, 240.0)
        self._temp += (target_temp - self._temp) * min(1.0, dt / 30.0) + self.rng.gauss(0, 0.8)
        target_rpm = 8000.0 + 150.0 * math.sin(self.t / 7.0) if self.state == RUNNING else 0.0
        self._spindle += (target_rpm - self._spindle) * min(1.0, dt / 1.5)
        self._publish()

    def _publish(self) -> None:
        v = self.values
        v["state_code"] = self.state
        v["alarm_code"] = self.alarm
        status = (
            (self.state != OFF) << ST_POWERED
            | (self.state == RUNNING) << ST_RUNNING
            | (self.alarm != 0) << ST_ALARM
            | self.door << ST_DOOR
            | self._heartbeat << ST_HEARTBEAT
        )
        v["status_word"] = status
        v["door_open"] = self.door
        rpm = self._spindle + (self.rng.gauss(0, 15.0) if self.state == RUNNING else 0.0)
        v["spindle_speed"] = max(0, min(65535, round(rpm)))
        v["good_parts"] = self.good & 0xFFFFFFFF
        v["bad_parts"] = self.bad & 0xFFFFFFFF
        v["temperature"] = max(-32768, min(32767, round(self._temp)))
        v["program_name"] = self.program
        v["setpoint"] = canonical(self._points["setpoint"], self.setpoint)
        v["run_enable"] = self.run_enable
        v["estop"] = self.alarm == 99

    def _adopt(self, name: str, value: Value) -> None:
        if name == "state_code":
            if int(value) not in _DWELL:
                raise ValueError(f"state_code {value} is not one of {sorted(_DWELL)}")
            self._enter(int(value))
        elif name == "alarm_code":
            if value:
                self._enter(ALARM, alarm=int(value))
            elif self.state == ALARM:
                self._enter(IDLE)
        elif name == "estop":
            if value:
                self._enter(ALARM, alarm=99)
            elif self.alarm == 99:
                self._enter(IDLE)
        elif name == "good_parts":
            self.good = int(value)
        elif name == "bad_parts":
            self.bad = int(value)
        elif name == "temperature":
            self._temp = float(value)
        elif name == "spindle_speed":
            self._spindle = float(value)
        elif name in ("door_open", "status_word"):
            bits = int(value) if name == "status_word" else int(bool(value)) << ST_DOOR
            self.door = bool(bits >> ST_DOOR & 1)
        elif name == "program_name":
            self.program = str(value)
        elif name == "setpoint":
            self.setpoint = float(value)
        elif name == "run_enable":
            self.run_enable = bool(value)
        self._publish()


# ------------------------------------------------------------------------------------
# type-test
# ------------------------------------------------------------------------------------
_F32_MIN_NORMAL = 1.1754943508222875e-38
_F32_MIN_SUBNORMAL = 1.401298464324817e-45

SEQUENCES: dict[WireType, tuple[Value, ...]] = {
    WireType.INT16: (0, 1, -1, 32767, -32768, 0x1234, -0x1234, 255, -256, 12345),
    WireType.UINT16: (0, 1, 65535, 32768, 0x1234, 0xFF00, 0x00FF, 40000),
    WireType.INT32: (0, 1, -1, 2**31 - 1, -(2**31), 0x12345678, -0x12345678, 65536, -65536, 100_000),
    WireType.UINT32: (0, 1, 2**32 - 1, 2**31, 0x12345678, 0xDEADBEEF, 65535, 65536),
    WireType.INT64: (
        0, 1, -1, 2**63 - 1, -(2**63), 0x0123456789ABCDEF, -0x0123456789ABCDEF, 2**32, -(2**32), 2**53 + 1,
    ),
    WireType.UINT64: (0, 1, 2**64 - 1, 2**63, 0x0123456789ABCDEF, 0xFEDCBA9876543210, 2**53 + 1),
    WireType.FLOAT32: (
        0.0, 1.5, -1.5, FLOAT32_MAX, -FLOAT32_MAX, _F32_MIN_NORMAL, _F32_MIN_SUBNORMAL,
        123.456, -0.1, 16777217.0,
    ),
    WireType.FLOAT64: (
        0.0, 0.1, -2.5, 1.7976931348623157e308, -1.7976931348623157e308, 2.2250738585072014e-308,
        5e-324, 123456.789, math.pi, -math.e,
    ),
    WireType.STRING: ("", "A", "Hello", "cellctl-sim", "ABCDEFGHIJKLMNOP", "0123456789abcdef", "odd", "x y!"),
    # logical (after byte-order correction) value of the bit-carrier words
    WireType.BIT: (0x0000, 0xFFFF, 0x0001, 0x8000, 0x0008, 0xFFF7, 0x0100, 0x0800, 0xA5A5, 0x5A5A),
    WireType.BOOL: (False, True, True, False, True, False, False),
}


def _type_test_points() -> tuple[Point, ...]:
    pts: list[Point] = []
    addr = 0

    def reg(name: str, wt: WireType, order: Order, length: int | None = None) -> None:
        nonlocal addr
        p = Point(name, HR, addr, wt, order, length=length, evolves=f"cycles through {len(SEQUENCES[wt])} values")
        pts.append(p)
        addr = p.end

    short = {WireType.INT16: "i16", WireType.UINT16: "u16", WireType.INT32: "i32", WireType.UINT32: "u32",
             WireType.INT64: "i64", WireType.UINT64: "u64", WireType.FLOAT32: "f32", WireType.FLOAT64: "f64"}
    for wt in (WireType.INT16, WireType.UINT16):
        for order in (Order.ABCD, Order.BADC):
            reg(f"{short[wt]}_{order.lower()}", wt, order)
    for wt in (WireType.INT32, WireType.UINT32, WireType.FLOAT32, WireType.INT64, WireType.UINT64, WireType.FLOAT64):
        for order in Order:
            reg(f"{short[wt]}_{order.lower()}", wt, order)
    for order in (Order.ABCD, Order.BADC):
        word = Point(
            f"bits_{order.lower()}", HR, addr, WireType.UINT16, order,
            evolves=f"carrier word of the bit points: {len(SEQUENCES[WireType.BIT])} patterns",
        )
        pts.append(word)
        for b in (0, 3, 15):
            pts.append(Point(f"bit{b}_{order.lower()}", HR, addr, WireType.BIT, order, bit=b, evolves="bit of the word"))
        addr += 1
    for order in (Order.ABCD, Order.BADC):
        reg(f"str_{order.lower()}", WireType.STRING, order, length=8)
    # writable twins of every register point (not the bits), at +100: the sim keeps what clients write
    twins = [
        Point(f"w_{p.name}", HR, p.start + 100, p.type, p.order, length=p.length, writable=True,
              evolves="keeps what a client writes")
        for p in list(pts)
        if p.type is not WireType.BIT and not p.name.startswith("bits_")
    ]
    bools = [
        Point("coil_0", CO, 0, WireType.BOOL, evolves="cycles through a bool pattern"),
        Point("coil_13", CO, 13, WireType.BOOL, evolves="cycles through a bool pattern"),
        Point("w_coil", CO, 32, WireType.BOOL, writable=True, evolves="keeps what a client writes"),
        Point("discrete_0", DI, 0, WireType.BOOL, evolves="cycles through a bool pattern"),
        Point("discrete_17", DI, 17, WireType.BOOL, evolves="cycles through a bool pattern"),
    ]
    return (*pts, *twins, *bools)


class TypeTest(DeviceModel):
    TYPE = "type-test"
    DESCRIPTION = "every wire type in every applicable order, stepping through extremes each tick"
    MAP = RegisterMap(_type_test_points())

    def __init__(self, rng: random.Random, tick: float) -> None:
        super().__init__(rng, tick)
        self._cycling = [p for p in self.MAP.points if not p.writable and p.type is not WireType.BIT]
        for p in self.MAP.points:
            if p.writable:
                self.values[p.name] = canonical(p, SEQUENCES[p.type][0])
        self.evolve(0.0)

    def evolve(self, dt: float) -> None:
        """Point i shows element (tick + i) of its type's sequence, so neighbours differ."""
        k = self.ticks
        for i, p in enumerate(self._cycling):
            seq = SEQUENCES[WireType.BIT if p.name.startswith("bits_") else p.type]
            self._put(p.name, seq[(k + i) % len(seq)])
        for p in self.MAP.points:
            if p.type is WireType.BIT:
                word = int(self.values[f"bits_{p.order.lower()}"])
                assert p.bit is not None
                self.values[p.name] = bool(word >> p.bit & 1)


# ------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------
BENCH_REGISTERS = 100


class Bench(DeviceModel):
    TYPE = "bench"
    DESCRIPTION = "holding 0..99 all change every tick: a wall-clock stamp and 96 counters"
    SHARED = True
    MAP = RegisterMap(
        (
            Point(
                "stamp_us", HR, 0, WireType.UINT64,
                evolves="wall clock (time.time_ns() // 1000) when this tick's values were written",
            ),
            *(
                Point(f"r{i:03d}", HR, i, WireType.UINT16, evolves=f"(tick + {i}) mod 65536")
                for i in range(4, BENCH_REGISTERS)
            ),
        )
    )

    def __init__(self, rng: random.Random, tick: float) -> None:
        super().__init__(rng, tick)
        self.stamp_us = 0
        self._offsets = range(4, BENCH_REGISTERS)

    def evolve(self, dt: float) -> None:
        """Nothing to do: the counters are a function of the tick, computed in render."""

    def render(self, image: RegisterImage) -> None:
        """The whole block in one slice assignment: cheap enough for 1 ms ticks."""
        s = self.stamp_us = time.time_ns() // 1000
        k = self.ticks
        image.holding[0:BENCH_REGISTERS] = [
            (s >> 48) & 0xFFFF, (s >> 32) & 0xFFFF, (s >> 16) & 0xFFFF, s & 0xFFFF,
            *[(k + i) & 0xFFFF for i in self._offsets],
        ]

    def value(self, name: str) -> Value:
        if name == "stamp_us":
            return self.stamp_us
        if len(name) == 4 and name[0] == "r" and name[1:].isdigit() and 4 <= int(name[1:]) < BENCH_REGISTERS:
            return (self.ticks + int(name[1:])) & 0xFFFF
        raise KeyError(f"{self.TYPE} has no point {name!r}")

    def _adopt(self, name: str, value: Value) -> None:
        raise ValueError("bench values are a function of the tick and cannot be set")


# ------------------------------------------------------------------------------------
# blank
# ------------------------------------------------------------------------------------
BLANK_SIZE = 200


class Blank(DeviceModel):
    """A plain register image for tests that set the registers themselves (with
    `SimUnit.load`) and check what a client wrote: nothing changes by itself."""

    TYPE = "blank"
    DESCRIPTION = (
        f"addresses 0..{BLANK_SIZE - 1} of every table, all zero until loaded; holding registers "
        "and coils writable; nothing changes by itself"
    )
    MAP = RegisterMap(
        (
            *(Point(f"hr{i}", HR, i, WireType.UINT16, writable=True, evolves="set by a test or a client") for i in range(BLANK_SIZE)),
            *(Point(f"ir{i}", IR, i, WireType.UINT16, evolves="set by a test") for i in range(BLANK_SIZE)),
            *(Point(f"co{i}", CO, i, WireType.BOOL, writable=True, evolves="set by a test or a client") for i in range(BLANK_SIZE)),
            *(Point(f"di{i}", DI, i, WireType.BOOL, evolves="set by a test") for i in range(BLANK_SIZE)),
        )
    )

    def __init__(self, rng: random.Random, tick: float) -> None:
        super().__init__(rng, tick)
        for p in self.MAP.points:
            self.values[p.name] = False if p.type is WireType.BOOL else 0

    def evolve(self, dt: float) -> None:
        """Nothing evolves: the registers hold what was loaded or written."""

    def render(self, image: RegisterImage) -> None:
        """The image is the state (loads and writes go straight into it): nothing to render."""


DEVICE_TYPES: dict[str, type[DeviceModel]] = {
    m.TYPE: m for m in (EnergyMeter, MachinePlc, TypeTest, Bench, Blank)
}

__all__ = [
    "ALARM_TEXTS",
    "DEVICE_TYPES",
    "INT_LIMITS",
    "PROGRAMS",
    "SEQUENCES",
    "STATE_NAMES",
    "Bench",
    "Blank",
    "DeviceModel",
    "EnergyMeter",
    "MachinePlc",
    "TypeTest",
]
