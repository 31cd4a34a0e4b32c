"""Reservation lifecycle: confirm, release, extend, fulfill, cancel (and their repeats)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from onhand.domain import Reservation, ReservationStatus, SkuPolicy
from onhand.engine.base import DEFAULT_MAX_HOLD_LIFETIME_MS, ManualClock, StockEngine
from onhand.errors import InvalidTransition, NotEnoughOnHand, ReservationNotFound
from onhand.events import EventType
from tests.contract.support import line, new_id, order, snapshot

P = ReservationStatus
TTL = 60_000


async def held(engine: StockEngine, qty: int = 3, stock: int = 10) -> tuple[str, str, str]:
    """A pending reservation of ``qty`` units (``ttl`` = TTL); returns (rid, sku, warehouse)."""
    sku, wh, rid = new_id("sku"), new_id("wh"), new_id("r")
    if stock:
        await engine.receive(sku, wh, stock)
    await engine.reserve(order(rid, line(sku, qty, wh), ttl_ms=TTL))
    return rid, sku, wh


async def levels(engine: StockEngine, sku: str, wh: str) -> tuple[int, int, int, int]:
    lvl = await engine.stock_level(sku, wh)
    return lvl.on_hand, lvl.held, lvl.committed, lvl.available


async def test_confirm_turns_held_units_into_committed_ones(engine: StockEngine, clock):
    rid, sku, wh = await held(engine)
    res = await engine.confirm(rid, actor="checkout")
    assert (res.status, res.replayed, res.at_ms) == (P.CONFIRMED, False, clock.now_ms)
    assert await levels(engine, sku, wh) == (10, 0, 3, 7)
    [event] = [e for e in await engine.events() if e.type is EventType.CONFIRMED]
    assert (event.reservation_id, event.d_held, event.d_committed, event.actor) == (
        rid,
        -3,
        3,
        "checkout",
    )


async def test_release_returns_the_held_units_to_available(engine: StockEngine):
    rid, sku, wh = await held(engine)
    res = await engine.release(rid)
    assert (res.status, res.replayed) == (P.RELEASED, False)
    assert await levels(engine, sku, wh) == (10, 0, 0, 10)


async def test_fulfill_ships_committed_units(engine: StockEngine):
    rid, sku, wh = await held(engine)
    await engine.confirm(rid)
    res = await engine.fulfill(rid)
    assert (res.status, res.replayed) == (P.FULFILLED, False)
    assert await levels(engine, sku, wh) == (7, 0, 0, 7)


async def test_cancel_returns_committed_units_to_available(engine: StockEngine):
    rid, sku, wh = await held(engine)
    await engine.confirm(rid)
    res = await engine.cancel(rid)
    assert (res.status, res.replayed) == (P.CANCELLED, False)
    assert await levels(engine, sku, wh) == (10, 0, 0, 10)


Action = Callable[[StockEngine, str], Awaitable[Reservation]]
ACTIONS: dict[str, Action] = {
    "confirm": lambda e, r: e.confirm(r),
    "release": lambda e, r: e.release(r),
    "extend": lambda e, r: e.extend(r, TTL),
    "fulfill": lambda e, r: e.fulfill(r),
    "cancel": lambda e, r: e.cancel(r),
}
# status -> the actions that reach it from pending
PATHS: dict[ReservationStatus, tuple[str, ...]] = {
    P.PENDING: (),
    P.CONFIRMED: ("confirm",),
    P.RELEASED: ("release",),
    P.EXPIRED: ("expire",),
    P.FULFILLED: ("confirm", "fulfill"),
    P.CANCELLED: ("confirm", "cancel"),
}


async def walk(engine: StockEngine, clock: ManualClock, rid: str, status: ReservationStatus):
    for step in PATHS[status]:
        if step == "expire":
            clock.advance(TTL)
            assert await engine.expire_due() == 1
        else:
            await ACTIONS[step](engine, rid)
    assert (await engine.get_reservation(rid)).status is status


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (P.CONFIRMED, "confirm"),
        (P.FULFILLED, "confirm"),
        (P.RELEASED, "release"),
        (P.FULFILLED, "fulfill"),
        (P.CANCELLED, "cancel"),
    ],
)
async def test_repeating_a_transition_that_succeeded_is_replayed_and_changes_nothing(
    engine: StockEngine, clock: ManualClock, status: ReservationStatus, action: str
):
    rid, _, _ = await held(engine)
    await walk(engine, clock, rid, status)
    before = await snapshot(engine)
    res = await ACTIONS[action](engine, rid)
    assert (res.status, res.replayed, res.at_ms) == (status, True, clock.now_ms)
    assert await snapshot(engine) == before


ILLEGAL = [
    (P.PENDING, "fulfill"),
    (P.PENDING, "cancel"),
    (P.CONFIRMED, "release"),
    (P.CONFIRMED, "extend"),
    (P.RELEASED, "confirm"),
    (P.RELEASED, "extend"),
    (P.RELEASED, "fulfill"),
    (P.RELEASED, "cancel"),
    (P.EXPIRED, "confirm"),
    (P.EXPIRED, "release"),
    (P.EXPIRED, "extend"),
    (P.EXPIRED, "fulfill"),
    (P.EXPIRED, "cancel"),
    (P.FULFILLED, "release"),
    (P.FULFILLED, "extend"),
    (P.FULFILLED, "cancel"),
    (P.CANCELLED, "confirm"),
    (P.CANCELLED, "release"),
    (P.CANCELLED, "extend"),
    (P.CANCELLED, "fulfill"),
]


@pytest.mark.parametrize(("status", "action"), ILLEGAL)
async def test_an_illegal_transition_raises_invalid_transition_with_the_status(
    engine: StockEngine, clock: ManualClock, status: ReservationStatus, action: str
):
    rid, _, _ = await held(engine)
    await walk(engine, clock, rid, status)
    before = await snapshot(engine)
    with pytest.raises(InvalidTransition) as err:
        await ACTIONS[action](engine, rid)
    assert (err.value.reservation_id, err.value.status, err.value.action) == (rid, status, action)
    assert err.value.at_ms == clock.now_ms
    assert await snapshot(engine) == before


@pytest.mark.parametrize("action", sorted(ACTIONS))
async def test_every_transition_of_an_unknown_reservation_raises_not_found(
    engine: StockEngine, action: str
):
    rid = new_id("r")
    with pytest.raises(ReservationNotFound) as err:
        await ACTIONS[action](engine, rid)
    assert err.value.reservation_id == rid
    with pytest.raises(ReservationNotFound):
        await engine.get_reservation(rid)


@pytest.mark.parametrize("late_by", [0, 1, 3_600_000])
@pytest.mark.parametrize("action", ["confirm", "release", "extend"])
async def test_a_transition_after_the_deadline_expires_the_hold_and_returns_the_stock(
    engine: StockEngine, clock: ManualClock, action: str, late_by: int
):
    rid, sku, wh = await held(engine)
    clock.advance(TTL + late_by)
    with pytest.raises(InvalidTransition) as err:
        await ACTIONS[action](engine, rid)
    assert (err.value.status, err.value.action, err.value.at_ms) == (
        P.EXPIRED,
        action,
        clock.now_ms,
    )
    assert (await engine.get_reservation(rid)).status is P.EXPIRED
    assert await levels(engine, sku, wh) == (10, 0, 0, 10)
    [event] = [e for e in await engine.events() if e.type is EventType.EXPIRED]
    assert (event.reservation_id, event.d_held, event.at_ms) == (rid, -3, clock.now_ms)
    assert await engine.expire_due() == 0


async def test_confirm_one_millisecond_before_the_deadline_succeeds(
    engine: StockEngine, clock: ManualClock
):
    rid, sku, wh = await held(engine)
    clock.advance(TTL - 1)
    assert (await engine.confirm(rid)).status is P.CONFIRMED
    assert await levels(engine, sku, wh) == (10, 0, 3, 7)


async def test_extend_moves_the_deadline_to_now_plus_ttl(engine: StockEngine, clock):
    rid, sku, wh = await held(engine)
    clock.advance(50_000)
    res = await engine.extend(rid, 30_000, actor="web")
    assert (res.deadline_ms, res.replayed, res.status) == (clock.now_ms + 30_000, False, P.PENDING)
    [event] = [e for e in await engine.events() if e.type is EventType.EXTENDED]
    assert (event.event_id, event.reservation_id, event.deadline_ms, event.actor) == (
        f"x:{rid}:1:{sku}:{wh}",
        rid,
        res.deadline_ms,
        "web",
    )
    clock.advance(20_000)  # past the original deadline, before the new one
    assert await engine.expire_due() == 0
    assert (await engine.confirm(rid)).status is P.CONFIRMED


async def test_extend_never_moves_the_deadline_earlier(engine: StockEngine, clock):
    rid, _, _ = await held(engine)
    created = (await engine.get_reservation(rid)).deadline_ms
    before = await snapshot(engine)
    res = await engine.extend(rid, TTL - 1)
    assert (res.deadline_ms, res.replayed) == (created, True)
    res = await engine.extend(rid, TTL)
    assert (res.deadline_ms, res.replayed) == (created, True)
    assert await snapshot(engine) == before


async def test_extend_is_capped_at_creation_plus_the_maximum_hold_lifetime(
    engine: StockEngine, clock: ManualClock
):
    rid, _, _ = await held(engine)
    cap = clock.now_ms + DEFAULT_MAX_HOLD_LIFETIME_MS
    clock.advance(TTL - 1)
    res = await engine.extend(rid, 86_400_000)
    assert (res.deadline_ms, res.replayed) == (cap, False)
    clock.advance(60_000)
    before = await snapshot(engine)
    res = await engine.extend(rid, 86_400_000)
    assert (res.deadline_ms, res.replayed) == (cap, True)
    assert await snapshot(engine) == before
    clock.now_ms = cap
    assert await engine.expire_due() == 1


async def test_each_extension_gets_the_next_event_number(engine: StockEngine, clock):
    rid, sku, wh = await held(engine)
    for _ in range(3):
        clock.advance(10_000)
        await engine.extend(rid, TTL)
    ids = [e.event_id for e in await engine.events() if e.type is EventType.EXTENDED]
    assert ids == [f"x:{rid}:{n}:{sku}:{wh}" for n in (1, 2, 3)]


async def test_fulfilling_a_backorder_not_yet_received_raises_not_enough_on_hand(
    engine: StockEngine, clock: ManualClock
):
    sku, wh, rid = new_id("sku"), new_id("wh"), new_id("r")
    await engine.set_policy(sku, SkuPolicy(backorder_limit=10))
    await engine.receive(sku, wh, 2)
    await engine.reserve(order(rid, line(sku, 5, wh)))
    await engine.confirm(rid)
    before = await snapshot(engine)
    with pytest.raises(NotEnoughOnHand) as err:
        await engine.fulfill(rid)
    assert (err.value.sku, err.value.warehouse, err.value.at_ms) == (sku, wh, clock.now_ms)
    assert await snapshot(engine) == before
    await engine.receive(sku, wh, 3)
    assert (await engine.fulfill(rid)).status is P.FULFILLED
    assert await levels(engine, sku, wh) == (0, 0, 0, 0)


async def test_transitions_move_every_allocation_of_the_reservation(engine: StockEngine):
    s1, s2, a, b, rid = new_id("sku"), new_id("sku"), new_id("wh"), new_id("wh"), new_id("r")
    await engine.receive(s1, a, 5)
    await engine.receive(s2, a, 2)
    await engine.receive(s2, b, 2)
    await engine.reserve(order(rid, line(s1, 5, a), line(s2, 4, a, b, split=True)))
    await engine.confirm(rid)
    assert [await levels(engine, s, w) for s, w in [(s1, a), (s2, a), (s2, b)]] == [
        (5, 0, 5, 0),
        (2, 0, 2, 0),
        (2, 0, 2, 0),
    ]
    await engine.fulfill(rid)
    assert [await levels(engine, s, w) for s, w in [(s1, a), (s2, a), (s2, b)]] == [
        (0, 0, 0, 0),
        (0, 0, 0, 0),
        (0, 0, 0, 0),
    ]
    fulfilled = [e for e in await engine.events() if e.type is EventType.FULFILLED]
    assert sorted((e.sku, e.warehouse, e.line) for e in fulfilled) == sorted(
        [(s1, a, 0), (s2, a, 1), (s2, b, 1)]
    )
