"""Planner: properties over random point sets, plus the edges spelled out."""

from __future__ import annotations

import itertools

import pytest
from cellctl_modbus.planner import BIT_TABLES, TABLES, PlanError, PlanPoint, ReadRequest, describe, plan
from hypothesis import given, settings
from hypothesis import strategies as st


@st.composite
def point_sets(draw: st.DrawFn) -> tuple[list[PlanPoint], int, int, int]:
    max_registers = draw(st.integers(1, 125))
    max_bits = draw(st.integers(1, 2000))
    max_gap = draw(st.integers(0, 40))
    n = draw(st.integers(0, 40))
    points = []
    for i in range(n):
        table = draw(st.sampled_from(TABLES))
        limit = max_bits if table in BIT_TABLES else max_registers
        count = draw(st.integers(1, min(limit, 8)))
        # a narrow address range makes overlaps and duplicates common
        start = draw(st.integers(0, draw(st.sampled_from([20, 300, 65536 - count]))))
        points.append(PlanPoint(i, table, start, count))
    return points, max_registers, max_bits, max_gap


def run(case: tuple[list[PlanPoint], int, int, int], mode: str = "merged") -> list[ReadRequest]:
    points, max_registers, max_bits, max_gap = case
    return plan(points, max_registers=max_registers, max_bits=max_bits, max_gap=max_gap, mode=mode)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(case=point_sets(), mode=st.sampled_from(["merged", "per_point"]))
def test_every_point_covered_exactly_once(case: tuple[list[PlanPoint], int, int, int], mode: str) -> None:
    points = case[0]
    requests = run(case, mode)
    seen = [i for r in requests for i, _ in r.points]
    assert sorted(seen) == [p.index for p in points]
    by_index = {p.index: p for p in points}
    for r in requests:
        for i, off in r.points:
            p = by_index[i]
            assert p.table == r.table
            assert r.start + off == p.start  # the offset locates the point
            assert off >= 0
            assert off + p.count <= r.count  # and the point lies wholly inside


@settings(max_examples=300)
@given(case=point_sets(), mode=st.sampled_from(["merged", "per_point"]))
def test_requests_within_limits(case: tuple[list[PlanPoint], int, int, int], mode: str) -> None:
    _, max_registers, max_bits, _ = case
    for r in run(case, mode):
        assert 1 <= r.count <= (max_bits if r.table in BIT_TABLES else max_registers)
        assert r.start >= 0
        assert r.end <= 65536


def widest_overlap_run(points: list[PlanPoint], table: str) -> int:
    """Span of the widest run of mutually overlapping points (computed independently)."""
    spans = sorted((p.start, p.end) for p in points if p.table == table)
    widest, run_start, run_end = 0, None, -1
    for s, e in spans:
        if run_start is None or s >= run_end:
            run_start, run_end = s, e
        else:
            run_end = max(run_end, e)
        widest = max(widest, run_end - run_start)
    return widest


@settings(max_examples=300)
@given(case=point_sets())
def test_merged_requests_in_a_table_never_overlap(case: tuple[list[PlanPoint], int, int, int]) -> None:
    """...unless overlapping points together are wider than one request may be."""
    points, max_registers, max_bits, _ = case
    requests = run(case)
    for table in TABLES:
        limit = max_bits if table in BIT_TABLES else max_registers
        if widest_overlap_run(points, table) > limit:
            continue
        spans = sorted((r.start, r.end) for r in requests if r.table == table)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start


def test_overlap_wider_than_a_request_is_cut() -> None:
    pts = [PlanPoint(0, "coil", 0, 2), PlanPoint(1, "coil", 1, 2)]
    assert [(r.start, r.count) for r in plan(pts, max_bits=2)] == [(0, 2), (1, 2)]
    assert [(r.start, r.count) for r in plan(pts, max_bits=3)] == [(0, 3)]


@settings(max_examples=300)
@given(case=point_sets())
def test_merged_never_more_requests_than_per_point(case: tuple[list[PlanPoint], int, int, int]) -> None:
    assert len(run(case, "merged")) <= len(run(case, "per_point"))
    assert len(run(case, "per_point")) == len(case[0])


@settings(max_examples=300)
@given(case=point_sets())
def test_gap_rule(case: tuple[list[PlanPoint], int, int, int]) -> None:
    """Within a request no hole is wider than max_gap; and two neighbouring requests were
    kept apart for a reason: a wider gap, or a merged span over the limit."""
    points, max_registers, max_bits, max_gap = case
    by_index = {p.index: p for p in points}
    requests = run(case)
    for r in requests:
        covered = set()
        for i, _ in r.points:
            covered.update(range(by_index[i].start, by_index[i].end))
        hole = 0
        for a in range(r.start, r.end):
            hole = 0 if a in covered else hole + 1
            assert hole <= max_gap
        assert r.start in covered  # no slack at the ends
        assert r.end - 1 in covered
    for table in TABLES:
        rs = [r for r in requests if r.table == table]
        limit = max_bits if table in BIT_TABLES else max_registers
        for a, b in itertools.pairwise(rs):
            assert b.start - a.end > max_gap or max(a.end, b.end) - a.start > limit


def test_plan_spelled_out() -> None:
    pts = [
        PlanPoint(0, "holding", 0, 2),
        PlanPoint(1, "holding", 2, 1),
        PlanPoint(2, "holding", 2, 1),  # two points on one register
        PlanPoint(3, "holding", 13, 2),  # gap of 10 after 0..2: merged
        PlanPoint(4, "holding", 26, 1),  # gap of 11: a new request
        PlanPoint(5, "coil", 5, 1),
        PlanPoint(6, "input", 0, 4),
    ]
    assert plan(pts, max_gap=10) == [
        ReadRequest("holding", 0, 15, ((0, 0), (1, 2), (2, 2), (3, 13))),
        ReadRequest("holding", 26, 1, ((4, 0),)),
        ReadRequest("input", 0, 4, ((6, 0),)),
        ReadRequest("coil", 5, 1, ((5, 0),)),
    ]
    assert describe(plan(pts, max_gap=10)) == [
        "holding 0..14 (15 registers, 4 points)",
        "holding 26..26 (1 register, 1 point)",
        "input 0..3 (4 registers, 1 point)",
        "coil 5..5 (1 bit, 1 point)",
    ]


def test_span_limit_splits() -> None:
    pts = [PlanPoint(i, "holding", i * 2, 2) for i in range(100)]  # 0..199, contiguous
    requests = plan(pts, max_registers=125)
    assert [(r.start, r.count) for r in requests] == [(0, 124), (124, 76)]


def test_oversized_point_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="spans 60 registers, more than one request may read \\(50\\)"):
        plan([PlanPoint(0, "holding", 0, 60)], max_registers=50)
    with pytest.raises(PlanError, match="outside"):
        plan([PlanPoint(0, "holding", 65535, 2)])
    assert issubclass(PlanError, ValueError)


def fewest_requests(points: list[PlanPoint], table: str, limit: int, max_gap: int) -> int:
    """Brute-force optimum for non-overlapping points: the fewest contiguous groups
    (in address order) that obey the gap and span rules."""
    pts = sorted((p for p in points if p.table == table), key=lambda p: p.start)
    best = [0] + [len(pts) + 1] * len(pts)  # best[j]: fewest requests for pts[:j]
    for j in range(1, len(pts) + 1):
        for i in range(j):
            group = pts[i:j]
            gaps_ok = all(b.start - a.end <= max_gap for a, b in itertools.pairwise(group))
            if gaps_ok and group[-1].end - group[0].start <= limit:
                best[j] = min(best[j], best[i] + 1)
    return best[len(pts)]


@settings(max_examples=300)
@given(case=point_sets())
def test_merged_is_minimal_for_disjoint_points(case: tuple[list[PlanPoint], int, int, int]) -> None:
    points, max_registers, max_bits, max_gap = case
    disjoint: list[PlanPoint] = []
    for p in sorted(points, key=lambda p: (p.table, p.start)):
        if not any(q.table == p.table and q.start < p.end and p.start < q.end for q in disjoint):
            disjoint.append(p)
    requests = plan(disjoint, max_registers=max_registers, max_bits=max_bits, max_gap=max_gap)
    for table in TABLES:
        limit = max_bits if table in BIT_TABLES else max_registers
        got = sum(1 for r in requests if r.table == table)
        assert got == fewest_requests(disjoint, table, limit, max_gap)


@settings(max_examples=200)
@given(case=point_sets(), cuts=st.lists(st.integers(0, 400), max_size=5))
def test_no_request_spans_a_barrier(case: tuple[list[PlanPoint], int, int, int], cuts: list[int]) -> None:
    points, max_registers, max_bits, max_gap = case
    barriers = {t: set(cuts) for t in TABLES}
    requests = plan(points, max_registers=max_registers, max_bits=max_bits, max_gap=max_gap, barriers=barriers)
    assert sorted(i for r in requests for i, _ in r.points) == sorted(p.index for p in points)
    by_index = {p.index: p for p in points}
    for r in requests:
        for b in cuts:
            if r.start < b < r.end:  # only where a point itself straddles it (never cut)
                assert any(by_index[i].start < b < by_index[i].end for i, _ in r.points)
