"""The simulated machine's behaviour, independent of OPC UA: a machining centre with a
Machinery-like item state and operation mode (OPC 40001-1), part counters,
temperatures, a spindle, jobs and a process setpoint.

Jobs follow OPC 40001-3 / OPC 10031-4 (ISA-95 job control): a job has an id, an order
number and a program, a state (Running, Interrupted, Ended, Aborted) and its own
produced / good / scrap quantities. The machine starts jobs by itself (autonomous mode,
as a machine working through its job list) or when StartJob is called; an ended job
stays the current one, with its state and quantities, until the next job starts.

Runs on simulated time (tick count x tick interval), so a seeded machine stepped by
hand is deterministic. The server (server.py) renders `values` into nodes.
"""

from __future__ import annotations

import math
import random
from enum import IntEnum
from typing import Final

Value = bool | int | float | str


class ItemState(IntEnum):
    """OPC 40001-1 MachineryItemState."""

    NotAvailable = 0
    OutOfService = 1
    NotExecuting = 2
    Executing = 3


class OperationMode(IntEnum):
    """OPC 40001-1 MachineryOperationMode."""

    None_ = 0
    Maintenance = 1
    Setup = 2
    Processing = 3


# Vendor states (the raw state a profile maps) -> (item state, operation mode)
STATES: Final[dict[str, tuple[ItemState, OperationMode]]] = {
    "Off": (ItemState.OutOfService, OperationMode.None_),
    "Idle": (ItemState.NotExecuting, OperationMode.Processing),
    "Running": (ItemState.Executing, OperationMode.Processing),
    "Held": (ItemState.NotExecuting, OperationMode.Processing),
    "Alarm": (ItemState.OutOfService, OperationMode.Processing),
    "Setup": (ItemState.NotExecuting, OperationMode.Setup),
    "Maintenance": (ItemState.OutOfService, OperationMode.Maintenance),
}
_DWELL: Final[dict[str, tuple[float, float]]] = {
    "Off": (5, 10),
    "Idle": (3, 8),
    "Running": (20, 60),
    "Held": (3, 10),
    "Alarm": (5, 15),
    "Setup": (8, 20),
    "Maintenance": (10, 20),
}
PROGRAMS: Final = ("O1001", "O1002", "O2040", "O3300")  # part programs in the machine's memory
# OPC 10031-4 job order states the machine uses ("" before its first job)
JOB_RUNNING, JOB_INTERRUPTED, JOB_ENDED, JOB_ABORTED = "Running", "Interrupted", "Ended", "Aborted"
ALARMS: Final[dict[int, str]] = {17: "spindle overload", 23: "coolant level low", 99: "emergency stop"}
SETPOINT_RANGE: Final = (0.0, 1000.0)
OVERRIDE_RANGE: Final = (0, 200)

# Point names (also the browse names under Machine/...) and their OPC UA data types.
POINTS: Final[dict[str, str]] = {
    "State/CurrentState": "String",
    "State/ItemState": "Int32",
    "State/OperationMode": "Int32",
    "Counters/GoodParts": "UInt32",
    "Counters/BadParts": "UInt32",
    "Temperatures/Spindle": "Double",
    "Temperatures/Coolant": "Double",
    "Spindle/Speed": "Double",
    "Spindle/Override": "UInt16",
    "Job/JobId": "String",
    "Job/OrderNumber": "String",
    "Job/Program": "String",
    "Job/State": "String",
    "Job/ProducedQuantity": "UInt32",
    "Job/GoodQuantity": "UInt32",
    "Job/ScrapQuantity": "UInt32",
    "Job/Progress": "Double",
    "Alarm/Code": "UInt16",
    "Alarm/Active": "Boolean",
    "Process/Setpoint": "Double",
    "Identification/SerialNumber": "String",
}
WRITABLE: Final = frozenset({"Process/Setpoint", "Spindle/Override"})


class JobRefused(Exception):
    """StartJob cannot start now (the machine is not idle); the server answers BadInvalidState."""


class Machine:
    """One machine's state and values. `advance()` moves it one tick on."""

    def __init__(self, *, tick: float = 0.5, seed: int | None = None, autonomous: bool = True) -> None:
        self.rng = random.Random(seed)
        self.tick = tick
        self.autonomous = autonomous  # False: state changes only when told (tests)
        self.t = 0.0
        self.ticks = 0
        self.state = "Idle"
        self._until = self.rng.uniform(2, 5)
        self.alarm = 0
        self.good = 0
        self.bad = 0
        self.spindle_temp = 24.0
        self.coolant_temp = 20.0
        self.speed = 0.0
        self.override = 100
        self.job = ""
        self.order = ""
        self.program = PROGRAMS[0]
        self.job_state = ""
        self.job_good = 0
        self.job_scrap = 0
        self._next_job: str | None = None  # StartJob's id for the next Running
        self._jobs_started = 0
        self.progress = 0.0
        self._job_length = 30.0
        self._job_started = 0.0
        self._next_part = math.inf
        self.setpoint = 100.0
        self.serial = f"SIM-{self.rng.randrange(10_000, 99_999)}"
        self.values: dict[str, Value] = {}
        self._publish()

    # -- commands -------------------------------------------------------------------------

    def start_job(self, job_id: str) -> None:
        """StartJob(jobId): only from Idle; the job runs the loaded program a while, making
        parts (no order number: the caller did not give one)."""
        if self.state != "Idle":
            raise JobRefused(f"machine is {self.state}, StartJob needs Idle")
        if not job_id:
            raise ValueError("jobId is empty")
        self._next_job = job_id
        self._enter("Running")
        self._publish()

    @property
    def job_active(self) -> bool:
        return self.job_state in (JOB_RUNNING, JOB_INTERRUPTED)

    def _new_job(self) -> None:
        """A job starts: StartJob's id, or the next one of the machine's own job list
        (with its order number and a program from the machine's memory)."""
        self._jobs_started += 1
        if self._next_job is not None:
            self.job, self.order, self._next_job = self._next_job, "", None
        else:
            self.job = f"JOB-{self.rng.randrange(1000, 9999)}"
            self.order = f"PO-{4700 + self._jobs_started}"
            self.program = self.rng.choice(PROGRAMS)
        self.job_state = JOB_RUNNING
        self.job_good = self.job_scrap = 0
        self.progress = 0.0

    def force_state(self, state: str, *, alarm: int | None = None) -> None:
        """Put the machine into `state` now (tests and demos)."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {', '.join(STATES)}")
        self._enter(state, alarm=alarm)
        self._publish()

    def write(self, name: str, value: Value) -> None:
        """A client wrote a writable point (already type-checked by the server)."""
        if name == "Process/Setpoint":
            self.setpoint = float(value)
        elif name == "Spindle/Override":
            self.override = int(value)
        else:
            raise KeyError(name)
        self._publish()

    # -- time -------------------------------------------------------------------------------

    def _enter(self, state: str, *, alarm: int | None = None) -> None:
        if self.job_active:  # how the running job fares
            self.job_state = {"Running": JOB_RUNNING, "Held": JOB_INTERRUPTED, "Idle": JOB_ENDED}.get(state, JOB_ABORTED)
        self.state = state
        lo, hi = _DWELL[state]
        self._until = self.t + self.rng.uniform(lo, hi)
        self.alarm = 0
        if state == "Alarm":
            self.alarm = alarm or self.rng.choice(tuple(ALARMS))
        if state == "Running":
            if not self.job_active:
                self._new_job()
                self._job_started = self.t
                self._job_length = self._until - self.t
            else:  # resumed after a hold: the job's remaining work, from where it stood
                elapsed = self.progress / 100.0 * self._job_length
                self._job_started = self.t - elapsed
                self._until = self.t + max(self.tick, self._job_length - elapsed)
            self._next_part = self.t + self._cycle_time()
        else:
            self._next_part = math.inf

    def _cycle_time(self) -> float:
        return self.rng.uniform(2.5, 4.0) * 100.0 / max(self.override, 10)

    def _transition(self) -> None:
        if self.state == "Running":  # job done
            self.progress = 100.0
            self._enter("Idle")
        elif self.state == "Idle":
            r = self.rng.random()
            self._enter("Setup" if r < 0.08 else "Off" if r < 0.12 else "Running")
        elif self.state == "Held":
            self._enter("Running")
        else:
            self._enter("Idle")

    def advance(self) -> None:
        self.ticks += 1
        self.t = self.ticks * self.tick
        dt = self.tick
        if self.autonomous and self.t >= self._until:
            self._transition()
        while self.state == "Running" and self.t >= self._next_part:
            if self.rng.random() < 0.04:
                self.bad += 1
                self.job_scrap += 1
            else:
                self.good += 1
                self.job_good += 1
            self._next_part += self._cycle_time()
            if self.autonomous:
                r = self.rng.random()
                if r < 0.01:
                    self._enter("Alarm")
                elif r < 0.03:
                    self._enter("Held")
        if self.state == "Running" and self._job_length > 0:
            self.progress = min(100.0, 100.0 * (self.t - self._job_started) / self._job_length)
        target = {"Running": 42.0, "Held": 33.0, "Alarm": 30.0, "Off": 20.0}.get(self.state, 24.0)
        self.spindle_temp += (target - self.spindle_temp) * min(1.0, dt / 30.0) + self.rng.gauss(0, 0.08)
        self.coolant_temp += (18.0 + 0.1 * self.spindle_temp - self.coolant_temp) * min(1.0, dt / 60.0)
        target_rpm = (8000.0 + 150.0 * math.sin(self.t / 7.0)) * self.override / 100 if self.state == "Running" else 0.0
        self.speed += (target_rpm - self.speed) * min(1.0, dt / 1.5)
        self._publish()

    def _publish(self) -> None:
        item, mode = STATES[self.state]
        v = self.values
        v["State/CurrentState"] = self.state
        v["State/ItemState"] = int(item)
        v["State/OperationMode"] = int(mode)
        v["Counters/GoodParts"] = self.good
        v["Counters/BadParts"] = self.bad
        v["Temperatures/Spindle"] = round(self.spindle_temp, 3)
        v["Temperatures/Coolant"] = round(self.coolant_temp, 3)
        v["Spindle/Speed"] = round(self.speed, 1)
        v["Spindle/Override"] = self.override
        v["Job/JobId"] = self.job
        v["Job/OrderNumber"] = self.order
        v["Job/Program"] = self.program
        v["Job/State"] = self.job_state
        v["Job/ProducedQuantity"] = self.job_good + self.job_scrap
        v["Job/GoodQuantity"] = self.job_good
        v["Job/ScrapQuantity"] = self.job_scrap
        v["Job/Progress"] = round(self.progress, 2)
        v["Alarm/Code"] = self.alarm
        v["Alarm/Active"] = self.alarm != 0
        v["Process/Setpoint"] = self.setpoint
        v["Identification/SerialNumber"] = self.serial
