"""The reservation id is the idempotency key: a retry never holds twice."""

from __future__ import annotations

import dataclasses

import pytest

from onhand.domain import Line, ReservationStatus, ReserveRequest
from onhand.engine.base import ManualClock, StockEngine
from onhand.errors import IdempotencyConflict, InsufficientStock
from tests.contract.support import line, new_id, order, snapshot


async def two_warehouse_order(engine: StockEngine, **kwargs: object) -> ReserveRequest:
    """A stocked SKU in two warehouses and an order for 2 units of it (not yet sent)."""
    sku, a, b = new_id("sku"), new_id("wh"), new_id("wh")
    await engine.receive(sku, a, 10)
    await engine.receive(sku, b, 10)
    return order(new_id("r"), line(sku, 2, a, b), owner="cart-7", **kwargs)  # type: ignore[arg-type]


async def test_a_retry_with_the_same_payload_is_replayed_and_holds_nothing_more(
    engine: StockEngine, clock: ManualClock
):
    request = await two_warehouse_order(engine)
    first = await engine.reserve(request)
    before = await snapshot(engine)
    clock.advance(1_000)
    again = await engine.reserve(request)
    assert again.replayed is True
    assert again.allocations == first.allocations
    assert (again.status, again.created_ms, again.deadline_ms) == (
        first.status,
        first.created_ms,
        first.deadline_ms,
    )
    assert again.at_ms == clock.now_ms
    assert await snapshot(engine) == before


async def test_a_retry_from_another_actor_is_the_same_payload(engine: StockEngine):
    request = await two_warehouse_order(engine, actor="web")
    first = await engine.reserve(request)
    again = await engine.reserve(dataclasses.replace(request, actor="mobile app"))
    assert (again.replayed, again.allocations) == (True, first.allocations)


async def test_an_equal_payload_built_anew_is_the_same_payload(engine: StockEngine):
    request = await two_warehouse_order(engine)
    await engine.reserve(request)
    rebuilt = ReserveRequest(
        request.reservation_id,
        tuple(Line(x.sku, x.qty, tuple(x.warehouses), x.allow_split) for x in request.lines),
        request.ttl_ms,
        owner=request.owner,
    )
    assert (await engine.reserve(rebuilt)).replayed is True


async def _confirm(engine: StockEngine, rid: str, clock: ManualClock) -> None:
    await engine.confirm(rid)


async def _release(engine: StockEngine, rid: str, clock: ManualClock) -> None:
    await engine.release(rid)


async def _expire(engine: StockEngine, rid: str, clock: ManualClock) -> None:
    clock.advance(60_000)
    assert await engine.expire_due() == 1


async def _fulfill(engine: StockEngine, rid: str, clock: ManualClock) -> None:
    await engine.confirm(rid)
    await engine.fulfill(rid)


async def _cancel(engine: StockEngine, rid: str, clock: ManualClock) -> None:
    await engine.confirm(rid)
    await engine.cancel(rid)


@pytest.mark.parametrize(
    ("settle", "status"),
    [
        (_confirm, ReservationStatus.CONFIRMED),
        (_release, ReservationStatus.RELEASED),
        (_expire, ReservationStatus.EXPIRED),
        (_fulfill, ReservationStatus.FULFILLED),
        (_cancel, ReservationStatus.CANCELLED),
    ],
    ids=["confirmed", "released", "expired", "fulfilled", "cancelled"],
)
async def test_a_retry_after_the_reservation_moved_on_is_still_replayed(
    engine: StockEngine, clock: ManualClock, settle, status: ReservationStatus
):
    request = await two_warehouse_order(engine)
    first = await engine.reserve(request)
    await settle(engine, request.reservation_id, clock)
    before = await snapshot(engine)
    again = await engine.reserve(request)
    assert (again.replayed, again.status, again.allocations) == (True, status, first.allocations)
    assert await snapshot(engine) == before


def _more_units(r: ReserveRequest) -> ReserveRequest:
    return dataclasses.replace(r, lines=(dataclasses.replace(r.lines[0], qty=3),))


def _other_ttl(r: ReserveRequest) -> ReserveRequest:
    return dataclasses.replace(r, ttl_ms=r.ttl_ms + 1)


def _other_owner(r: ReserveRequest) -> ReserveRequest:
    return dataclasses.replace(r, owner="cart-8")


def _no_owner(r: ReserveRequest) -> ReserveRequest:
    return dataclasses.replace(r, owner="")


def _other_preference(r: ReserveRequest) -> ReserveRequest:
    first = r.lines[0]
    return dataclasses.replace(
        r, lines=(dataclasses.replace(first, warehouses=first.warehouses[::-1]),)
    )


def _split_allowed(r: ReserveRequest) -> ReserveRequest:
    return dataclasses.replace(r, lines=(dataclasses.replace(r.lines[0], allow_split=True),))


def _fewer_candidates(r: ReserveRequest) -> ReserveRequest:
    first = r.lines[0]
    return dataclasses.replace(
        r, lines=(dataclasses.replace(first, warehouses=first.warehouses[:1]),)
    )


def _extra_line(r: ReserveRequest) -> ReserveRequest:
    return dataclasses.replace(r, lines=(*r.lines, line(new_id("sku"), 1, new_id("wh"))))


@pytest.mark.parametrize(
    "change",
    [
        _more_units,
        _other_ttl,
        _other_owner,
        _no_owner,
        _other_preference,
        _split_allowed,
        _fewer_candidates,
        _extra_line,
    ],
)
async def test_a_retry_with_a_different_payload_raises_idempotency_conflict(
    engine: StockEngine, clock: ManualClock, change
):
    request = await two_warehouse_order(engine)
    await engine.reserve(request)
    before = await snapshot(engine)
    with pytest.raises(IdempotencyConflict) as err:
        await engine.reserve(change(request))
    assert (err.value.reservation_id, err.value.at_ms) == (request.reservation_id, clock.now_ms)
    assert await snapshot(engine) == before


async def test_a_different_payload_conflicts_even_after_the_reservation_was_released(
    engine: StockEngine,
):
    request = await two_warehouse_order(engine)
    await engine.reserve(request)
    await engine.release(request.reservation_id)
    with pytest.raises(IdempotencyConflict):
        await engine.reserve(_more_units(request))


async def test_a_reservation_that_failed_for_lack_of_stock_can_be_retried_later(
    engine: StockEngine,
):
    sku, wh, rid = new_id("sku"), new_id("wh"), new_id("r")
    request = order(rid, line(sku, 4, wh))
    with pytest.raises(InsufficientStock):
        await engine.reserve(request)
    await engine.receive(sku, wh, 4)
    res = await engine.reserve(request)
    assert (res.replayed, res.status) == (False, ReservationStatus.PENDING)
    assert (await engine.stock_level(sku, wh)).held == 4


async def test_the_same_id_with_another_payload_after_a_failure_is_a_new_reservation(
    engine: StockEngine,
):
    sku, wh, rid = new_id("sku"), new_id("wh"), new_id("r")
    await engine.receive(sku, wh, 2)
    with pytest.raises(InsufficientStock):
        await engine.reserve(order(rid, line(sku, 4, wh)))
    res = await engine.reserve(order(rid, line(sku, 2, wh)))
    assert (res.replayed, res.allocations[0].qty) == (False, 2)
