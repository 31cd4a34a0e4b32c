"""Small builders and checks shared by the contract tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from onhand.domain import Allocation, Line, ReserveRequest
from onhand.engine.base import StockEngine
from onhand.events import Event
from onhand.state import State

__all__ = ["allocated", "line", "new_id", "order", "replayed_state", "snapshot"]


def new_id(prefix: str) -> str:
    """A random id that no other test uses (ids are allow-listed ``[A-Za-z0-9._-]``)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def line(sku: str, qty: int, *warehouses: str, split: bool = False) -> Line:
    return Line(sku, qty, tuple(warehouses), allow_split=split)


def order(
    reservation_id: str, *lines: Line, ttl_ms: int = 60_000, owner: str = "", actor: str = ""
) -> ReserveRequest:
    return ReserveRequest(reservation_id, tuple(lines), ttl_ms, owner=owner, actor=actor)


def allocated(allocations: Iterable[Allocation]) -> dict[tuple[str, str], int]:
    """``{(sku, warehouse): qty}`` of a reservation's allocations (order-free)."""
    out: dict[tuple[str, str], int] = {}
    for a in allocations:
        out[(a.sku, a.warehouse)] = out.get((a.sku, a.warehouse), 0) + a.qty
    return out


async def snapshot(engine: StockEngine) -> tuple[State, list[Event]]:
    """Everything observable: the state and the event log (to prove nothing changed)."""
    return await engine.state(), await engine.events()


async def replayed_state(engine: StockEngine) -> State:
    """The state rebuilt by folding every event of the engine, from empty."""
    state = State()
    for event in await engine.events():
        state.apply(event)
    return state.canonical()
