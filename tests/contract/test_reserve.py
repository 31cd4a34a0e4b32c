"""Reservations: where each line is held, splitting, shortfalls, backorders, pre-orders."""

from __future__ import annotations

import dataclasses

import pytest

from onhand.domain import Allocation, ReservationStatus, SkuPolicy
from onhand.engine.base import DEFAULT_MAX_HOLD_LIFETIME_MS, ManualClock, StockEngine
from onhand.errors import (
    InsufficientStock,
    InvalidInput,
    LineLimitExceeded,
    ReservationNotFound,
    Shortfall,
)
from onhand.events import EventType
from tests.contract.support import allocated, line, new_id, order, snapshot


async def stocked(engine: StockEngine, sku: str, *quantities: int) -> list[str]:
    """Fresh warehouses (in the given preference order) holding ``quantities`` of ``sku``."""
    warehouses = [new_id("wh") for _ in quantities]
    for wh, qty in zip(warehouses, quantities, strict=True):
        if qty:
            await engine.receive(sku, wh, qty)
    return warehouses


async def test_reserve_holds_the_units_at_a_fixed_warehouse(
    engine: StockEngine, clock: ManualClock
):
    sku, rid = new_id("sku"), new_id("r")
    [wh] = await stocked(engine, sku, 10)
    res = await engine.reserve(order(rid, line(sku, 3, wh), ttl_ms=30_000, owner="cart-1"))
    now = clock.now_ms
    assert res.reservation_id == rid
    assert res.status is ReservationStatus.PENDING
    assert res.allocations == (Allocation(0, sku, wh, 3),)
    assert (res.created_ms, res.deadline_ms, res.at_ms) == (now, now + 30_000, now)
    assert (res.owner, res.replayed) == ("cart-1", False)
    level = await engine.stock_level(sku, wh)
    assert (level.on_hand, level.held, level.available) == (10, 3, 7)
    assert dataclasses.replace(await engine.get_reservation(rid), at_ms=now) == res


async def test_get_reservation_reports_the_reservation_as_of_now(
    engine: StockEngine, clock: ManualClock
):
    sku, rid = new_id("sku"), new_id("r")
    [wh] = await stocked(engine, sku, 10)
    res = await engine.reserve(order(rid, line(sku, 3, wh)))
    clock.advance(5)
    got = await engine.get_reservation(rid)
    assert got == dataclasses.replace(res, at_ms=clock.now_ms)


async def test_reserve_takes_the_first_candidate_that_covers_the_whole_line(
    engine: StockEngine,
):
    sku = new_id("sku")
    a, b, c = await stocked(engine, sku, 2, 5, 10)
    res = await engine.reserve(order(new_id("r"), line(sku, 4, a, b, c)))
    assert allocated(res.allocations) == {(sku, b): 4}


async def test_reserve_without_split_fails_when_no_single_candidate_covers_the_line(
    engine: StockEngine,
):
    sku = new_id("sku")
    a, b = await stocked(engine, sku, 3, 4)
    before = await snapshot(engine)
    with pytest.raises(InsufficientStock) as err:
        await engine.reserve(order(new_id("r"), line(sku, 6, a, b)))
    assert err.value.shortfalls == (Shortfall(sku, 6, 4),)
    assert await snapshot(engine) == before


async def test_split_prefers_one_covering_candidate_over_splitting(engine: StockEngine):
    sku = new_id("sku")
    a, b = await stocked(engine, sku, 3, 8)
    res = await engine.reserve(order(new_id("r"), line(sku, 5, a, b, split=True)))
    assert allocated(res.allocations) == {(sku, b): 5}


async def test_split_uses_the_fewest_warehouses_largest_first(engine: StockEngine):
    sku = new_id("sku")
    a, b, c = await stocked(engine, sku, 1, 5, 4)
    res = await engine.reserve(order(new_id("r"), line(sku, 9, a, b, c, split=True)))
    assert allocated(res.allocations) == {(sku, b): 5, (sku, c): 4}
    assert {alloc.line for alloc in res.allocations} == {0}


async def test_split_breaks_ties_by_preference_and_takes_units_in_preference_order(
    engine: StockEngine,
):
    sku = new_id("sku")
    a, b, c = await stocked(engine, sku, 4, 5, 4)
    res = await engine.reserve(order(new_id("r"), line(sku, 8, a, b, c, split=True)))
    # Fewest warehouses: b (5) then a (4, preferred over c); units in preference order.
    assert allocated(res.allocations) == {(sku, a): 4, (sku, b): 4}


async def test_split_short_line_reports_everything_the_candidates_have(engine: StockEngine):
    sku = new_id("sku")
    a, b, c = await stocked(engine, sku, 2, 0, 3)
    with pytest.raises(InsufficientStock) as err:
        await engine.reserve(order(new_id("r"), line(sku, 9, a, b, c, split=True)))
    assert err.value.shortfalls == (Shortfall(sku, 9, 5),)


async def test_an_order_is_held_entirely_or_not_at_all_and_lists_every_shortfall(
    engine: StockEngine,
):
    s1, s2, s3 = new_id("sku"), new_id("sku"), new_id("sku")
    [w1] = await stocked(engine, s1, 2)
    [w2] = await stocked(engine, s2, 10)
    w3a, w3b = await stocked(engine, s3, 1, 1)
    before = await snapshot(engine)
    request = order(
        new_id("r"), line(s1, 5, w1), line(s2, 4, w2), line(s3, 3, w3a, w3b, split=True)
    )
    with pytest.raises(InsufficientStock) as err:
        await engine.reserve(request)
    assert err.value.shortfalls == (Shortfall(s1, 5, 2), Shortfall(s3, 3, 2))
    assert await snapshot(engine) == before
    with pytest.raises(ReservationNotFound):
        await engine.get_reservation(request.reservation_id)


async def test_a_multi_line_order_holds_every_line(engine: StockEngine):
    s1, s2 = new_id("sku"), new_id("sku")
    [w1] = await stocked(engine, s1, 2)
    w2a, w2b = await stocked(engine, s2, 3, 3)
    res = await engine.reserve(
        order(new_id("r"), line(s1, 2, w1), line(s2, 5, w2a, w2b, split=True))
    )
    assert sorted((a.line, a.sku, a.warehouse, a.qty) for a in res.allocations) == sorted(
        [(0, s1, w1, 2), (1, s2, w2a, 3), (1, s2, w2b, 2)]
    )
    reserved = [e for e in await engine.events() if e.type is EventType.RESERVED]
    assert len(reserved) == 3


async def test_backorder_allowance_lets_a_line_go_beyond_stock_up_to_the_limit(
    engine: StockEngine,
):
    sku = new_id("sku")
    await engine.set_policy(sku, SkuPolicy(backorder_limit=5))
    [wh] = await stocked(engine, sku, 2)
    first = await engine.reserve(order(new_id("r"), line(sku, 6, wh)))
    assert allocated(first.allocations) == {(sku, wh): 6}
    availability = await engine.availability(sku)
    assert (availability.beyond, availability.backorder_remaining()) == (4, 1)
    assert (await engine.stock_level(sku, wh)).available == -4
    with pytest.raises(InsufficientStock) as err:
        await engine.reserve(order(new_id("r"), line(sku, 2, wh)))
    assert err.value.shortfalls == (Shortfall(sku, 2, 1),)
    await engine.reserve(order(new_id("r"), line(sku, 1, wh)))
    assert (await engine.availability(sku)).beyond == 5


async def test_a_backorder_without_split_goes_to_the_candidate_with_most_stock(
    engine: StockEngine,
):
    sku = new_id("sku")
    await engine.set_policy(sku, SkuPolicy(backorder_limit=5))
    a, b, c = await stocked(engine, sku, 1, 3, 3)
    res = await engine.reserve(order(new_id("r"), line(sku, 5, a, b, c)))
    assert allocated(res.allocations) == {(sku, b): 5}


async def test_a_backorder_with_split_takes_all_stock_and_the_rest_at_the_preferred_one(
    engine: StockEngine,
):
    sku = new_id("sku")
    await engine.set_policy(sku, SkuPolicy(backorder_limit=5))
    a, b = await stocked(engine, sku, 1, 3)
    res = await engine.reserve(order(new_id("r"), line(sku, 6, a, b, split=True)))
    assert allocated(res.allocations) == {(sku, a): 3, (sku, b): 3}
    sku2 = new_id("sku")
    await engine.set_policy(sku2, SkuPolicy(backorder_limit=5))
    c, d = await stocked(engine, sku2, 0, 3)
    res = await engine.reserve(order(new_id("r"), line(sku2, 5, c, d, split=True)))
    assert allocated(res.allocations) == {(sku2, c): 2, (sku2, d): 3}


async def test_a_hold_on_a_warehouse_that_never_had_stock_is_listed_in_availability(
    engine: StockEngine, clock: ManualClock
):
    sku, wh, other = new_id("sku"), new_id("wh"), new_id("wh")
    release = clock.now_ms + 10_000
    await engine.set_policy(sku, SkuPolicy(preorder_limit=5, preorder_release_ms=release))
    await engine.reserve(order(new_id("r"), line(sku, 2, wh)))  # the record is new here
    await engine.reserve(order(new_id("r"), line(sku, 1, wh)))  # and exists here
    await engine.receive(sku, other, 4)
    levels = {lvl.warehouse: lvl for lvl in (await engine.availability(sku)).levels}
    assert set(levels) == {wh, other}
    assert (levels[wh].held, levels[wh].version) == (3, 2)


async def test_preorders_are_allowed_only_before_the_release_date(
    engine: StockEngine, clock: ManualClock
):
    sku, wh = new_id("sku"), new_id("wh")
    release = clock.now_ms + 10_000
    await engine.set_policy(sku, SkuPolicy(preorder_limit=3, preorder_release_ms=release))
    availability = await engine.availability(sku)
    assert (availability.preorder_remaining(), availability.backorder_remaining()) == (3, 0)
    res = await engine.reserve(order(new_id("r"), line(sku, 2, wh)))
    assert allocated(res.allocations) == {(sku, wh): 2}
    clock.now_ms = release - 1
    await engine.reserve(order(new_id("r"), line(sku, 1, wh), ttl_ms=100_000))
    clock.now_ms = release
    with pytest.raises(InsufficientStock) as err:
        await engine.reserve(order(new_id("r"), line(sku, 1, wh)))
    assert err.value.shortfalls == (Shortfall(sku, 1, 0),)


async def test_preorders_count_against_the_backorder_allowance_after_release(
    engine: StockEngine, clock: ManualClock
):
    sku, wh = new_id("sku"), new_id("wh")
    release = clock.now_ms + 1_000
    await engine.set_policy(
        sku, SkuPolicy(backorder_limit=4, preorder_limit=3, preorder_release_ms=release)
    )
    await engine.reserve(order(new_id("r"), line(sku, 3, wh), ttl_ms=600_000))
    with pytest.raises(InsufficientStock):
        await engine.reserve(order(new_id("r"), line(sku, 1, wh)))
    clock.advance(1_000)
    await engine.reserve(order(new_id("r"), line(sku, 1, wh)))
    with pytest.raises(InsufficientStock) as err:
        await engine.reserve(order(new_id("r"), line(sku, 1, wh)))
    assert err.value.shortfalls == (Shortfall(sku, 1, 0),)


async def test_a_line_above_the_max_line_qty_raises_line_limit_exceeded(engine: StockEngine):
    s1, s2 = new_id("sku"), new_id("sku")
    await engine.set_policy(s2, SkuPolicy(max_line_qty=4))
    [w1] = await stocked(engine, s1, 10)
    [w2] = await stocked(engine, s2, 10)
    before = await snapshot(engine)
    with pytest.raises(LineLimitExceeded) as err:
        await engine.reserve(order(new_id("r"), line(s1, 1, w1), line(s2, 5, w2)))
    assert (err.value.sku, err.value.requested, err.value.limit) == (s2, 5, 4)
    assert isinstance(err.value, InvalidInput)
    assert await snapshot(engine) == before
    res = await engine.reserve(order(new_id("r"), line(s1, 1, w1), line(s2, 4, w2)))
    assert allocated(res.allocations) == {(s1, w1): 1, (s2, w2): 4}


def test_an_order_may_not_list_the_same_sku_twice():
    sku = new_id("sku")
    with pytest.raises(InvalidInput) as err:
        order(new_id("r"), line(sku, 1, new_id("wh")), line(sku, 1, new_id("wh")))
    assert err.value.field == "lines"


def test_a_line_may_not_list_a_warehouse_twice():
    wh = new_id("wh")
    with pytest.raises(InvalidInput) as err:
        line(new_id("sku"), 1, wh, wh)
    assert err.value.field == "warehouses"


async def test_reserve_caps_the_deadline_at_the_maximum_hold_lifetime(
    engine: StockEngine, clock: ManualClock
):
    sku = new_id("sku")
    [wh] = await stocked(engine, sku, 1)
    res = await engine.reserve(order(new_id("r"), line(sku, 1, wh), ttl_ms=86_400_000))
    assert res.deadline_ms == clock.now_ms + DEFAULT_MAX_HOLD_LIFETIME_MS


async def test_reserve_rejects_something_that_is_not_a_request(engine: StockEngine):
    with pytest.raises(InvalidInput):
        await engine.reserve({"reservation_id": "x"})  # type: ignore[arg-type]
    assert await engine.events() == []
