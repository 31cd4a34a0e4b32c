"""Bad input at the Python boundary: ``InvalidInput``, and nothing changes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from onhand.domain import MAX_QTY, MAX_STOCK, Line, ReserveRequest, SkuPolicy
from onhand.engine.base import StockEngine
from onhand.errors import InvalidInput
from tests.contract.support import line, new_id, order, snapshot

BAD_QTYS: list[Any] = [0, -1, 1.5, True, "5", 2**53, 10**30, None]
BAD_IDS: list[Any] = [
    "a:b",
    "a{b",
    "a}b",
    "a b",
    "",
    "x" * 65,
    "y" * 10_240,
    "é",
    "a\nb",
    b"abc",
    None,
    5,
]
BAD_TEXTS: list[Any] = ["x" * 129, "tab\there", "naïve", "\x00", None, 7]


def _id(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} chars)"


Op = Callable[[StockEngine, dict[str, str]], Awaitable[object]]


@pytest.fixture
async def world(engine: StockEngine) -> dict[str, str]:
    """A SKU with stock in two warehouses and one pending reservation."""
    names = {"sku": new_id("sku"), "wh": new_id("wh"), "wh2": new_id("wh"), "rid": new_id("r")}
    await engine.receive(names["sku"], names["wh"], 10)
    await engine.receive(names["sku"], names["wh2"], 10)
    await engine.reserve(order(names["rid"], line(names["sku"], 2, names["wh"])))
    return names


async def rejected(engine: StockEngine, op: Op, names: dict[str, str]) -> InvalidInput:
    before = await snapshot(engine)
    with pytest.raises(InvalidInput) as err:
        await op(engine, names)
    assert await snapshot(engine) == before
    return err.value


def qty_ops(bad: Any) -> dict[str, Op]:
    return {
        "receive": lambda e, n: e.receive(n["sku"], n["wh"], bad),
        "transfer": lambda e, n: e.transfer(n["sku"], n["wh"], n["wh2"], bad),
        "extend": lambda e, n: e.extend(n["rid"], bad),
    }


@pytest.mark.parametrize("bad", BAD_QTYS, ids=_id)
@pytest.mark.parametrize("op_name", sorted(qty_ops(0)))
async def test_a_bad_quantity_is_invalid_input_and_changes_nothing(
    engine: StockEngine, world: dict[str, str], op_name: str, bad: Any
):
    await rejected(engine, qty_ops(bad)[op_name], world)


@pytest.mark.parametrize(
    "bad", [0, 1.5, -1.5, True, False, "5", "-1", 2**53, -(2**53), 10**30, -(10**30), None], ids=_id
)
async def test_a_bad_adjustment_delta_is_invalid_input_and_changes_nothing(
    engine: StockEngine, world: dict[str, str], bad: Any
):
    err = await rejected(
        engine, lambda e, n: e.adjust(n["sku"], n["wh"], bad, reason="correction"), world
    )
    assert err.field == "delta"


@pytest.mark.parametrize("bad", [-1, 1.5, True, "5", 2**53, 10**30, None], ids=_id)
@pytest.mark.parametrize("op_name", ["set_count", "expected_version", "set_safety_stock"])
async def test_a_bad_count_or_version_is_invalid_input_and_changes_nothing(
    engine: StockEngine, world: dict[str, str], op_name: str, bad: Any
):
    ops: dict[str, Op] = {
        "set_count": lambda e, n: e.set_count(n["sku"], n["wh"], bad, expected_version=1),
        "expected_version": lambda e, n: e.set_count(n["sku"], n["wh"], 1, expected_version=bad),
        "set_safety_stock": lambda e, n: e.set_safety_stock(n["sku"], n["wh"], bad),
    }
    await rejected(engine, ops[op_name], world)


async def test_the_largest_quantities_are_accepted(engine: StockEngine, world: dict[str, str]):
    sku, wh = world["sku"], world["wh"]
    assert (await engine.receive(sku, wh, MAX_QTY)).on_hand == MAX_QTY + 10
    level = await engine.set_count(sku, wh, MAX_STOCK, expected_version=3)
    assert level.on_hand == MAX_STOCK
    assert (await engine.adjust(sku, wh, -MAX_QTY, reason="lost")).on_hand == MAX_STOCK - MAX_QTY


def id_ops(bad: Any) -> dict[str, Op]:
    return {
        "receive-sku": lambda e, n: e.receive(bad, n["wh"], 1),
        "receive-warehouse": lambda e, n: e.receive(n["sku"], bad, 1),
        "adjust": lambda e, n: e.adjust(bad, n["wh"], 1, reason="found"),
        "set_count": lambda e, n: e.set_count(n["sku"], bad, 1, expected_version=0),
        "transfer-sku": lambda e, n: e.transfer(bad, n["wh"], n["wh2"], 1),
        "transfer-source": lambda e, n: e.transfer(n["sku"], bad, n["wh2"], 1),
        "transfer-destination": lambda e, n: e.transfer(n["sku"], n["wh"], bad, 1),
        "set_safety_stock": lambda e, n: e.set_safety_stock(bad, n["wh"], 1),
        "set_policy": lambda e, n: e.set_policy(bad, SkuPolicy()),
        "confirm": lambda e, n: e.confirm(bad),
        "release": lambda e, n: e.release(bad),
        "extend": lambda e, n: e.extend(bad, 1_000),
        "fulfill": lambda e, n: e.fulfill(bad),
        "cancel": lambda e, n: e.cancel(bad),
        "get_reservation": lambda e, n: e.get_reservation(bad),
        "stock_level": lambda e, n: e.stock_level(n["sku"], bad),
        "availability": lambda e, n: e.availability(bad),
    }


@pytest.mark.parametrize("bad", BAD_IDS, ids=_id)
@pytest.mark.parametrize("op_name", sorted(id_ops("")))
async def test_a_bad_id_is_invalid_input_and_changes_nothing(
    engine: StockEngine, world: dict[str, str], op_name: str, bad: Any
):
    await rejected(engine, id_ops(bad)[op_name], world)


@pytest.mark.parametrize("bad", BAD_IDS, ids=_id)
def test_a_bad_id_cannot_even_be_put_into_a_reservation_request(bad: Any):
    sku, wh = new_id("sku"), new_id("wh")
    with pytest.raises(InvalidInput):
        ReserveRequest(bad, (Line(sku, 1, (wh,)),), 1_000)
    with pytest.raises(InvalidInput):
        Line(bad, 1, (wh,))
    with pytest.raises(InvalidInput):
        Line(sku, 1, (bad,))
    if bad:  # an empty owner means "no owner"
        with pytest.raises(InvalidInput):
            ReserveRequest(new_id("r"), (Line(sku, 1, (wh,)),), 1_000, owner=bad)


@pytest.mark.parametrize("bad", BAD_QTYS, ids=_id)
def test_a_bad_quantity_or_ttl_cannot_be_put_into_a_reservation_request(bad: Any):
    sku, wh = new_id("sku"), new_id("wh")
    with pytest.raises(InvalidInput):
        Line(sku, bad, (wh,))
    with pytest.raises(InvalidInput):
        ReserveRequest(new_id("r"), (Line(sku, 1, (wh,)),), bad)


def test_malformed_lines_cannot_be_put_into_a_reservation_request():
    sku, wh = new_id("sku"), new_id("wh")
    for warehouses in [(), [wh], tuple(new_id("wh") for _ in range(33))]:
        with pytest.raises(InvalidInput):
            Line(sku, 1, warehouses)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        Line(sku, 1, (wh,), allow_split=1)  # type: ignore[arg-type]
    for lines in [(), [Line(sku, 1, (wh,))], tuple(line(new_id("s"), 1, wh) for _ in range(101))]:
        with pytest.raises(InvalidInput):
            ReserveRequest(new_id("r"), lines, 1_000)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        ReserveRequest(new_id("r"), (Line(sku, 1, (wh,)),), 86_400_001)


def text_ops(bad: Any) -> dict[str, Op]:
    return {
        "receive-reference": lambda e, n: e.receive(n["sku"], n["wh"], 1, reference=bad),
        "receive-actor": lambda e, n: e.receive(n["sku"], n["wh"], 1, actor=bad),
        "adjust-reference": lambda e, n: e.adjust(
            n["sku"], n["wh"], 1, reason="found", reference=bad
        ),
        "set_count-actor": lambda e, n: e.set_count(
            n["sku"], n["wh"], 1, expected_version=1, actor=bad
        ),
        "transfer-reference": lambda e, n: e.transfer(
            n["sku"], n["wh"], n["wh2"], 1, reference=bad
        ),
        "set_safety_stock-actor": lambda e, n: e.set_safety_stock(n["sku"], n["wh"], 1, actor=bad),
        "set_policy-actor": lambda e, n: e.set_policy(n["sku"], SkuPolicy(), actor=bad),
        "confirm-actor": lambda e, n: e.confirm(n["rid"], actor=bad),
        "release-actor": lambda e, n: e.release(n["rid"], actor=bad),
        "extend-actor": lambda e, n: e.extend(n["rid"], 1_000_000, actor=bad),
    }


@pytest.mark.parametrize("bad", BAD_TEXTS, ids=_id)
@pytest.mark.parametrize("op_name", sorted(text_ops("")))
async def test_a_bad_reference_or_actor_is_invalid_input_and_changes_nothing(
    engine: StockEngine, world: dict[str, str], op_name: str, bad: Any
):
    await rejected(engine, text_ops(bad)[op_name], world)


@pytest.mark.parametrize("bad", [0, -1, 10_001, 1.5, True, "5", None], ids=_id)
async def test_a_bad_reaper_limit_is_invalid_input(
    engine: StockEngine, world: dict[str, str], bad: Any
):
    await rejected(engine, lambda e, n: e.expire_due(bad), world)


async def test_a_reservation_request_that_is_not_one_is_invalid_input(
    engine: StockEngine, world: dict[str, str]
):
    fake = {"reservation_id": new_id("r"), "lines": (), "ttl_ms": 1}
    await rejected(engine, lambda e, n: e.reserve(fake), world)  # type: ignore[arg-type]
