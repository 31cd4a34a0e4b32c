"""Beyond-stock exposure: what backorder and pre-order allowances bound."""

from __future__ import annotations

import pytest

from onhand.domain import SkuPolicy
from onhand.engine.base import StockEngine
from onhand.errors import InsufficientStock
from tests.contract.support import line, new_id, order


async def test_safety_stock_above_on_hand_does_not_use_up_the_backorder_allowance(
    engine: StockEngine,
):
    sku, wh = new_id("sku"), new_id("wh")
    await engine.set_policy(sku, SkuPolicy(backorder_limit=5))
    await engine.receive(sku, wh, 2)
    await engine.set_safety_stock(sku, wh, 5)  # nothing is sellable, nothing is promised
    assert (await engine.availability(sku)).beyond == 0
    res = await engine.reserve(order(new_id("r"), line(sku, 5, wh)))
    assert res.allocations[0].qty == 5
    assert (await engine.availability(sku)).beyond == 5
    with pytest.raises(InsufficientStock):
        await engine.reserve(order(new_id("r"), line(sku, 1, wh)))


async def test_a_write_down_below_what_was_promised_shows_up_as_exposure(engine: StockEngine):
    sku, wh = new_id("sku"), new_id("wh")
    await engine.receive(sku, wh, 5)
    rid = new_id("r")
    await engine.reserve(order(rid, line(sku, 4, wh)))
    await engine.confirm(rid)
    await engine.adjust(sku, wh, -3, reason="damaged")
    availability = await engine.availability(sku)
    assert (availability.on_hand, availability.committed, availability.beyond) == (2, 4, 2)
    await engine.receive(sku, wh, 10)
    assert (await engine.availability(sku)).beyond == 0
