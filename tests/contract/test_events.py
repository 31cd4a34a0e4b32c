"""Events: every change is recorded, levels on events are current, replay rebuilds state."""

from __future__ import annotations

from onhand.domain import SkuPolicy
from onhand.engine.base import ManualClock, StockEngine
from onhand.events import Event, EventType
from onhand.state import policy_to_text
from tests.contract.support import line, new_id, order, replayed_state

RECORD_TYPES = set(EventType) - {EventType.EXTENDED, EventType.POLICY_SET, EventType.LOW_STOCK}


async def busy_day(engine: StockEngine, clock: ManualClock) -> tuple[list[str], list[str]]:
    """A bit of everything, over several SKUs, warehouses and reservations."""
    skus = [new_id("sku") for _ in range(4)]
    whs = [new_id("wh") for _ in range(3)]
    await engine.set_policy(skus[0], SkuPolicy(backorder_limit=3, reorder_point=4))
    await engine.set_policy(skus[1], SkuPolicy(reorder_point=2, max_line_qty=50))
    await engine.set_policy(
        skus[2], SkuPolicy(preorder_limit=5, preorder_release_ms=clock.now_ms + 9_000)
    )
    for i, sku in enumerate(skus[:2]):
        for j, wh in enumerate(whs):
            await engine.receive(sku, wh, 3 + i + j, reference=f"PO-{i}{j}", actor="dock")
    await engine.adjust(skus[0], whs[0], -1, reason="damaged")
    await engine.set_count(skus[1], whs[2], 9, expected_version=1)
    await engine.set_safety_stock(skus[1], whs[0], 1)
    await engine.transfer(skus[0], whs[1], whs[2], 2)
    r = [new_id("r") for _ in range(6)]
    await engine.reserve(order(r[0], line(skus[0], 7, *whs, split=True), line(skus[1], 2, whs[1])))
    await engine.reserve(
        order(r[1], line(skus[2], 4, whs[0]), line(skus[1], 3, whs[2]), ttl_ms=2_000)
    )
    await engine.reserve(order(r[2], line(skus[0], 2, whs[2]), ttl_ms=4_000, owner="u1"))
    await engine.reserve(order(r[3], line(skus[1], 1, whs[1], whs[2]), ttl_ms=3_000))
    clock.advance(1_000)
    await engine.extend(r[0], 120_000)
    await engine.extend(r[1], 2_500)
    await engine.confirm(r[0])
    await engine.fulfill(r[0])
    await engine.confirm(r[3])
    await engine.cancel(r[3])
    await engine.release(r[2])
    clock.advance(2_500)
    assert await engine.expire_due() == 1
    await engine.receive(skus[0], whs[0], 5)
    await engine.reserve(order(r[4], line(skus[0], 4, whs[0]), ttl_ms=1_000))
    clock.advance(1_000)
    await engine.reserve(order(r[5], line(skus[0], 6, whs[0])))
    return skus, whs


async def test_every_change_appends_events_with_unique_ids(engine: StockEngine, clock: ManualClock):
    sku, wh = new_id("sku"), new_id("wh")
    seen = 0
    changes = [
        engine.receive(sku, wh, 5),
        engine.adjust(sku, wh, 1, reason="found"),
        engine.set_count(sku, wh, 6, expected_version=2),
        engine.set_safety_stock(sku, wh, 1),
        engine.set_policy(sku, SkuPolicy(reorder_point=1)),
        engine.transfer(sku, wh, new_id("wh"), 1),
    ]
    for change in changes:
        await change
        count = len(await engine.events())
        assert count > seen
        seen = count
    await busy_day(engine, clock)
    ids = [e.event_id for e in await engine.events()]
    assert len(ids) == len(set(ids))


async def test_each_record_event_carries_the_levels_the_record_then_had(
    engine: StockEngine, clock: ManualClock
):
    skus, _ = await busy_day(engine, clock)
    last: dict[tuple[str, str], Event] = {}
    for event in await engine.events():
        if event.type in RECORD_TYPES:
            last[(event.sku, event.warehouse)] = event
            assert event.event_id == f"s:{event.sku}:{event.warehouse}:{event.version}"
    assert {sku for sku, _ in last} <= set(skus)
    for (sku, wh), event in last.items():
        level = await engine.stock_level(sku, wh)
        got = (
            event.on_hand,
            event.held,
            event.committed,
            event.safety_stock,
            event.version,
            bool(event.low),
        )
        assert got == (
            level.on_hand,
            level.held,
            level.committed,
            level.safety_stock,
            level.version,
            level.low,
        )
    for sku in skus:
        beyond = [
            e.beyond for e in await engine.events() if e.sku == sku and e.type in RECORD_TYPES
        ]
        assert (await engine.availability(sku)).beyond == (beyond[-1] if beyond else 0)


async def test_replaying_every_event_from_empty_rebuilds_the_state(
    engine: StockEngine, clock: ManualClock
):
    await busy_day(engine, clock)
    assert await replayed_state(engine) == await engine.state()


async def test_replaying_rebuilds_pending_and_extended_reservations(
    engine: StockEngine, clock: ManualClock
):
    s1, s2, wh = new_id("sku"), new_id("sku"), new_id("wh")
    await engine.receive(s1, wh, 8)
    await engine.receive(s2, wh, 8)
    rids = [new_id("r") for _ in range(8)]
    for rid in rids:
        await engine.reserve(order(rid, line(s1, 1, wh), line(s2, 1, wh)))
        clock.advance(10)
        await engine.extend(rid, 90_000)
    for rid in rids[:3]:
        await engine.release(rid)
    state = await engine.state()
    assert set(state.deadlines) == set(rids[3:])
    assert await replayed_state(engine) == state


async def test_reserved_events_describe_the_reservation(engine: StockEngine, clock: ManualClock):
    sku, a, b, rid = new_id("sku"), new_id("wh"), new_id("wh"), new_id("r")
    await engine.receive(sku, a, 2)
    await engine.receive(sku, b, 2)
    request = order(rid, line(sku, 3, a, b, split=True), ttl_ms=9_000, owner="u9", actor="web")
    await engine.reserve(request)
    reserved = [e for e in await engine.events() if e.type is EventType.RESERVED]
    assert sorted((e.warehouse, e.d_held, e.line) for e in reserved) == sorted(
        [(a, 2, 0), (b, 1, 0)]
    )
    for e in reserved:
        assert (e.reservation_id, e.fingerprint, e.owner, e.actor) == (
            rid,
            request.fingerprint(),
            "u9",
            "web",
        )
        assert (e.deadline_ms, e.at_ms) == (clock.now_ms + 9_000, clock.now_ms)
        assert e.max_deadline_ms > e.deadline_ms


async def test_a_policy_event_carries_the_policy_text_and_its_version(engine: StockEngine):
    sku = new_id("sku")
    policy = SkuPolicy(backorder_limit=2, reorder_point=3, reorder_qty=7, lead_time_days=4)
    await engine.set_policy(sku, policy, actor="buyer")
    [event] = await engine.events()
    assert (event.type, event.sku, event.policy, event.version, event.actor) == (
        EventType.POLICY_SET,
        sku,
        policy_to_text(policy),
        1,
        "buyer",
    )


async def low_stock_events(engine: StockEngine, sku: str) -> list[Event]:
    return [e for e in await engine.events() if e.type is EventType.LOW_STOCK and e.sku == sku]


async def test_a_record_crossing_below_its_reorder_point_emits_one_low_stock_event(
    engine: StockEngine,
):
    sku, wh = new_id("sku"), new_id("wh")
    await engine.set_policy(sku, SkuPolicy(reorder_point=5))
    await engine.receive(sku, wh, 10)
    assert await low_stock_events(engine, sku) == []
    await engine.reserve(order(new_id("r"), line(sku, 6, wh)))
    level = await engine.stock_level(sku, wh)
    assert (level.available, level.low) == (4, True)
    [event] = await low_stock_events(engine, sku)
    assert (event.event_id, event.warehouse, event.low) == (f"l:{sku}:{wh}:2", wh, 1)
    assert (event.on_hand, event.held, event.version) == (10, 6, 2)
    assert (await engine.availability(sku)).low_stock is True


async def test_a_record_that_stays_low_emits_no_further_low_stock_event(engine: StockEngine):
    sku, wh = new_id("sku"), new_id("wh")
    await engine.set_policy(sku, SkuPolicy(reorder_point=5))
    await engine.receive(sku, wh, 10)
    await engine.reserve(order(new_id("r"), line(sku, 6, wh)))
    await engine.reserve(order(new_id("r"), line(sku, 1, wh)))
    await engine.adjust(sku, wh, -2, reason="lost")
    await engine.receive(sku, wh, 1)
    assert len(await low_stock_events(engine, sku)) == 1


async def test_a_record_that_recovers_and_drops_again_emits_another_low_stock_event(
    engine: StockEngine,
):
    sku, wh = new_id("sku"), new_id("wh")
    await engine.set_policy(sku, SkuPolicy(reorder_point=5))
    await engine.receive(sku, wh, 10)
    first = new_id("r")
    await engine.reserve(order(first, line(sku, 6, wh)))
    await engine.release(first)
    level = await engine.stock_level(sku, wh)
    assert (level.available, level.low) == (10, False)
    assert len(await low_stock_events(engine, sku)) == 1
    await engine.reserve(order(new_id("r"), line(sku, 6, wh)))
    events = await low_stock_events(engine, sku)
    assert [e.version for e in events] == [2, 4]


async def test_exactly_at_the_reorder_point_is_not_low(engine: StockEngine):
    sku, wh = new_id("sku"), new_id("wh")
    await engine.set_policy(sku, SkuPolicy(reorder_point=5))
    await engine.receive(sku, wh, 5)
    assert (await engine.stock_level(sku, wh)).low is False
    await engine.adjust(sku, wh, -1, reason="lost")
    assert (await engine.stock_level(sku, wh)).low is True
    assert len(await low_stock_events(engine, sku)) == 1


async def test_low_stock_is_tracked_per_warehouse(engine: StockEngine):
    sku, a, b = new_id("sku"), new_id("wh"), new_id("wh")
    await engine.set_policy(sku, SkuPolicy(reorder_point=3))
    await engine.receive(sku, a, 2)
    await engine.receive(sku, b, 2)
    assert sorted(e.warehouse for e in await low_stock_events(engine, sku)) == sorted([a, b])


async def test_a_split_reservation_resolves_its_allocations_by_warehouse_not_by_plan(
    engine: StockEngine,
):
    # The plan lists the preferred candidate first (the backorder lands there), but
    # every resolution walks allocations as the API lists them, by line then warehouse,
    # so the sku's beyond-stock exposure on each event is the same in every engine (and
    # the same again after a rehydrate, which rebuilds allocations in that order).
    sku = new_id("sku")
    first, second = sorted([new_id("wh"), new_id("wh")])
    await engine.set_policy(sku, SkuPolicy(backorder_limit=2))
    await engine.receive(sku, first, 1)
    rid = new_id("r")
    await engine.reserve(order(rid, line(sku, 2, second, first, split=True)))
    await engine.release(rid)
    released = [
        (e.warehouse, e.beyond) for e in await engine.events() if e.type is EventType.RELEASED
    ]
    assert released == [(first, 1), (second, 0)]
