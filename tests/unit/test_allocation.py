"""Candidate ordering and line planning: pure functions, no Redis."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onhand.allocation import Warehouse, by_priority, haversine_km, nearest
from onhand.engine.planning import plan_line
from onhand.errors import InvalidInput

BERLIN = (52.5200, 13.4050)
PARIS = (48.8566, 2.3522)
MADRID = (40.4168, -3.7038)


def test_haversine_matches_known_city_distances():
    assert haversine_km(*BERLIN, *PARIS) == pytest.approx(878, abs=3)
    assert haversine_km(*PARIS, *MADRID) == pytest.approx(1053, abs=3)
    assert haversine_km(*BERLIN, *BERLIN) == 0


def test_haversine_of_antipodes_is_half_the_circumference():
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371.0088)


def test_nearest_orders_active_warehouses_by_distance_to_the_ship_to_point():
    whs = [
        Warehouse("BER", latitude=BERLIN[0], longitude=BERLIN[1]),
        Warehouse("PAR", latitude=PARIS[0], longitude=PARIS[1]),
        Warehouse("MAD", latitude=MADRID[0], longitude=MADRID[1]),
        Warehouse("OFF", latitude=PARIS[0], longitude=PARIS[1], active=False),
    ]
    assert nearest(whs, 47.0, 2.0) == ("PAR", "MAD", "BER")
    assert nearest(whs, 53.0, 14.0) == ("BER", "PAR", "MAD")


def test_equally_near_warehouses_fall_back_to_priority_then_id():
    whs = [Warehouse("B", priority=5), Warehouse("A", priority=5), Warehouse("C", priority=1)]
    assert nearest(whs, 10.0, 10.0) == ("C", "A", "B")


def test_by_priority_prefers_the_lowest_value_and_skips_inactive_warehouses():
    whs = [Warehouse("X", priority=3), Warehouse("Y", priority=1), Warehouse("Z", active=False)]
    assert by_priority(whs) == ("Y", "X")


@pytest.mark.parametrize("lat, lon", [(91, 0), (0, 181), (math.nan, 0), (0, math.inf)])
def test_a_ship_to_point_off_the_globe_is_rejected(lat, lon):
    with pytest.raises(InvalidInput):
        nearest([Warehouse("A")], lat, lon)


def test_a_warehouse_with_a_bad_id_is_rejected():
    with pytest.raises(InvalidInput):
        Warehouse("a:b")


def test_the_first_candidate_covering_the_whole_line_wins():
    assert plan_line(5, [3, 9, 7], False, 0) == ([(1, 5)], 5)


def test_split_takes_the_fewest_warehouses_largest_first_in_preference_order():
    # 10 units: 8 + 5 covers with two warehouses; units are taken in preference order
    assert plan_line(10, [3, 8, 5], True, 0) == ([(1, 8), (2, 2)], 10)


def test_without_split_a_line_no_single_warehouse_covers_is_short():
    assert plan_line(10, [3, 8, 5], False, 0) == (None, 8)


def test_beyond_stock_units_go_to_the_preferred_warehouse_when_splitting():
    assert plan_line(10, [3, 0, 5], True, 2) == ([(0, 5), (2, 5)], 10)


def test_beyond_stock_without_split_uses_the_warehouse_with_most_stock():
    assert plan_line(10, [3, 8, 5], False, 2) == ([(1, 10)], 10)
    assert plan_line(10, [3, 8, 5], False, 1) == (None, 9)


def test_negative_availability_counts_as_none():
    assert plan_line(2, [-4, 2], False, 0) == ([(1, 2)], 2)


@given(
    qty=st.integers(1, 50),
    avail=st.lists(st.integers(-5, 30), min_size=1, max_size=6),
    split=st.booleans(),
    allowance=st.integers(0, 20),
)
def test_a_plan_covers_exactly_the_line_and_never_exceeds_stock_plus_allowance(
    qty, avail, split, allowance
):
    plan, could = plan_line(qty, avail, split, allowance)
    stock = [max(0, a) for a in avail]
    if plan is None:
        assert could < qty
        return
    assert sum(q for _, q in plan) == qty
    assert len({i for i, _ in plan}) == len(plan)
    assert all(q > 0 for _, q in plan)
    beyond = sum(max(0, q - stock[i]) for i, q in plan)
    assert beyond <= allowance
    if not split:
        assert len(plan) == 1
    if beyond == 0 and split and len(plan) > 1:
        # fewest warehouses: no smaller set of candidates could have covered the line
        assert sum(sorted(stock, reverse=True)[: len(plan) - 1]) < qty
