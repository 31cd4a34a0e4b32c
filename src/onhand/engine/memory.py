"""The in-memory engine: the executable specification of the stock contract.

Every operation first decides, from the current :class:`~onhand.state.State`, which
events it emits (or which error it raises, before emitting anything), then applies
those events. The Lua scripts must behave exactly like this; the contract suite and
the stateful test hold them to it. Operations never await, so each one is atomic on
the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from onhand.domain import (
    ADJUST_REASONS,
    MAX_QTY,
    MAX_STOCK,
    MAX_TTL_MS,
    Reservation,
    ReservationStatus,
    ReserveRequest,
    SkuAvailability,
    SkuPolicy,
    StockLevel,
    check_id,
    check_int,
    check_text,
)
from onhand.engine.base import DEFAULT_MAX_HOLD_LIFETIME_MS, LAZY_EXPIRY_LIMIT, StockEngine
from onhand.engine.planning import plan_line
from onhand.errors import (
    IdempotencyConflict,
    InsufficientStock,
    InvalidInput,
    InvalidTransition,
    LineLimitExceeded,
    NotEnoughOnHand,
    ReservationNotFound,
    Shortfall,
    StockLimitExceeded,
    VersionConflict,
)
from onhand.events import Event, EventType
from onhand.keys import Keys
from onhand.state import RecordState, ReservationState, State, policy_to_text

__all__ = ["MemoryEngine"]

_P = ReservationStatus


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryEngine(StockEngine):
    """Pure-Python engine over a :class:`State`; ``clock`` returns milliseconds."""

    def __init__(
        self,
        *,
        clock: Callable[[], int] = _wall_clock_ms,
        max_hold_lifetime_ms: int = DEFAULT_MAX_HOLD_LIFETIME_MS,
        keys: Keys | None = None,
    ) -> None:
        """``keys``: order simultaneous expiries exactly as a Redis engine with this key
        layout does (partition by partition, ties by key name), so the two emit
        identical events; without it, expiries run in (deadline, id) order in one pass.
        """
        self._clock = clock
        self._keys = keys
        self._max_lifetime_ms = max_hold_lifetime_ms
        self._state = State()
        self._log: list[Event] = []

    # -- emitting ------------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        self._state.apply(event)
        self._log.append(event)

    def _change(
        self,
        etype: EventType,
        sku: str,
        warehouse: str,
        now: int,
        *,
        d_on_hand: int = 0,
        d_held: int = 0,
        d_committed: int = 0,
        safety_stock: int | None = None,
        **extra: Any,
    ) -> RecordState:
        """Apply one record change: the record event, plus ``low_stock`` on the edge."""
        st = self._state
        old = st.record(sku, warehouse)
        sku_state = st.sku(sku)
        new = RecordState(
            on_hand=old.on_hand + d_on_hand,
            held=old.held + d_held,
            committed=old.committed + d_committed,
            safety_stock=old.safety_stock if safety_stock is None else safety_stock,
            version=old.version + 1,
        )
        low = new.available < sku_state.policy.reorder_point
        new = replace(new, low=low)
        beyond = sku_state.beyond + new.exposure - old.exposure
        self._emit(
            Event(
                event_id=f"s:{sku}:{warehouse}:{new.version}",
                type=etype,
                at_ms=now,
                sku=sku,
                warehouse=warehouse,
                d_on_hand=d_on_hand,
                d_held=d_held,
                d_committed=d_committed,
                on_hand=new.on_hand,
                held=new.held,
                committed=new.committed,
                safety_stock=new.safety_stock,
                version=new.version,
                low=int(low),
                beyond=beyond,
                **extra,
            )
        )
        if low and not old.low:
            self._emit(
                Event(
                    event_id=f"l:{sku}:{warehouse}:{new.version}",
                    type=EventType.LOW_STOCK,
                    at_ms=now,
                    sku=sku,
                    warehouse=warehouse,
                    on_hand=new.on_hand,
                    held=new.held,
                    committed=new.committed,
                    safety_stock=new.safety_stock,
                    version=new.version,
                    low=1,
                    beyond=beyond,
                )
            )
        return new

    def _check_exposure(
        self,
        sku: str,
        warehouse: str,
        now: int,
        *,
        on_hand: int | None = None,
        safety_stock: int | None = None,
    ) -> None:
        """Refuse a change that would push the SKU's exposure past ``MAX_STOCK``."""
        old = self._state.record(sku, warehouse)
        new = replace(
            old,
            on_hand=old.on_hand if on_hand is None else on_hand,
            safety_stock=old.safety_stock if safety_stock is None else safety_stock,
        )
        beyond = self._state.sku(sku).beyond - old.exposure + new.exposure
        if beyond > MAX_STOCK:
            raise StockLimitExceeded(sku, warehouse, at_ms=now)

    def _level(self, sku: str, warehouse: str) -> StockLevel:
        r = self._state.record(sku, warehouse)
        return StockLevel(
            sku, warehouse, r.on_hand, r.held, r.committed, r.safety_stock, r.version, r.low
        )

    # -- stock operations ----------------------------------------------------------------
    async def receive(
        self, sku: str, warehouse: str, qty: int, *, reference: str = "", actor: str = ""
    ) -> StockLevel:
        check_id("sku", sku), check_id("warehouse", warehouse)
        check_int("qty", qty, 1, MAX_QTY), check_text("reference", reference)
        check_text("actor", actor)
        now = self._clock()
        if self._state.record(sku, warehouse).on_hand + qty > MAX_STOCK:
            raise StockLimitExceeded(sku, warehouse, at_ms=now)
        self._change(
            EventType.RECEIVED, sku, warehouse, now, d_on_hand=qty, reference=reference, actor=actor
        )
        return self._level(sku, warehouse)

    async def adjust(
        self,
        sku: str,
        warehouse: str,
        delta: int,
        *,
        reason: str,
        reference: str = "",
        actor: str = "",
    ) -> StockLevel:
        check_id("sku", sku), check_id("warehouse", warehouse)
        check_int("delta", delta, -MAX_QTY, MAX_QTY)
        check_text("reference", reference), check_text("actor", actor)
        if reason not in ADJUST_REASONS:
            raise InvalidInput("reason", f"must be one of {sorted(ADJUST_REASONS)}")
        sign = ADJUST_REASONS[reason]
        if delta == 0 or delta * sign < 0:
            raise InvalidInput("delta", f"must be non-zero and fit the reason {reason!r}")
        now = self._clock()
        on_hand = self._state.record(sku, warehouse).on_hand + delta
        if on_hand < 0:
            raise InvalidInput("delta", "would take on_hand below zero", at_ms=now)
        if on_hand > MAX_STOCK:
            raise StockLimitExceeded(sku, warehouse, at_ms=now)
        self._check_exposure(sku, warehouse, now, on_hand=on_hand)
        self._change(
            EventType.ADJUSTED,
            sku,
            warehouse,
            now,
            d_on_hand=delta,
            reason=reason,
            reference=reference,
            actor=actor,
        )
        return self._level(sku, warehouse)

    async def set_count(
        self,
        sku: str,
        warehouse: str,
        count: int,
        *,
        expected_version: int,
        reference: str = "",
        actor: str = "",
    ) -> StockLevel:
        check_id("sku", sku), check_id("warehouse", warehouse)
        check_int("count", count, 0, MAX_STOCK)
        check_int("expected_version", expected_version, 0, MAX_STOCK)
        check_text("reference", reference), check_text("actor", actor)
        now = self._clock()
        rec = self._state.record(sku, warehouse)
        if rec.version != expected_version:
            raise VersionConflict(sku, warehouse, expected_version, rec.version, at_ms=now)
        self._check_exposure(sku, warehouse, now, on_hand=count)
        self._change(
            EventType.COUNTED,
            sku,
            warehouse,
            now,
            d_on_hand=count - rec.on_hand,
            reason="stocktake",
            reference=reference,
            actor=actor,
        )
        return self._level(sku, warehouse)

    async def transfer(
        self,
        sku: str,
        source: str,
        destination: str,
        qty: int,
        *,
        reference: str = "",
        actor: str = "",
    ) -> tuple[StockLevel, StockLevel]:
        check_id("sku", sku), check_id("source", source), check_id("destination", destination)
        check_int("qty", qty, 1, MAX_QTY), check_text("reference", reference)
        check_text("actor", actor)
        if source == destination:
            raise InvalidInput("destination", "must differ from source")
        now = self._clock()
        src = self._state.record(sku, source)
        if src.available < qty:
            raise InsufficientStock([Shortfall(sku, qty, max(0, src.available))], at_ms=now)
        if self._state.record(sku, destination).on_hand + qty > MAX_STOCK:
            raise StockLimitExceeded(sku, destination, at_ms=now)
        self._change(
            EventType.TRANSFER_OUT,
            sku,
            source,
            now,
            d_on_hand=-qty,
            reference=reference,
            actor=actor,
        )
        self._change(
            EventType.TRANSFER_IN,
            sku,
            destination,
            now,
            d_on_hand=qty,
            reference=reference,
            actor=actor,
        )
        return self._level(sku, source), self._level(sku, destination)

    async def set_safety_stock(
        self, sku: str, warehouse: str, qty: int, *, actor: str = ""
    ) -> StockLevel:
        check_id("sku", sku), check_id("warehouse", warehouse)
        check_int("qty", qty, 0, MAX_STOCK), check_text("actor", actor)
        now = self._clock()
        self._check_exposure(sku, warehouse, now, safety_stock=qty)
        self._change(EventType.SAFETY_STOCK_SET, sku, warehouse, now, safety_stock=qty, actor=actor)
        return self._level(sku, warehouse)

    async def set_policy(self, sku: str, policy: SkuPolicy, *, actor: str = "") -> SkuPolicy:
        check_id("sku", sku), check_text("actor", actor)
        if not isinstance(policy, SkuPolicy):
            raise InvalidInput("policy", "must be a SkuPolicy")
        now = self._clock()
        version = self._state.sku(sku).policy_version + 1
        self._emit(
            Event(
                event_id=f"p:{sku}:{version}",
                type=EventType.POLICY_SET,
                at_ms=now,
                sku=sku,
                version=version,
                policy=policy_to_text(policy),
                actor=actor,
            )
        )
        return policy

    # -- reservations --------------------------------------------------------------------
    def _view(self, rid: str, now: int, *, replayed: bool = False) -> Reservation:
        r = self._state.reservations[rid]
        return Reservation(
            rid, r.status, r.allocations, r.created_ms, r.deadline_ms, r.owner, replayed, now
        )

    def _get(self, rid: str, now: int) -> ReservationState:
        check_id("reservation_id", rid)
        r = self._state.reservations.get(rid)
        if r is None:
            raise ReservationNotFound(rid, at_ms=now)
        return r

    def _resolve(self, rid: str, etype: EventType, now: int, actor: str = "") -> None:
        r = self._state.reservations[rid]
        for a in r.allocations:
            if etype is EventType.CONFIRMED:
                deltas = {"d_held": -a.qty, "d_committed": a.qty}
            elif etype is EventType.FULFILLED:
                deltas = {"d_on_hand": -a.qty, "d_committed": -a.qty}
            elif etype is EventType.CANCELLED:
                deltas = {"d_committed": -a.qty}
            else:  # released, expired
                deltas = {"d_held": -a.qty}
            self._change(
                etype,
                a.sku,
                a.warehouse,
                now,
                reservation_id=rid,
                line=a.line,
                actor=actor,
                **deltas,
            )

    def _member(self, rid: str) -> str:
        return self._keys.reservation(rid) if self._keys is not None else rid

    def _expire_due_of(self, holds: dict[str, int], now: int, limit: int) -> int:
        due = sorted((d, self._member(rid), rid) for rid, d in holds.items() if d <= now)
        for _, _, rid in due[:limit]:
            self._resolve(rid, EventType.EXPIRED, now)
        return len(due[:limit])

    def _plan(
        self, request: ReserveRequest, now: int
    ) -> tuple[list[list[tuple[str, int]]], list[Shortfall]]:
        plans: list[list[tuple[str, int]]] = []
        short: list[Shortfall] = []
        for line in request.lines:
            sku_state = self._state.sku(line.sku)
            allowance = max(0, sku_state.policy.allowance(now) - sku_state.beyond)
            avail = [self._state.record(line.sku, wh).available for wh in line.warehouses]
            allocations, could = plan_line(line.qty, avail, line.allow_split, allowance)
            if allocations is None:
                short.append(Shortfall(line.sku, line.qty, could))
                plans.append([])
            else:
                plans.append([(line.warehouses[i], q) for i, q in allocations])
        return plans, short

    async def reserve(self, request: ReserveRequest) -> Reservation:
        if not isinstance(request, ReserveRequest):
            raise InvalidInput("request", "must be a ReserveRequest")
        now = self._clock()
        rid, fp = request.reservation_id, request.fingerprint()
        existing = self._state.reservations.get(rid)
        if existing is not None:
            if existing.fingerprint != fp:
                raise IdempotencyConflict(rid, at_ms=now)
            return self._view(rid, now, replayed=True)
        for line in request.lines:
            cap = self._state.sku(line.sku).policy.max_line_qty
            if line.qty > cap:
                raise LineLimitExceeded(line.sku, line.qty, cap, at_ms=now)
        plans, short = self._plan(request, now)
        if short:
            freed = 0
            for s in short:
                freed += self._expire_due_of(
                    self._state.holds.get(s.sku, {}), now, LAZY_EXPIRY_LIMIT
                )
            if freed:
                plans, short = self._plan(request, now)
            if short:
                raise InsufficientStock(short, at_ms=now)
        max_deadline = now + self._max_lifetime_ms
        deadline = min(now + request.ttl_ms, max_deadline)
        for index, (line, plan) in enumerate(zip(request.lines, plans, strict=True)):
            for warehouse, qty in plan:
                self._change(
                    EventType.RESERVED,
                    line.sku,
                    warehouse,
                    now,
                    d_held=qty,
                    reservation_id=rid,
                    line=index,
                    deadline_ms=deadline,
                    max_deadline_ms=max_deadline,
                    fingerprint=fp,
                    owner=request.owner,
                    actor=request.actor,
                )
        return self._view(rid, now)

    def _expire_if_overdue(self, rid: str, r: ReservationState, now: int, action: str) -> None:
        if r.status is _P.PENDING and r.deadline_ms <= now:
            self._resolve(rid, EventType.EXPIRED, now)
            raise InvalidTransition(rid, _P.EXPIRED, action, at_ms=now)

    async def confirm(self, reservation_id: str, *, actor: str = "") -> Reservation:
        check_text("actor", actor)
        now = self._clock()
        r = self._get(reservation_id, now)
        if r.status in (_P.CONFIRMED, _P.FULFILLED):
            return self._view(reservation_id, now, replayed=True)
        self._expire_if_overdue(reservation_id, r, now, "confirm")
        if r.status is not _P.PENDING:
            raise InvalidTransition(reservation_id, r.status, "confirm", at_ms=now)
        self._resolve(reservation_id, EventType.CONFIRMED, now, actor)
        return self._view(reservation_id, now)

    async def release(self, reservation_id: str, *, actor: str = "") -> Reservation:
        check_text("actor", actor)
        now = self._clock()
        r = self._get(reservation_id, now)
        if r.status is _P.RELEASED:
            return self._view(reservation_id, now, replayed=True)
        self._expire_if_overdue(reservation_id, r, now, "release")
        if r.status is not _P.PENDING:
            raise InvalidTransition(reservation_id, r.status, "release", at_ms=now)
        self._resolve(reservation_id, EventType.RELEASED, now, actor)
        return self._view(reservation_id, now)

    async def extend(self, reservation_id: str, ttl_ms: int, *, actor: str = "") -> Reservation:
        check_int("ttl_ms", ttl_ms, 1, MAX_TTL_MS), check_text("actor", actor)
        now = self._clock()
        r = self._get(reservation_id, now)
        self._expire_if_overdue(reservation_id, r, now, "extend")
        if r.status is not _P.PENDING:
            raise InvalidTransition(reservation_id, r.status, "extend", at_ms=now)
        deadline = max(r.deadline_ms, min(now + ttl_ms, r.max_deadline_ms))
        if deadline == r.deadline_ms:
            return self._view(reservation_id, now, replayed=True)
        n = r.extensions + 1
        for a in r.allocations:
            self._emit(
                Event(
                    event_id=f"x:{reservation_id}:{n}:{a.sku}:{a.warehouse}",
                    type=EventType.EXTENDED,
                    at_ms=now,
                    sku=a.sku,
                    warehouse=a.warehouse,
                    reservation_id=reservation_id,
                    line=a.line,
                    deadline_ms=deadline,
                    version=n,
                    actor=actor,
                )
            )
        return self._view(reservation_id, now)

    async def fulfill(self, reservation_id: str, *, actor: str = "") -> Reservation:
        check_text("actor", actor)
        now = self._clock()
        r = self._get(reservation_id, now)
        if r.status is _P.FULFILLED:
            return self._view(reservation_id, now, replayed=True)
        if r.status is not _P.CONFIRMED:
            raise InvalidTransition(reservation_id, r.status, "fulfill", at_ms=now)
        for a in r.allocations:
            if self._state.record(a.sku, a.warehouse).on_hand < a.qty:
                raise NotEnoughOnHand(a.sku, a.warehouse, at_ms=now)
        self._resolve(reservation_id, EventType.FULFILLED, now, actor)
        return self._view(reservation_id, now)

    async def cancel(self, reservation_id: str, *, actor: str = "") -> Reservation:
        check_text("actor", actor)
        now = self._clock()
        r = self._get(reservation_id, now)
        if r.status is _P.CANCELLED:
            return self._view(reservation_id, now, replayed=True)
        if r.status is not _P.CONFIRMED:
            raise InvalidTransition(reservation_id, r.status, "cancel", at_ms=now)
        self._resolve(reservation_id, EventType.CANCELLED, now, actor)
        return self._view(reservation_id, now)

    async def expire_due(self, limit: int = 500) -> int:
        check_int("limit", limit, 1, 10_000)
        now, deadlines = self._clock(), self._state.deadlines
        if self._keys is None:
            return self._expire_due_of(deadlines, now, limit)
        by_partition: dict[int, dict[str, int]] = {}
        for rid, deadline in deadlines.items():
            by_partition.setdefault(self._keys.partition(rid), {})[rid] = deadline
        return sum(self._expire_due_of(by_partition[p], now, limit) for p in sorted(by_partition))

    # -- reads ---------------------------------------------------------------------------
    async def get_reservation(self, reservation_id: str) -> Reservation:
        now = self._clock()
        self._get(reservation_id, now)
        return self._view(reservation_id, now)

    async def stock_level(self, sku: str, warehouse: str) -> StockLevel:
        check_id("sku", sku), check_id("warehouse", warehouse)
        return self._level(sku, warehouse)

    async def availability(self, sku: str) -> SkuAvailability:
        check_id("sku", sku)
        s = self._state.sku(sku)
        levels = tuple(self._level(sku, w) for w in sorted(self._state.warehouses.get(sku, ())))
        return SkuAvailability(sku, levels, s.policy, s.beyond, self._clock())

    async def state(self) -> State:
        return self._state.canonical()

    async def events(self) -> list[Event]:
        return list(self._log)
