"""Redis's time per hold by batch size (loadtests.bench_hold): how samples become figures.

The calls themselves are the engine's (``lua/hold.lua``, ``hold_many`` built by the
coalescer); what is tested here is the arithmetic of the split and of the report."""

from __future__ import annotations

import pytest
from loadtests.bench_hold import Point, fit, report


def _point(orders: int, call_us: float) -> Point:
    return Point(orders, usec_per_hold=call_us / orders, cpu_us_per_hold=None)


def test_the_fit_splits_a_call_into_its_fixed_part_and_a_part_per_order():
    # calls costing 45 µs + 50 µs per order, measured as µs per hold
    points = [_point(m, 45 + 50 * m) for m in (1, 8, 16, 25)]
    fixed, per_order = fit(points)
    assert fixed == pytest.approx(45)
    assert per_order == pytest.approx(50)


def test_a_fit_from_one_batch_size_is_refused_not_guessed():
    with pytest.raises(ValueError):
        fit([_point(25, 1_000), _point(25, 1_100)])


def test_the_report_compares_each_size_with_one_order_per_call_of_the_same_run():
    points = [Point(25, 46.0, 50.0), Point(1, 92.0, None)]
    text = report(points)
    rows = [line for line in text.splitlines() if line.startswith(("| 1", "| 25"))]
    assert rows == ["| 1 | 92.0 | n/a | 1.00 x |", "| 25 | 46.0 | 50.0 | 0.50 x |"]
    assert "a call's time = 47.9 µs + 44.1 µs per order" in text


def test_the_report_of_one_size_has_no_ratio_and_no_fit():
    text = report([Point(25, 46.0, None)])
    assert "| 25 | 46.0 | n/a |  |" in text
    assert "a call's time" not in text
