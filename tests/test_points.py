"""The hot path's arithmetic: scaling, deadbands, quality transitions."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellctl.config.profile import PointDef
from cellctl.driver import Reading
from cellctl.engine.points import BAD, GOOD, UNCERTAIN, PointTable
from cellctl.model import QualityChange

ADDR = {"table": "holding", "start": 0, "type": "uint16"}


def point(**kw: object) -> PointDef:
    return PointDef.model_validate({"id": "p", "type": "float", "address": ADDR, **kw})


def test_scale_and_offset_applied_once() -> None:
    t = PointTable([point(scale=0.1, offset=-40)])
    changed, quality = t.apply(Reading([650]))
    assert changed == {"p": pytest.approx(25.0)}
    assert quality == {"p": QualityChange(GOOD)}


def test_int_point_with_integral_scale_stays_int() -> None:
    t = PointTable([point(type="int", scale=10)])
    changed, _ = t.apply(Reading([7]))
    assert changed == {"p": 70}
    assert isinstance(changed["p"], int)


def test_unchanged_value_is_not_reported_again() -> None:
    t = PointTable([point()])
    t.apply(Reading([1.0]))
    assert t.apply(Reading([1.0])) == ({}, {})
    assert t.apply(Reading([2.0]))[0] == {"p": 2.0}


def test_absolute_deadband_measures_from_last_reported_value() -> None:
    t = PointTable([point(deadband={"absolute": 1.0})])
    t.apply(Reading([10.0]))
    assert t.apply(Reading([10.6]))[0] == {}
    assert t.apply(Reading([10.9]))[0] == {}  # still within 1.0 of 10.0: no creeping
    assert t.apply(Reading([11.2]))[0] == {"p": 11.2}


def test_percent_deadband_uses_range_when_declared() -> None:
    t = PointTable([point(deadband={"percent": 10}, min=0, max=200)])
    t.apply(Reading([100.0]))
    assert t.apply(Reading([119.0]))[0] == {}
    assert t.apply(Reading([121.0]))[0] == {"p": 121.0}


def test_percent_deadband_without_range_uses_last_value() -> None:
    t = PointTable([point(deadband={"percent": 10})])
    t.apply(Reading([100.0]))
    assert t.apply(Reading([109.0]))[0] == {}
    assert t.apply(Reading([111.0]))[0] == {"p": 111.0}


def test_point_error_marks_only_that_point_bad_once() -> None:
    t = PointTable([point(), PointDef.model_validate({"id": "q", "type": "int", "address": ADDR})])
    t.apply(Reading([1.0, 2]))
    changed, quality = t.apply(Reading([None, 3], errors={0: "modbus exception 2 (illegal data address)"}))
    assert changed == {"q": 3}
    assert quality == {"p": QualityChange(BAD, "modbus exception 2 (illegal data address)")}
    # the same error again is not news
    assert t.apply(Reading([None, 3], errors={0: "modbus exception 2 (illegal data address)"})) == ({}, {})
    # recovery reports the value even if it equals the last one reported
    changed, quality = t.apply(Reading([1.0, 3]))
    assert changed == {"p": 1.0}
    assert quality == {"p": QualityChange(GOOD)}


def test_nan_is_bad_and_limits_make_uncertain() -> None:
    t = PointTable([point(min=0, max=10)])
    assert t.apply(Reading([math.nan]))[1]["p"].quality == BAD
    changed, quality = t.apply(Reading([11.0]))
    assert changed == {"p": 11.0}
    assert quality == {"p": QualityChange(UNCERTAIN, "above max 10.0")}


def test_partial_readings_by_index() -> None:
    t = PointTable([point(), PointDef.model_validate({"id": "q", "type": "float", "address": ADDR})])
    changed, _ = t.apply(Reading([5.0], indexes=[1], source_ts=1000.0))
    assert changed == {"q": 5.0}
    assert t.src_ts == [None, 1000.0]


def test_mark_all_bad_reports_each_point_once() -> None:
    t = PointTable([point()])
    t.apply(Reading([1.0]))
    assert t.mark_all_bad("timeout") == {"p": QualityChange(BAD, "timeout")}
    assert t.mark_all_bad("timeout") == {}


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_reported_values_never_differ_by_less_than_the_deadband(values: list[float], band: float) -> None:
    t = PointTable([point(deadband={"absolute": band})])
    reported = [c["p"] for v in values if (c := t.apply(Reading([v]))[0])]
    assert reported[0] == values[0]
    for a, b in itertools.pairwise(reported):
        assert abs(b - a) > band


@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(-3, 3), min_size=4, max_size=4),
            st.one_of(
                st.none(), st.dictionaries(st.integers(0, 3), st.sampled_from(["timeout", "exception 2"]))
            ),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_fast_path_reports_exactly_what_the_general_path_reports(
    readings: list[tuple[list[int], dict[int, str] | None]],
) -> None:
    points = [PointDef.model_validate({"id": f"p{i}", "type": "int", "address": ADDR}) for i in range(4)]
    fast, general = PointTable(points), PointTable(points)
    general.simple = False
    assert fast.simple
    for values, errors in readings:
        assert fast.apply(Reading(list(values), errors=errors or None)) == general.apply(
            Reading(list(values), errors=errors or None)
        )
        assert fast.value == general.value
        assert fast.quality == general.quality


def test_uncertain_value_is_taken_with_its_reason() -> None:
    t = PointTable([point()])
    changed, quality = t.apply(Reading([3.5], uncertain={0: "UncertainLastUsableValue"}))
    assert changed == {"p": 3.5}
    assert quality == {"p": QualityChange(UNCERTAIN, "UncertainLastUsableValue")}
    changed, quality = t.apply(Reading([3.5]))
    assert quality == {"p": QualityChange(GOOD)}


def test_a_scaled_integer_register_has_no_float_noise() -> None:
    """Issue 9 item 5: 409 x 0.1 is 40.9 on the wire, not 40.900000000000006."""
    t = PointTable([point(scale=0.1)])
    assert t.apply(Reading([409]))[0] == {"p": 40.9}
    t = PointTable([point(scale=0.01, offset=-273.15)])
    assert t.apply(Reading([12345]))[0] == {"p": -149.7}
    t = PointTable([point(scale=0.001)])
    assert repr(t.apply(Reading([1]))[0]["p"]) == "0.001"


def test_decimals_round_what_a_sensor_cannot_resolve() -> None:
    t = PointTable([point(decimals=1)])
    assert t.apply(Reading([21.4567]))[0] == {"p": 21.5}
    t = PointTable([point(decimals=2, scale=2.0)])
    assert t.apply(Reading([1.23456]))[0] == {"p": 2.47}


@given(raw=st.integers(-(2**31), 2**31 - 1), digits=st.integers(0, 6))
def test_scaling_an_integer_is_the_exact_decimal_rounded_to_the_scale(raw: int, digits: int) -> None:
    scale = float(f"1e-{digits}")
    got = PointTable([point(scale=scale)]).apply(Reading([raw]))[0]["p"]
    assert got == float(Decimal(raw).scaleb(-digits)), "the nearest double to the exact decimal"


def test_decimals_only_for_float_points() -> None:
    with pytest.raises(ValueError, match="decimals"):
        PointDef.model_validate({"id": "p", "type": "int", "address": ADDR, "decimals": 1})
