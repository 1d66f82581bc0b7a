"""Jobs at the edge, the pure parts (issue 11, first slice): counter deltas across resets
and wraps, a job's record and events from a scripted machine timeline, and OEE from a
timeline whose figures are computed by hand here."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cellctl.jobs.counting import RunningCount, counter_delta
from cellctl.jobs.oee import StateClock, oee
from cellctl.jobs.tracker import JobState, JobTracker
from cellctl.model import Alarm, Execution, ItemState, MachineState, OperationMode

U16 = 2**16


def test_counter_deltas_for_steps_resets_and_wraps() -> None:
    assert counter_delta(10, 15, U16) == 5
    assert counter_delta(65530, 3, U16) == 9  # a uint16 wrapped
    assert counter_delta(500, 2, U16) == 2  # reset to 0, then 2 parts
    assert counter_delta(500, 2, None) == 2  # without a modulus every fall is a reset


@given(
    start=st.integers(0, U16 - 1),
    steps=st.lists(st.integers(0, 1000), min_size=1, max_size=200),
)
def test_a_wrapping_counter_adds_up_to_what_was_counted(start: int, steps: list[int]) -> None:
    count = RunningCount(U16)
    count.update(start)
    raw = start
    for step in steps:
        raw = (raw + step) % U16
        count.update(raw)
    assert count.total == sum(steps)
    assert count.resets == 0


def test_a_reset_keeps_what_was_counted_before() -> None:
    count = RunningCount(U16)
    for raw in (100, 110, 120, 0, 4, 9):  # a shift change resets the PLC's counter
        count.update(raw)
    assert count.total == 20 + 9
    assert count.resets == 1


def machine(item: ItemState, execution: Execution, alarms: tuple[Alarm, ...] = ()) -> MachineState:
    return MachineState(item, OperationMode.PROCESSING, execution, alarms=alarms)


RUN = machine(ItemState.EXECUTING, Execution.ACTIVE)
HOLD = machine(ItemState.NOT_EXECUTING, Execution.FEED_HOLD)
IDLE = machine(ItemState.NOT_EXECUTING, Execution.READY)


def test_a_job_from_a_scripted_timeline() -> None:
    t = JobTracker(modulus=U16)
    seen: list[str] = []

    def at(s: float, m: MachineState, good: int, bad: int, job: str | None = "J-4711", **kw: bool) -> None:
        events = t.observe(
            now_ms=int(s * 1000),
            job_id=job,
            order_id="O-1",
            program="bracket.nc",
            good=good,
            bad=bad,
            machine=m,
            completed=kw.get("completed", False),
            stopped=kw.get("stopped", False),
        )
        seen.extend(e.event for e in events)

    at(0, IDLE, 65530, 7, job=None)  # no job yet: nothing
    assert t.current is None
    at(1, RUN, 65530, 7)  # the job id appears: started; counts from here
    at(11, HOLD, 3, 8)  # 10 s running, +9 good across the uint16 wrap, +1 scrap
    at(15, RUN, 3, 8)  # resumed after 4 s on hold
    at(20, IDLE, 5, 8, completed=True)  # 5 s more, +2 good, program completed
    record = t.current
    assert record is not None
    assert seen == ["started", "paused", "resumed", "completed"]
    assert record.state == JobState.COMPLETED
    assert (record.produced, record.good, record.scrap) == (12, 11, 1)
    assert record.running_s == 15.0
    assert record.cycle_time_s == 15.0 / 12
    assert (record.start_ms, record.end_ms) == (1000, 20000)
    assert record.as_dict()["order_id"] == "O-1"


def test_a_new_job_id_ends_the_running_job_and_an_alarm_fails_it() -> None:
    t = JobTracker()
    common = {"order_id": None, "program": None, "completed": False, "stopped": False}
    t.observe(now_ms=0, job_id=1, good=0, bad=0, machine=RUN, **common)
    events = t.observe(now_ms=5000, job_id=2, good=4, bad=0, machine=RUN, **common)
    assert [e.event for e in events] == ["aborted", "started"]
    assert events[0].record.reason == "next job"
    assert events[0].record.good == 4
    alarm = machine(ItemState.OUT_OF_SERVICE, Execution.STOPPED, (Alarm("17", "spindle overload", "error"),))
    (failed,) = t.observe(now_ms=6000, job_id=2, good=5, bad=0, machine=alarm, **common)
    assert failed.event == "failed"
    assert failed.record.reason == "alarm 17: spindle overload"
    assert failed.record.good == 1


def test_oee_of_a_timeline_computed_by_hand() -> None:
    """An hour: 10 min off (not planned), 35 min executing, 10 min idle, 5 min alarm;
    120 parts, 114 good, ideal cycle 15 s.
    availability = 35 / (60 - 10) = 0.7; performance = 15 * 120 / (35 * 60) = 0.857142...;
    quality = 114 / 120 = 0.95; oee = 0.7 * 0.857142 * 0.95 = 0.57."""
    clock = StateClock(start=0.0)
    for at, state in (
        (600, ItemState.EXECUTING),
        (2700, ItemState.NOT_EXECUTING),
        (3300, ItemState.OUT_OF_SERVICE),
    ):
        clock.enter(state, at)
    seconds = clock.totals(3600)
    assert seconds == {
        ItemState.NOT_AVAILABLE: 600,
        ItemState.EXECUTING: 2100,
        ItemState.NOT_EXECUTING: 600,
        ItemState.OUT_OF_SERVICE: 300,
    }
    result = oee(seconds, produced=120, good=114, ideal_cycle_s=15.0)
    assert result.availability == 0.7
    assert result.performance is not None
    assert abs(result.performance - 1800 / 2100) < 1e-12
    assert result.quality == 0.95
    assert result.oee is not None
    assert abs(result.oee - 0.7 * (1800 / 2100) * 0.95) < 1e-12
    assert abs(result.oee - 0.57) < 1e-9


def test_oee_factors_without_a_denominator_are_unknown() -> None:
    result = oee({ItemState.NOT_AVAILABLE: 60.0}, produced=0, good=0, ideal_cycle_s=None)
    assert (result.availability, result.performance, result.quality, result.oee) == (None, None, None, None)


def test_a_job_first_seen_already_ended_is_not_recorded_and_the_next_one_is() -> None:
    """An OPC UA machine keeps its last job (state Ended) as the current one: at cellctl's
    start that job is not one it saw run, so it gets no record of 0 parts."""
    t = JobTracker()
    common = {"order_id": None, "program": None, "stopped": False}
    assert t.observe(now_ms=0, job_id="J-1", good=7, bad=0, machine=IDLE, completed=True, **common) == []
    assert t.current is None
    # the next job's id may arrive a moment before its state says Running: it starts then
    assert t.observe(now_ms=500, job_id="J-2", good=7, bad=0, machine=IDLE, completed=True, **common) == []
    started = t.observe(now_ms=1000, job_id="J-2", good=7, bad=0, machine=RUN, completed=False, **common)
    assert [e.event for e in started] == ["started"]
    done = t.observe(now_ms=9000, job_id="J-2", good=10, bad=0, machine=IDLE, completed=True, **common)
    assert [(e.event, e.record.job_id, e.record.good) for e in done] == [("completed", "J-2", 3)]
