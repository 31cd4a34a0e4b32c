"""The whole engine state as plain values, and how events evolve it.

:class:`State` mirrors exactly what the Redis engine keeps (records, SKU policies and
counters, reservations, the deadline index and the per-SKU hold index). Folding every
event of every partition stream through :meth:`State.apply`, starting from empty,
reproduces the live state: that is the replay promise, and the test that holds the
Redis engine to it compares ``State`` values.

Streams are ordered only within a partition, and a reservation's allocations may sit in
several partitions. Every event of one allocation is in that allocation's stream after
its ``reserved`` event, so ``apply`` only needs to be robust to how partitions
interleave: statuses only move forward, an extension applies once (by its number), and
indexes hold only pending reservations. The in-memory engine keeps its state
here too, so the model and the replay share one definition.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field, fields, replace

from onhand.domain import STATUS_RANK, Allocation, ReservationStatus, SkuPolicy
from onhand.events import Event, EventType

__all__ = [
    "RecordState",
    "ReservationState",
    "SkuState",
    "State",
    "policy_from_text",
    "policy_to_text",
]

_TERMINAL_OR_CONFIRMED = {
    EventType.CONFIRMED: ReservationStatus.CONFIRMED,
    EventType.RELEASED: ReservationStatus.RELEASED,
    EventType.EXPIRED: ReservationStatus.EXPIRED,
    EventType.FULFILLED: ReservationStatus.FULFILLED,
    EventType.CANCELLED: ReservationStatus.CANCELLED,
}
_RECORD_EVENTS = {
    EventType.RECEIVED,
    EventType.ADJUSTED,
    EventType.COUNTED,
    EventType.TRANSFER_OUT,
    EventType.TRANSFER_IN,
    EventType.SAFETY_STOCK_SET,
    EventType.RESERVED,
    EventType.RECONCILED,
    *_TERMINAL_OR_CONFIRMED,
}


def policy_to_text(policy: SkuPolicy) -> str:
    """``SkuPolicy`` field values joined by ``,`` in declaration order."""
    return ",".join(str(v) for v in astuple(policy))


def policy_from_text(text: str) -> SkuPolicy:
    values = [int(v) for v in text.split(",")]
    return SkuPolicy(**dict(zip([f.name for f in fields(SkuPolicy)], values, strict=True)))


@dataclass(frozen=True, slots=True)
class RecordState:
    on_hand: int = 0
    held: int = 0
    committed: int = 0
    safety_stock: int = 0
    version: int = 0
    low: bool = False

    @property
    def available(self) -> int:
        return self.on_hand - self.held - self.committed - self.safety_stock

    @property
    def exposure(self) -> int:
        """Units promised beyond sellable stock (``on_hand - safety_stock``, at least 0)."""
        return max(0, self.held + self.committed - max(0, self.on_hand - self.safety_stock))


@dataclass(frozen=True, slots=True)
class SkuState:
    policy: SkuPolicy = field(default_factory=SkuPolicy)
    policy_version: int = 0
    beyond: int = 0
    """Units promised beyond sellable stock: the sum of the records' ``exposure``."""


@dataclass(frozen=True, slots=True)
class ReservationState:
    status: ReservationStatus
    fingerprint: str
    owner: str
    created_ms: int
    deadline_ms: int
    max_deadline_ms: int
    allocations: tuple[Allocation, ...]
    extensions: int = 0
    updated_ms: int = 0


@dataclass
class State:
    """Everything the engine knows, keyed by plain ids (no partitions, no key names)."""

    records: dict[tuple[str, str], RecordState] = field(default_factory=dict)
    skus: dict[str, SkuState] = field(default_factory=dict)
    warehouses: dict[str, set[str]] = field(default_factory=dict)
    reservations: dict[str, ReservationState] = field(default_factory=dict)
    deadlines: dict[str, int] = field(default_factory=dict)
    holds: dict[str, dict[str, int]] = field(default_factory=dict)

    def record(self, sku: str, warehouse: str) -> RecordState:
        return self.records.get((sku, warehouse), RecordState())

    def sku(self, sku: str) -> SkuState:
        return self.skus.get(sku, SkuState())

    def apply(self, event: Event) -> None:
        """Evolve the state by one event. Applying the same event twice is harmless."""
        etype = event.type
        if etype in _RECORD_EVENTS:
            self._apply_record(event)
        if etype is EventType.RESERVED:
            self._apply_reserved(event)
        elif etype in _TERMINAL_OR_CONFIRMED:
            self._resolve(event.reservation_id, _TERMINAL_OR_CONFIRMED[etype], event.at_ms)
        elif etype is EventType.EXTENDED:
            self._apply_extended(event)
        elif etype is EventType.POLICY_SET:
            sku = self.sku(event.sku)
            self.skus[event.sku] = replace(
                sku, policy=policy_from_text(event.policy), policy_version=event.version
            )

    def _apply_record(self, event: Event) -> None:
        self.records[(event.sku, event.warehouse)] = RecordState(
            on_hand=event.on_hand,
            held=event.held,
            committed=event.committed,
            safety_stock=event.safety_stock,
            version=event.version,
            low=bool(event.low),
        )
        self.warehouses.setdefault(event.sku, set()).add(event.warehouse)
        self.skus[event.sku] = replace(self.sku(event.sku), beyond=event.beyond)

    def _apply_reserved(self, event: Event) -> None:
        rid = event.reservation_id
        alloc = Allocation(event.line, event.sku, event.warehouse, event.d_held)
        current = self.reservations.get(rid)
        if current is None:
            current = ReservationState(
                status=ReservationStatus.PENDING,
                fingerprint=event.fingerprint,
                owner=event.owner,
                created_ms=event.at_ms,
                deadline_ms=event.deadline_ms,
                max_deadline_ms=event.max_deadline_ms,
                allocations=(),
                updated_ms=event.at_ms,
            )
        if alloc not in current.allocations:
            allocs = tuple(sorted((*current.allocations, alloc), key=_alloc_order))
            current = replace(current, allocations=allocs)
        self.reservations[rid] = current
        if current.status is ReservationStatus.PENDING:
            self.deadlines[rid] = current.deadline_ms
            self.holds.setdefault(event.sku, {})[rid] = current.deadline_ms

    def _apply_extended(self, event: Event) -> None:
        rid = event.reservation_id
        current = self.reservations[rid]
        if event.version <= current.extensions:
            return  # the same extension, seen through another allocation's stream
        current = replace(
            current, deadline_ms=event.deadline_ms, extensions=event.version, updated_ms=event.at_ms
        )
        self.reservations[rid] = current
        if current.status is ReservationStatus.PENDING:
            self.deadlines[rid] = current.deadline_ms
            for alloc in current.allocations:
                self.holds.setdefault(alloc.sku, {})[rid] = current.deadline_ms

    def _resolve(self, rid: str, status: ReservationStatus, at_ms: int) -> None:
        current = self.reservations[rid]
        if STATUS_RANK[status] > STATUS_RANK[current.status]:  # statuses only move forward
            self.reservations[rid] = replace(current, status=status, updated_ms=at_ms)
        self.deadlines.pop(rid, None)
        for alloc in current.allocations:
            by_sku = self.holds.get(alloc.sku)
            if by_sku is not None:
                by_sku.pop(rid, None)
                if not by_sku:
                    del self.holds[alloc.sku]

    def canonical(self) -> State:
        """A copy without empty containers, for comparing two states."""
        return State(
            records=dict(self.records),
            skus={k: v for k, v in self.skus.items() if v != SkuState()},
            warehouses={k: set(v) for k, v in self.warehouses.items() if v},
            reservations=dict(self.reservations),
            deadlines=dict(self.deadlines),
            holds={k: dict(v) for k, v in self.holds.items() if v},
        )


def _alloc_order(alloc: Allocation) -> tuple[int, str]:
    return (alloc.line, alloc.warehouse)
