"""OEE windows from the config (issue 11 item 5): the current hour and the current shift
of a shift calendar; time in each state and the factors for a scripted timeline whose
figures are computed by hand here. The clock is the test's: every call says when it is."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from cellctl.config.cell import OeeConfig, Shift
from cellctl.jobs.oee import OeeWindow
from cellctl.jobs.shifts import Hourly, ShiftCalendar
from cellctl.model import ItemState

DAY = dt.datetime(2026, 12, 7, tzinfo=dt.UTC).timestamp()  # a Monday, 00:00 UTC
SHIFTS = [
    Shift(name="early", start="06:00", end="14:00"),
    Shift(name="late", start="14:00", end="22:00"),
    Shift(name="night", start="22:00", end="06:00"),  # crosses midnight
]
CALENDAR = ShiftCalendar.of(SHIFTS, "UTC")


def at(hhmm: str, day: float = DAY) -> float:
    h, m = hhmm.split(":")
    return day + int(h) * 3600 + int(m) * 60


def test_the_shift_a_moment_belongs_to() -> None:
    assert CALENDAR.current(at("06:00")) == (at("06:00"), "early")
    assert CALENDAR.current(at("13:59")) == (at("06:00"), "early")
    assert CALENDAR.current(at("14:00")) == (at("14:00"), "late")
    assert CALENDAR.current(at("23:10")) == (at("22:00"), "night")
    assert CALENDAR.current(at("01:00")) == (at("22:00", DAY - 86400), "night")  # began yesterday
    two = ShiftCalendar.of(SHIFTS[:2], "UTC")
    assert two.current(at("23:00")) is None  # between shifts: no shift window
    berlin = ShiftCalendar.of(SHIFTS, "Europe/Berlin")  # UTC+1 in December
    assert berlin.current(at("05:30")) == (at("05:00"), "early")
    assert Hourly().current(at("10:42")) == (at("10:00"), "hour")


def test_shift_and_hour_oee_for_a_scripted_timeline_computed_by_hand() -> None:
    """The early shift (06:00-14:00), looked at 10:30, ideal cycle 18 s:
    executing 06:00-07:00, 07:30-09:00 and 09:15-10:00 = 3600 + 5400 + 2700 = 11700 s;
    not executing 07:00-07:30 = 1800 s; out of service 09:00-09:15 = 900 s; not available
    10:00-10:30 = 1800 s. Planned time = 16200 - 1800 = 14400 s.
    Parts: 200 + 4 scrap by 07:00, 300 + 6 by 09:00, 90 by 09:59 -> 600 produced, 590 good.
    availability = 11700 / 14400 = 0.8125
    performance = 18 x 600 / 11700 = 0.923077 (availability x performance = 10800 / 14400 = 0.75)
    quality = 590 / 600; oee = 0.75 x 590 / 600 = 0.7375.
    The hour (10:00-10:30): 1800 s not available, no parts: only availability's
    denominator is zero -> every factor null, seconds say why."""
    shift = OeeWindow(CALENDAR, ideal_cycle_s=18.0, modulus=2**32)
    hour = OeeWindow(Hourly(), ideal_cycle_s=18.0, modulus=2**32)
    script = [
        ("05:50", ItemState.NOT_EXECUTING, 1000, 10),  # the night shift
        ("06:00", ItemState.EXECUTING, 1000, 10),
        ("07:00", ItemState.NOT_EXECUTING, 1200, 14),
        ("07:30", ItemState.EXECUTING, 1200, 14),
        ("09:00", ItemState.OUT_OF_SERVICE, 1500, 20),
        ("09:15", ItemState.EXECUTING, 1500, 20),
        ("09:59", ItemState.EXECUTING, 1590, 20),
        ("10:00", ItemState.NOT_AVAILABLE, 1590, 20),
    ]
    for hhmm, state, good, bad in script:
        for w in (shift, hour):
            w.observe(at(hhmm), state, good, bad)
        if hhmm == "05:50":
            night = shift.figures(at("05:55"))
            assert night is not None
            assert (night.window, night.start_ms) == ("night", int(at("22:00", DAY - 86400) * 1000))
            # cellctl first saw the machine at 05:50: the shift's time before is not known
            assert night.seconds == {"not_executing": 300}
    figures = shift.figures(at("10:30"))
    assert figures is not None
    assert (figures.window, figures.start_ms) == ("early", int(at("06:00") * 1000))
    assert figures.seconds == {"executing": 11700, "not_executing": 1800, "out_of_service": 900, "not_available": 1800}
    assert (figures.produced, figures.good) == (600, 590)
    assert figures.availability == 0.8125
    assert figures.performance == pytest.approx(10800 / 11700)
    assert figures.quality == pytest.approx(590 / 600)
    assert figures.oee == pytest.approx(0.7375)
    h = hour.figures(at("10:30"))
    assert h is not None
    assert (h.window, h.start_ms, h.seconds, h.produced) == ("hour", int(at("10:00") * 1000), {"not_available": 1800}, 0)
    assert (h.availability, h.performance, h.quality, h.oee) == (None, None, None, None)
    # 14:05, no reading since 10:00: the late shift began in the last known state, no parts
    late = shift.figures(at("14:05"))
    assert late is not None
    assert (late.window, late.seconds, late.produced) == ("late", {"not_available": 300}, 0)


def test_between_shifts_there_is_no_shift_figure_and_the_next_shift_counts_from_the_last_value() -> None:
    w = OeeWindow(ShiftCalendar.of(SHIFTS[:2], "UTC"))
    w.observe(at("21:50"), ItemState.EXECUTING, 100, 0)
    w.observe(at("23:00"), ItemState.EXECUTING, 180, 0)  # made between shifts: in no shift
    assert w.figures(at("23:30")) is None
    w.observe(at("06:00", DAY + 86400), ItemState.EXECUTING, 200, 0)  # 20 more, overnight
    w.observe(at("06:10", DAY + 86400), ItemState.EXECUTING, 230, 0)
    f = w.figures(at("06:10", DAY + 86400))
    assert f is not None
    assert (f.window, f.produced) == ("early", 50)  # what was read in the shift, never what came before


@pytest.mark.parametrize(
    ("shifts", "message"),
    [
        ([{"name": "a", "start": "06:00", "end": "14:00"}, {"name": "b", "start": "13:00", "end": "20:00"}], "overlap"),
        ([{"name": "a", "start": "22:00", "end": "06:00"}, {"name": "b", "start": "05:00", "end": "07:00"}], "overlap"),
        ([{"name": "a", "start": "06:00", "end": "06:00"}], "start and end are both '06:00'"),
        ([{"name": "a", "start": "6:00", "end": "14:00"}], "should match pattern"),
        ([{"name": "a", "start": "06:00", "end": "14:00"}, {"name": "a", "start": "14:00", "end": "22:00"}], "used twice"),
    ],
)
def test_a_bad_calendar_is_refused_at_load_time(shifts: list[dict[str, str]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OeeConfig.model_validate({"shifts": shifts})


def test_an_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown timezone 'Mars/Olympus'"):
        OeeConfig.model_validate({"shifts": [], "timezone": "Mars/Olympus"})
