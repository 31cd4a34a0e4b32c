"""Stream entries → ledger rows and projection updates. Pure functions, no I/O.

A :class:`Batch` is what one Postgres transaction applies: the movement rows (one per
event, inserted idempotently), the newest level of every record touched (projections
are guarded by version, so an older or replayed event never moves one backwards), the
reservations created, their status moves (guarded by rank: statuses only move
forward), extensions, policies and, per partition, the last stream id consumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from onhand.domain import STATUS_RANK, Reservation, ReservationStatus
from onhand.events import Event, EventType

__all__ = [
    "MOVEMENT_COLUMNS",
    "Batch",
    "add_reservation",
    "build_batch",
    "parse_stream_id",
]

MOVEMENT_COLUMNS = (
    "event_id",
    "partition",
    "stream_ms",
    "stream_seq",
    "type",
    "at_ms",
    "sku",
    "warehouse",
    "d_on_hand",
    "d_held",
    "d_committed",
    "on_hand",
    "held",
    "committed",
    "safety_stock",
    "version",
    "low",
    "beyond",
    "reservation_id",
    "line",
    "deadline_ms",
    "max_deadline_ms",
    "fingerprint",
    "owner",
    "reason",
    "reference",
    "actor",
    "policy",
)

_RESOLUTIONS = {
    EventType.CONFIRMED: ReservationStatus.CONFIRMED,
    EventType.RELEASED: ReservationStatus.RELEASED,
    EventType.EXPIRED: ReservationStatus.EXPIRED,
    EventType.FULFILLED: ReservationStatus.FULFILLED,
    EventType.CANCELLED: ReservationStatus.CANCELLED,
}
_NO_LEVELS = {EventType.POLICY_SET, EventType.EXTENDED}
_NOT_RECORD_CHANGES = {EventType.POLICY_SET, EventType.EXTENDED, EventType.LOW_STOCK}


def parse_stream_id(stream_id: str) -> tuple[int, int]:
    """``'1700000000000-3'`` → ``(1700000000000, 3)``."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _opt(value: str) -> str | None:
    return value or None


@dataclass
class Batch:
    movements: list[tuple[object, ...]] = field(default_factory=list)
    levels: dict[tuple[str, str], Event] = field(default_factory=dict)
    created: dict[str, Event] = field(default_factory=dict)
    allocations: dict[tuple[str, int, str], tuple[str, int]] = field(default_factory=dict)
    statuses: dict[str, tuple[ReservationStatus, int]] = field(default_factory=dict)
    extensions: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    policies: dict[str, Event] = field(default_factory=dict)
    watermarks: dict[int, tuple[int, int]] = field(default_factory=dict)
    positions: dict[int, tuple[int, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.movements)


def add_reservation(
    batch: Batch, reservation: Reservation, fingerprint: str, max_deadline_ms: int
) -> None:
    """Make ``batch`` create ``reservation`` (with its allocations) if the ledger lacks it.

    For the confirm barrier: the reservation's own ``reserved`` events may not have been
    drained yet, but a durable confirm needs the reservation it confirms.
    """
    rid = reservation.reservation_id
    batch.created.setdefault(
        rid,
        Event(
            event_id="",
            type=EventType.RESERVED,
            at_ms=reservation.created_ms,
            reservation_id=rid,
            owner=reservation.owner,
            fingerprint=fingerprint,
            deadline_ms=reservation.deadline_ms,
            max_deadline_ms=max_deadline_ms,
        ),
    )
    for a in reservation.allocations:
        batch.allocations.setdefault((rid, a.line, a.warehouse), (a.sku, a.qty))


def build_batch(entries: list[tuple[int, str, Event]], *, advance_watermarks: bool = True) -> Batch:
    """Fold ``(partition, stream_id, event)`` entries into one :class:`Batch`."""
    batch = Batch()
    for partition, stream_id, e in entries:
        ms, seq = parse_stream_id(stream_id)
        levels = e.type not in _NO_LEVELS
        batch.movements.append(
            (
                e.event_id,
                partition,
                ms,
                seq,
                e.type.value,
                e.at_ms,
                e.sku,
                _opt(e.warehouse),
                e.d_on_hand,
                e.d_held,
                e.d_committed,
                e.on_hand if levels else None,
                e.held if levels else None,
                e.committed if levels else None,
                e.safety_stock if levels else None,
                e.version,
                bool(e.low) if levels else None,
                e.beyond if levels else None,
                _opt(e.reservation_id),
                e.line if e.line >= 0 else None,
                e.deadline_ms or None,
                e.max_deadline_ms or None,
                _opt(e.fingerprint),
                _opt(e.owner),
                _opt(e.reason),
                _opt(e.reference),
                _opt(e.actor),
                _opt(e.policy),
            )
        )
        batch.positions[partition] = max(batch.positions.get(partition, (0, 0)), (ms, seq))
        if advance_watermarks:
            batch.watermarks[partition] = batch.positions[partition]
        if e.type not in _NOT_RECORD_CHANGES:
            key = (e.sku, e.warehouse)
            current = batch.levels.get(key)
            if current is None or current.version < e.version:
                batch.levels[key] = e
        if e.type is EventType.RESERVED:
            batch.created.setdefault(e.reservation_id, e)
            batch.allocations[(e.reservation_id, e.line, e.warehouse)] = (e.sku, e.d_held)
        elif e.type in _RESOLUTIONS:
            status = _RESOLUTIONS[e.type]
            current_status = batch.statuses.get(e.reservation_id)
            if current_status is None or STATUS_RANK[current_status[0]] < STATUS_RANK[status]:
                batch.statuses[e.reservation_id] = (status, e.at_ms)
        elif e.type is EventType.EXTENDED:
            ext = batch.extensions.get(e.reservation_id)
            if ext is None or ext[0] < e.version:
                batch.extensions[e.reservation_id] = (e.version, e.deadline_ms, e.at_ms)
        elif e.type is EventType.POLICY_SET:
            current = batch.policies.get(e.sku)
            if current is None or current.version < e.version:
                batch.policies[e.sku] = e
    return batch
