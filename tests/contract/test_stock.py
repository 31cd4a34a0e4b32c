"""Stock operations: receive, adjust, set_count, transfer, safety stock, policies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from onhand.domain import MAX_STOCK, SkuPolicy, StockLevel
from onhand.engine.base import ManualClock, StockEngine
from onhand.errors import (
    InsufficientStock,
    InvalidInput,
    Shortfall,
    StockLimitExceeded,
    VersionConflict,
)
from onhand.events import EventType
from tests.contract.support import line, new_id, order, snapshot


@pytest.fixture
def sku() -> str:
    return new_id("sku")


@pytest.fixture
def wh() -> str:
    return new_id("wh")


async def test_an_untouched_record_reads_as_all_zero_at_version_0(engine: StockEngine, sku, wh):
    assert await engine.stock_level(sku, wh) == StockLevel(sku, wh)


async def test_receive_adds_units_to_on_hand_and_available(engine: StockEngine, sku, wh):
    first = await engine.receive(sku, wh, 5)
    second = await engine.receive(sku, wh, 3, reference="PO-1", actor="alice")
    assert first == StockLevel(sku, wh, on_hand=5, version=1)
    assert second == StockLevel(sku, wh, on_hand=8, version=2)
    assert second.available == 8
    assert await engine.stock_level(sku, wh) == second


async def test_receive_records_its_reference_and_actor_on_the_event(
    engine: StockEngine, clock: ManualClock, sku, wh
):
    await engine.receive(sku, wh, 4, reference="PO-77", actor="bob")
    [event] = await engine.events()
    assert event.type is EventType.RECEIVED
    assert (event.sku, event.warehouse, event.d_on_hand, event.on_hand) == (sku, wh, 4, 4)
    assert (event.reference, event.actor, event.at_ms) == ("PO-77", "bob", clock.now_ms)


@pytest.mark.parametrize(
    ("reason", "delta"),
    [
        ("damaged", -2),
        ("lost", -1),
        ("found", 3),
        ("returned", 1),
        ("correction", -4),
        ("correction", 4),
    ],
)
async def test_adjust_applies_a_delta_whose_sign_fits_the_reason(
    engine: StockEngine, sku, wh, reason: str, delta: int
):
    await engine.receive(sku, wh, 10)
    level = await engine.adjust(sku, wh, delta, reason=reason, reference="r", actor="a")
    assert (level.on_hand, level.version) == (10 + delta, 2)
    event = (await engine.events())[-1]
    assert (event.type, event.d_on_hand, event.reason) == (EventType.ADJUSTED, delta, reason)


@pytest.mark.parametrize(
    ("reason", "delta"),
    [("damaged", 1), ("lost", 2), ("found", -1), ("returned", -3), ("correction", 0), ("found", 0)],
)
async def test_adjust_rejects_a_delta_whose_sign_does_not_fit_the_reason(
    engine: StockEngine, sku, wh, reason: str, delta: int
):
    await engine.receive(sku, wh, 10)
    before = await snapshot(engine)
    with pytest.raises(InvalidInput) as err:
        await engine.adjust(sku, wh, delta, reason=reason)
    assert err.value.field == "delta"
    assert await snapshot(engine) == before


@pytest.mark.parametrize("reason", ["stolen", "", "DAMAGED", "stocktake"])
async def test_adjust_rejects_an_unknown_reason(engine: StockEngine, sku, wh, reason: str):
    await engine.receive(sku, wh, 10)
    before = await snapshot(engine)
    with pytest.raises(InvalidInput) as err:
        await engine.adjust(sku, wh, -1, reason=reason)
    assert err.value.field == "reason"
    assert await snapshot(engine) == before


async def test_adjust_never_takes_on_hand_below_zero(engine: StockEngine, sku, wh):
    await engine.receive(sku, wh, 3)
    before = await snapshot(engine)
    with pytest.raises(InvalidInput) as err:
        await engine.adjust(sku, wh, -4, reason="lost")
    assert err.value.field == "delta"
    assert await snapshot(engine) == before
    assert (await engine.adjust(sku, wh, -3, reason="lost")).on_hand == 0


async def test_adjust_may_write_stock_down_below_what_is_already_promised(
    engine: StockEngine, sku, wh
):
    await engine.receive(sku, wh, 5)
    await engine.reserve(order(new_id("r"), line(sku, 4, wh)))
    level = await engine.adjust(sku, wh, -3, reason="damaged")
    assert (level.on_hand, level.held, level.available) == (2, 4, -2)
    assert (await engine.availability(sku)).beyond == 2


async def test_set_count_with_version_0_creates_a_new_record(engine: StockEngine, sku, wh):
    level = await engine.set_count(sku, wh, 7, expected_version=0, reference="cnt-1")
    assert level == StockLevel(sku, wh, on_hand=7, version=1)
    [event] = await engine.events()
    assert (event.type, event.d_on_hand, event.reason) == (EventType.COUNTED, 7, "stocktake")


async def test_set_count_at_the_current_version_sets_on_hand(engine: StockEngine, sku, wh):
    await engine.receive(sku, wh, 10)
    await engine.adjust(sku, wh, -1, reason="damaged")
    level = await engine.set_count(sku, wh, 4, expected_version=2)
    assert (level.on_hand, level.version) == (4, 3)
    assert (await engine.events())[-1].d_on_hand == -5


async def test_set_count_equal_to_on_hand_is_still_recorded_with_delta_0(
    engine: StockEngine, sku, wh
):
    await engine.receive(sku, wh, 6)
    level = await engine.set_count(sku, wh, 6, expected_version=1)
    assert (level.on_hand, level.version) == (6, 2)
    event = (await engine.events())[-1]
    assert (event.type, event.d_on_hand, event.version) == (EventType.COUNTED, 0, 2)


@pytest.mark.parametrize("expected", [0, 1, 3, 99])
async def test_set_count_at_a_stale_version_raises_version_conflict_and_changes_nothing(
    engine: StockEngine, sku, wh, expected: int
):
    await engine.receive(sku, wh, 6)
    await engine.receive(sku, wh, 1)
    before = await snapshot(engine)
    with pytest.raises(VersionConflict) as err:
        await engine.set_count(sku, wh, 0, expected_version=expected)
    assert (err.value.sku, err.value.warehouse) == (sku, wh)
    assert (err.value.expected, err.value.actual) == (expected, 2)
    assert await snapshot(engine) == before


async def test_set_count_on_a_new_record_at_a_version_other_than_0_conflicts(
    engine: StockEngine, sku, wh
):
    with pytest.raises(VersionConflict) as err:
        await engine.set_count(sku, wh, 5, expected_version=1)
    assert (err.value.expected, err.value.actual) == (1, 0)
    assert await engine.events() == []


async def test_set_count_may_count_less_than_is_promised(engine: StockEngine, sku, wh):
    await engine.receive(sku, wh, 5)
    await engine.reserve(order(new_id("r"), line(sku, 3, wh)))
    level = await engine.set_count(sku, wh, 1, expected_version=2)
    assert (level.on_hand, level.held, level.available) == (1, 3, -2)


async def test_transfer_moves_available_units_between_warehouses(engine: StockEngine, sku, wh):
    dest = new_id("wh")
    await engine.receive(sku, wh, 10)
    await engine.receive(sku, dest, 1)
    src_level, dest_level = await engine.transfer(sku, wh, dest, 4, reference="T-1", actor="ops")
    assert src_level == StockLevel(sku, wh, on_hand=6, version=2)
    assert dest_level == StockLevel(sku, dest, on_hand=5, version=2)
    assert await engine.stock_level(sku, wh) == src_level
    assert await engine.stock_level(sku, dest) == dest_level


async def test_transfer_appends_exactly_one_event_per_side(engine: StockEngine, sku, wh):
    dest = new_id("wh")
    await engine.receive(sku, wh, 10)
    count = len(await engine.events())
    await engine.transfer(sku, wh, dest, 3, reference="T-9", actor="ops")
    events = (await engine.events())[count:]
    by_type = {e.type: e for e in events}
    assert sorted(by_type) == sorted([EventType.TRANSFER_OUT, EventType.TRANSFER_IN])
    assert len(events) == 2
    out, into = by_type[EventType.TRANSFER_OUT], by_type[EventType.TRANSFER_IN]
    assert (out.warehouse, out.d_on_hand, out.on_hand, out.reference) == (wh, -3, 7, "T-9")
    assert (into.warehouse, into.d_on_hand, into.on_hand, into.reference) == (dest, 3, 3, "T-9")


async def test_transfer_moves_only_available_units(engine: StockEngine, sku, wh):
    dest = new_id("wh")
    await engine.receive(sku, wh, 10)
    await engine.set_safety_stock(sku, wh, 2)
    await engine.reserve(order(new_id("r"), line(sku, 3, wh)))
    before = await snapshot(engine)
    with pytest.raises(InsufficientStock) as err:
        await engine.transfer(sku, wh, dest, 6)
    assert err.value.shortfalls == (Shortfall(sku, 6, 5),)
    assert await snapshot(engine) == before
    src_level, dest_level = await engine.transfer(sku, wh, dest, 5)
    assert (src_level.on_hand, src_level.available, dest_level.on_hand) == (5, 0, 5)


async def test_transfer_from_an_untouched_record_is_short_by_everything(
    engine: StockEngine, sku, wh
):
    with pytest.raises(InsufficientStock) as err:
        await engine.transfer(sku, wh, new_id("wh"), 1)
    assert err.value.shortfalls == (Shortfall(sku, 1, 0),)
    assert await engine.events() == []


async def test_transfer_to_the_same_warehouse_is_invalid_input(engine: StockEngine, sku, wh):
    await engine.receive(sku, wh, 10)
    before = await snapshot(engine)
    with pytest.raises(InvalidInput):
        await engine.transfer(sku, wh, wh, 1)
    assert await snapshot(engine) == before


async def test_safety_stock_reduces_available_but_not_on_hand(engine: StockEngine, sku, wh):
    await engine.receive(sku, wh, 10)
    level = await engine.set_safety_stock(sku, wh, 4, actor="planner")
    assert (level.on_hand, level.safety_stock, level.available, level.version) == (10, 4, 6, 2)
    assert (await engine.availability(sku)).available == 6
    event = (await engine.events())[-1]
    assert (event.type, event.safety_stock, event.d_on_hand) == (EventType.SAFETY_STOCK_SET, 4, 0)
    assert (await engine.set_safety_stock(sku, wh, 0)).available == 10


async def test_safety_stock_units_cannot_be_reserved(engine: StockEngine, sku, wh):
    await engine.receive(sku, wh, 5)
    await engine.set_safety_stock(sku, wh, 3)
    with pytest.raises(InsufficientStock) as err:
        await engine.reserve(order(new_id("r"), line(sku, 3, wh)))
    assert err.value.shortfalls == (Shortfall(sku, 3, 2),)
    res = await engine.reserve(order(new_id("r"), line(sku, 2, wh)))
    assert [(a.warehouse, a.qty) for a in res.allocations] == [(wh, 2)]


async def test_safety_stock_may_be_set_on_a_record_that_was_never_received(
    engine: StockEngine, sku, wh
):
    level = await engine.set_safety_stock(sku, wh, 2)
    assert level == StockLevel(sku, wh, safety_stock=2, version=1, low=True)


async def test_set_policy_returns_the_policy_and_availability_reports_it(
    engine: StockEngine, sku, wh
):
    policy = SkuPolicy(
        backorder_limit=5, reorder_point=2, reorder_qty=20, lead_time_days=3, max_line_qty=10
    )
    assert await engine.set_policy(sku, policy, actor="buyer") == policy
    await engine.receive(sku, wh, 1)
    availability = await engine.availability(sku)
    assert availability.policy == policy
    assert availability.backorder_remaining() == 5
    [policy_event] = [e for e in await engine.events() if e.type is EventType.POLICY_SET]
    assert (policy_event.event_id, policy_event.version) == (f"p:{sku}:1", 1)


async def test_set_policy_replaces_the_whole_previous_policy(engine: StockEngine, sku):
    await engine.set_policy(sku, SkuPolicy(backorder_limit=5, reorder_point=3))
    await engine.set_policy(sku, SkuPolicy(max_line_qty=7))
    assert (await engine.availability(sku)).policy == SkuPolicy(max_line_qty=7)
    versions = [e.version for e in await engine.events() if e.type is EventType.POLICY_SET]
    assert versions == [1, 2]


async def test_set_policy_rejects_something_that_is_not_a_policy(engine: StockEngine, sku):
    with pytest.raises(InvalidInput):
        await engine.set_policy(sku, {"backorder_limit": 5})  # type: ignore[arg-type]
    assert await engine.events() == []


async def test_availability_lists_every_warehouse_of_the_sku_with_totals(
    engine: StockEngine, clock: ManualClock, sku
):
    w1, w2 = sorted([new_id("wh"), new_id("wh")])
    await engine.receive(sku, w2, 4)
    await engine.receive(sku, w1, 6)
    await engine.reserve(order(new_id("r"), line(sku, 2, w1)))
    availability = await engine.availability(sku)
    assert [lvl.warehouse for lvl in availability.levels] == [w1, w2]
    assert (availability.on_hand, availability.held, availability.available) == (10, 2, 8)
    assert (availability.beyond, availability.at_ms) == (0, clock.now_ms)


async def test_every_change_shows_in_the_next_availability_read_however_often_it_was_read(
    engine: StockEngine, sku, wh
):
    # The Redis engine reuses what it decoded for a SKU whose reply is unchanged; each
    # step changes one thing a product page shows, after the SKU was read repeatedly.
    other = new_id("wh")
    steps: list[Callable[[], Awaitable[object]]] = [
        lambda: engine.receive(sku, wh, 5),
        lambda: engine.reserve(order(new_id("r"), line(sku, 2, wh))),
        lambda: engine.set_safety_stock(sku, wh, 1),
        lambda: engine.set_policy(sku, SkuPolicy(backorder_limit=3)),
        lambda: engine.receive(sku, other, 4),  # a warehouse new to the SKU
        lambda: engine.adjust(sku, other, -1, reason="damaged"),
        lambda: engine.transfer(sku, other, wh, 3),
        lambda: engine.set_policy(sku, SkuPolicy()),
    ]
    policy = SkuPolicy()
    for n, step in enumerate(steps):
        before = await engine.availability(sku)
        assert await engine.availability(sku) == before
        result = await step()
        policy = result if isinstance(result, SkuPolicy) else policy
        after = await engine.availability(sku)
        assert after != before
        warehouses = sorted([wh, other]) if n >= 4 else [wh]
        assert after.levels == tuple([await engine.stock_level(sku, w) for w in warehouses])
        assert after.policy == policy
    assert {lvl.warehouse: lvl.on_hand for lvl in after.levels} == {wh: 8, other: 0}


async def test_availability_of_an_unknown_sku_is_empty(engine: StockEngine, sku):
    availability = await engine.availability(sku)
    assert (availability.levels, availability.policy, availability.beyond) == ((), SkuPolicy(), 0)


async def test_no_counter_may_pass_the_stock_limit(engine: StockEngine, sku, wh):
    dest = new_id("wh")
    await engine.set_count(sku, wh, MAX_STOCK - 1, expected_version=0)
    await engine.receive(sku, dest, 5)
    before = await snapshot(engine)
    for change in (
        lambda: engine.receive(sku, wh, 2),
        lambda: engine.adjust(sku, wh, 2, reason="found"),
        lambda: engine.transfer(sku, dest, wh, 2),
    ):
        with pytest.raises(StockLimitExceeded) as err:
            await change()
        assert (err.value.sku, err.value.warehouse) == (sku, wh)
    assert await snapshot(engine) == before
    assert (await engine.receive(sku, wh, 1)).on_hand == MAX_STOCK
