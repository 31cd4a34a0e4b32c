"""Expiry: the reaper (``expire_due``) and lazy expiry inside a short ``reserve``."""

from __future__ import annotations

import pytest

from onhand.domain import ReservationStatus
from onhand.engine.base import ManualClock, StockEngine
from onhand.errors import InsufficientStock, Shortfall
from onhand.events import EventType
from tests.contract.support import line, new_id, order

P = ReservationStatus


async def test_expire_due_expires_overdue_holds_and_returns_their_stock(
    engine: StockEngine, clock: ManualClock
):
    sku, wh = new_id("sku"), new_id("wh")
    await engine.receive(sku, wh, 10)
    short = await engine.reserve(order(new_id("r"), line(sku, 2, wh), ttl_ms=1_000))
    exact = await engine.reserve(order(new_id("r"), line(sku, 3, wh), ttl_ms=5_000))
    later = await engine.reserve(order(new_id("r"), line(sku, 4, wh), ttl_ms=5_001))
    assert await engine.expire_due() == 0
    clock.advance(5_000)
    assert await engine.expire_due() == 2
    statuses = [
        (await engine.get_reservation(r.reservation_id)).status for r in (short, exact, later)
    ]
    assert statuses == [P.EXPIRED, P.EXPIRED, P.PENDING]
    level = await engine.stock_level(sku, wh)
    assert (level.held, level.available) == (4, 6)
    expired = [e for e in await engine.events() if e.type is EventType.EXPIRED]
    assert sorted((e.reservation_id, e.d_held, e.at_ms) for e in expired) == sorted(
        [(short.reservation_id, -2, clock.now_ms), (exact.reservation_id, -3, clock.now_ms)]
    )
    assert await engine.expire_due() == 0
    clock.advance(1)
    assert await engine.expire_due() == 1


async def test_expire_due_counts_reservations_not_allocations(
    engine: StockEngine, clock: ManualClock
):
    s1, s2, a, b = new_id("sku"), new_id("sku"), new_id("wh"), new_id("wh")
    for sku in (s1, s2):
        for wh in (a, b):
            await engine.receive(sku, wh, 1)
    rid = new_id("r")
    await engine.reserve(order(rid, line(s1, 2, a, b, split=True), line(s2, 1, b), ttl_ms=10))
    clock.advance(10)
    assert await engine.expire_due() == 1
    assert [(await engine.stock_level(s, w)).held for s in (s1, s2) for w in (a, b)] == [0] * 4


async def test_expire_due_leaves_confirmed_and_released_reservations_alone(
    engine: StockEngine, clock: ManualClock
):
    sku, wh = new_id("sku"), new_id("wh")
    await engine.receive(sku, wh, 10)
    confirmed, released = new_id("r"), new_id("r")
    await engine.reserve(order(confirmed, line(sku, 2, wh), ttl_ms=1_000))
    await engine.reserve(order(released, line(sku, 3, wh), ttl_ms=1_000))
    await engine.confirm(confirmed)
    await engine.release(released)
    clock.advance(10_000)
    assert await engine.expire_due() == 0
    assert (await engine.get_reservation(confirmed)).status is P.CONFIRMED
    assert (await engine.get_reservation(released)).status is P.RELEASED
    assert (await engine.stock_level(sku, wh)).committed == 2


async def test_an_overdue_hold_counts_as_held_until_something_expires_it(
    engine: StockEngine, clock: ManualClock
):
    sku, wh, rid = new_id("sku"), new_id("wh"), new_id("r")
    await engine.receive(sku, wh, 5)
    await engine.reserve(order(rid, line(sku, 5, wh), ttl_ms=1_000))
    clock.advance(2_000)
    assert (await engine.stock_level(sku, wh)).held == 5
    assert (await engine.get_reservation(rid)).status is P.PENDING


async def test_a_short_reserve_frees_overdue_holds_of_that_sku_and_then_succeeds(
    engine: StockEngine, clock: ManualClock
):
    sku, wh, stale, fresh = new_id("sku"), new_id("wh"), new_id("r"), new_id("r")
    await engine.receive(sku, wh, 5)
    await engine.reserve(order(stale, line(sku, 4, wh), ttl_ms=1_000))
    clock.advance(1_000)
    res = await engine.reserve(order(fresh, line(sku, 3, wh)))
    assert (res.status, res.allocations[0].qty) == (P.PENDING, 3)
    assert (await engine.get_reservation(stale)).status is P.EXPIRED
    level = await engine.stock_level(sku, wh)
    assert (level.held, level.available) == (3, 2)
    types = [e.type for e in await engine.events() if e.sku == sku]
    assert types[-2:] == [EventType.EXPIRED, EventType.RESERVED]
    assert await engine.expire_due() == 0


async def test_lazy_expiry_is_kept_even_when_the_reserve_still_fails(
    engine: StockEngine, clock: ManualClock
):
    sku, wh, stale = new_id("sku"), new_id("wh"), new_id("r")
    await engine.receive(sku, wh, 5)
    await engine.reserve(order(stale, line(sku, 2, wh), ttl_ms=1_000))
    clock.advance(1_000)
    with pytest.raises(InsufficientStock) as err:
        await engine.reserve(order(new_id("r"), line(sku, 6, wh)))
    assert err.value.shortfalls == (Shortfall(sku, 6, 5),)
    assert (await engine.get_reservation(stale)).status is P.EXPIRED
    assert (await engine.stock_level(sku, wh)).held == 0


async def test_lazy_expiry_only_touches_the_skus_that_were_short(
    engine: StockEngine, clock: ManualClock
):
    s1, s2, wh = new_id("sku"), new_id("sku"), new_id("wh")
    await engine.receive(s1, wh, 1)
    await engine.receive(s2, wh, 1)
    other, stale = new_id("r"), new_id("r")
    await engine.reserve(order(other, line(s2, 1, wh), ttl_ms=1_000))
    await engine.reserve(order(stale, line(s1, 1, wh), ttl_ms=1_000))
    clock.advance(1_000)
    await engine.reserve(order(new_id("r"), line(s1, 1, wh)))
    assert (await engine.get_reservation(stale)).status is P.EXPIRED
    assert (await engine.get_reservation(other)).status is P.PENDING
    assert await engine.expire_due() == 1


async def test_a_reserve_that_fits_does_not_expire_anything(
    engine: StockEngine, clock: ManualClock
):
    sku, wh, stale = new_id("sku"), new_id("wh"), new_id("r")
    await engine.receive(sku, wh, 5)
    await engine.reserve(order(stale, line(sku, 1, wh), ttl_ms=1_000))
    clock.advance(5_000)
    await engine.reserve(order(new_id("r"), line(sku, 4, wh)))
    assert (await engine.get_reservation(stale)).status is P.PENDING


async def test_lazy_expiry_frees_a_multi_sku_hold_entirely(engine: StockEngine, clock: ManualClock):
    s1, s2, wh, stale = new_id("sku"), new_id("sku"), new_id("wh"), new_id("r")
    await engine.receive(s1, wh, 2)
    await engine.receive(s2, wh, 2)
    await engine.reserve(order(stale, line(s1, 2, wh), line(s2, 2, wh), ttl_ms=1_000))
    clock.advance(1_000)
    await engine.reserve(order(new_id("r"), line(s1, 2, wh)))
    assert (await engine.stock_level(s2, wh)).held == 0
    assert (await engine.get_reservation(stale)).status is P.EXPIRED
