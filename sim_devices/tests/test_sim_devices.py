"""Device models stepped by hand: deterministic, and behaving like the machines they mimic."""

from __future__ import annotations

import time

import pytest
from cellctl_sim.modbus import SimModbusServer
from cellctl_sim.modbus.devices import ALARM_TEXTS, INT_LIMITS, SEQUENCES, TypeTest
from cellctl_sim.modbus.registers import FLOAT32_MAX, WireType

ALL = {1: "energy-meter", 2: "machine-plc", 3: "type-test", 4: "bench"}


def test_seed_makes_runs_identical_and_units_differ() -> None:
    a = SimModbusServer(ALL, tick=0.5, seed=42, auto_tick=False)
    b = SimModbusServer(ALL, tick=0.5, seed=42, auto_tick=False)
    for _ in range(200):
        a.step()
        b.step()
    sa, sb = a.snapshot(), b.snapshot()
    for uid in (1, 2, 3):
        assert sa[uid] == sb[uid]
    c = SimModbusServer({1: "energy-meter", 2: "energy-meter"}, tick=0.5, seed=42, auto_tick=False)
    assert c.unit(1).value("serial_number") != c.unit(2).value("serial_number")


def test_unknown_type_and_bad_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown device type"):
        SimModbusServer({1: "toaster"})
    with pytest.raises(ValueError, match=r"1\.\.247"):
        SimModbusServer({0: "bench"})
    with pytest.raises(ValueError, match="tick"):
        SimModbusServer({1: "bench"}, tick=0.0001)


def test_energy_meter_values_are_plausible_and_energy_never_decreases() -> None:
    sim = SimModbusServer({1: "energy-meter"}, tick=1.0, seed=3, auto_tick=False)
    u = sim.unit(1)
    first = last = float(u.value("energy_import"))
    voltages: list[float] = []
    for _ in range(600):
        sim.step()
        e = float(u.value("energy_import"))
        assert e >= last
        last = e
        voltages.append(float(u.value("voltage_l1")))
        assert 45 < float(u.value("frequency")) < 55
        assert 0 < float(u.value("power_factor")) <= 1
        assert float(u.value("current_l2")) >= 0
    assert 215 < min(voltages) < max(voltages) < 245
    assert len(set(voltages)) > 500  # noise: changes every tick
    assert 0.5 < last - first < 2.5  # ~7 kW for 600 s is ~1.2 kWh


def test_machine_plc_cycles_counts_and_alarms() -> None:
    sim = SimModbusServer({2: "machine-plc"}, tick=0.5, seed=7, auto_tick=False)
    u = sim.unit(2)
    seen: set[int] = set()
    good = bad = 0
    for _ in range(4 * 3600 * 2):  # four simulated hours
        before = (u.value("good_parts"), u.value("bad_parts"), u.value("state_code"))
        sim.step()
        state = int(u.value("state_code"))
        seen.add(state)
        g, b = int(u.value("good_parts")), int(u.value("bad_parts"))
        assert g >= good
        assert b >= bad
        if (g, b) != (good, bad):
            # a part completes only in a tick that started running
            assert before[2] == 2
        good, bad = g, b
        alarm = int(u.value("alarm_code"))
        assert (alarm != 0) == (state == 4)
        if alarm:
            assert alarm in ALARM_TEXTS
        assert u.value("estop") == (alarm == 99)
        if state == 2:
            assert u.value("door_open") is False
        if state == 5:
            assert u.value("door_open") is True
        status = int(u.value("status_word"))
        assert bool(status & 8) == u.value("door_open")
        assert bool(status & 2) == (state == 2)
        assert 150 <= int(u.value("temperature")) <= 500
    assert seen == {0, 1, 2, 3, 4, 5}
    assert good > 1000
    assert 0 < bad < good / 10


def test_run_enable_off_keeps_the_machine_from_running() -> None:
    sim = SimModbusServer({2: "machine-plc"}, tick=0.5, seed=1, auto_tick=False)
    u = sim.unit(2)
    u.set_value("state_code", 2)
    u.set_value("run_enable", False)
    sim.step()
    assert u.value("state_code") == 3  # running -> held
    for _ in range(600):
        sim.step()
        assert u.value("state_code") != 2
    u.set_value("run_enable", True)
    for _ in range(600):
        sim.step()
        if u.value("state_code") == 2:
            break
    assert u.value("state_code") == 2


def test_set_value_forces_state_alarm_and_estop() -> None:
    sim = SimModbusServer({2: "machine-plc"}, tick=0.5, seed=1, auto_tick=False)
    u = sim.unit(2)
    u.set_value("alarm_code", 17)
    assert (u.value("state_code"), u.value("alarm_code")) == (4, 17)
    assert u.image.holding[0:2] == [4, 17]  # registers follow at once
    u.set_value("estop", True)
    assert (u.value("alarm_code"), u.value("estop")) == (99, True)
    assert u.image.discrete[0] is True
    u.set_value("alarm_code", 0)
    assert (u.value("state_code"), u.value("estop")) == (1, False)
    with pytest.raises(KeyError):
        u.value("nope")
    with pytest.raises(OverflowError):
        u.set_value("good_parts", -1)


def test_type_test_covers_every_sequence_value() -> None:
    sim = SimModbusServer({3: "type-test"}, tick=0.1, auto_tick=False)
    u = sim.unit(3)
    seen: dict[str, set[object]] = {p.name: set() for p in u.points}
    for _ in range(12):  # longer than the longest sequence
        for name, values in seen.items():
            values.add(u.value(name))
        sim.step()
    for p in TypeTest.MAP.points:
        if p.writable or p.type is WireType.BIT or p.name.startswith("bits_"):
            continue
        if p.type is WireType.FLOAT32:  # rounded to float32, so compare the count
            assert len(seen[p.name]) == len(SEQUENCES[p.type]), p.name
        else:
            assert seen[p.name] == set(SEQUENCES[p.type]), p.name
        if p.type in INT_LIMITS:
            lo, hi = INT_LIMITS[p.type]
            assert {lo, hi} <= seen[p.name], p.name
    assert {FLOAT32_MAX, -FLOAT32_MAX} <= seen["f32_cdab"]
    assert -1.5 in seen["f32_dcba"]
    assert 0.1 in seen["f64_abcd"]
    assert 16777216.0 in seen["f32_abcd"]  # 16777217 as a float32 carries it
    assert "ABCDEFGHIJKLMNOP" in seen["str_badc"]
    assert "" in seen["str_badc"]
    assert seen["bit15_badc"] == {True, False}
    assert seen["coil_13"] == {True, False}


def test_bench_changes_every_register_every_tick_and_units_share_one_block() -> None:
    sim = SimModbusServer({4: "bench", 5: "bench"}, tick=0.001, auto_tick=False)
    u4, u5 = sim.unit(4), sim.unit(5)
    assert u4.image is u5.image
    prev = list(u4.image.holding)
    for _ in range(5):
        t0 = time.time_ns() // 1000
        sim.step()
        regs = u4.image.holding
        assert all(a != b for a, b in zip(prev[4:], regs[4:], strict=True))
        stamp = int(u4.value("stamp_us"))
        assert t0 <= stamp <= time.time_ns() // 1000
        assert regs[0:4] == [(stamp >> s) & 0xFFFF for s in (48, 32, 16, 0)]
        assert regs[4] == u4.value("r004")
        assert regs[99] == u5.value("r099")
        prev = list(regs)
    snap = u4.snapshot()
    assert len(snap) == 97
    with pytest.raises(KeyError):
        u4.value("r100")
    with pytest.raises(ValueError, match="cannot be set"):
        u4.set_value("r004", 1)
