"""Stream entries → ledger rows and projection updates. Pure functions, no I/O.

A :class:`Batch` is what one Postgres transaction applies: the movement rows (one per
event, inserted idempotently), the newest level of every record touched (projections
are guarded by version, so an older or replayed event never moves one backwards), the
reservations created, their status moves (guarded by rank: statuses only move
forward), extensions, policies and, per partition, the last stream id consumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from onhand.domain import STATUS_RANK, Reservation, ReservationStatus
from onhand.events import FIELDS, Event, EventType

__all__ = [
    "MOVEMENT_COLUMNS",
    "STAGE_COLUMNS",
    "Batch",
    "Staged",
    "add_reservation",
    "build_batch",
    "pairs",
    "parse_stream_id",
    "stage_entries",
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


# -- the writer's fast path: stream entries straight to COPY text -----------------------
STAGE_COLUMNS = ("partition", "stream_ms", "stream_seq", *FIELDS)
"""The writer's staging table: the stream position, then every stream field (attribute
names, :data:`onhand.events.FIELDS` order) as it is on the stream: ``NULL`` when absent.
Postgres derives the movement rows and every projection from it (``LedgerStore``)."""

_STAGE_KEYS = tuple(name.encode() for name in FIELDS.values())
_TABS = len(_STAGE_KEYS) - 1
# policy_set events take the general path: their policy is parsed by Python there
_STAGED_TYPES = frozenset(t.value.encode() for t in EventType if t is not EventType.POLICY_SET)
_MAX_SHAPES = 256  # the scripts write a few dozen field lists; more is not worth caching


@dataclass(frozen=True, slots=True)
class Staged:
    """Entries as one ``COPY … (FORMAT text, NULL '')`` payload for the staging table."""

    payload: bytes
    count: int
    types: frozenset[bytes]


def _copy_escape(value: bytes) -> bytes:
    return (
        value.replace(b"\\", b"\\\\")
        .replace(b"\t", b"\\t")
        .replace(b"\n", b"\\n")
        .replace(b"\r", b"\\r")
    )


_Shape = tuple[Callable[[list[Any]], tuple[Any, ...]], int] | None
_shapes: dict[tuple[Any, ...], _Shape] = {}


def _shape(names: tuple[Any, ...]) -> _Shape:
    """For an entry whose field names are ``names`` (in reply order): a getter of its
    values in :data:`STAGE_COLUMNS` order from the flat reply with one ``b""`` appended
    (an absent field reads that), and the index of its type's value; ``None`` when such
    an entry cannot take the fast path (no ``id``, ``ts`` or ``t``). A name given twice:
    the later value, as a dict of the reply would have it."""
    shape = _shapes.get(names)
    if shape is not None or names in _shapes:
        return shape
    position = {name: 2 * i + 1 for i, name in enumerate(names)}
    if b"id" in position and b"ts" in position and b"t" in position:
        absent = 2 * len(names)
        getter = itemgetter(*(position.get(key, absent) for key in _STAGE_KEYS))
        shape = (getter, position[b"t"])
    if len(_shapes) < _MAX_SHAPES:
        _shapes[names] = shape
    return shape


def stage_entries(entries: Iterable[tuple[int, str, list[Any] | None]]) -> Staged | None:
    """``(partition, stream_id, flat)`` entries — ``flat`` the stream entry's
    ``[field, value, …]`` reply, ``None`` if it was trimmed — as COPY text rows, or
    ``None`` when any entry needs the general path (:meth:`Event.from_fields` of
    :func:`pairs` + :func:`build_batch`).

    No value is decoded or converted here: Postgres parses the integers and checks the
    UTF-8 while copying, so anything it refuses fails the whole batch, which the writer
    then applies through the general path (where a bad entry is isolated). What is
    accepted here is exactly what the general path accepts, row for row, except for
    entries handed to the general path up front: a missing ``id``/``ts``/``t``, a type
    that is not an event type (or ``policy_set``), an empty name or value (the general
    path tells an empty field from an absent one; ``NULL ''`` does not), an odd-length
    reply, names or values that are not bytes.
    """
    lines: list[bytes] = []
    append = lines.append
    types: set[bytes] = set()
    add_type = types.add
    try:
        for partition, stream_id, flat in entries:
            if not flat or len(flat) % 2 or b"" in flat:
                return None
            shape = _shape(tuple(flat[0::2]))
            if shape is None:
                return None
            getter, type_at = shape
            kind = flat[type_at]
            if kind not in _STAGED_TYPES:
                return None
            add_type(kind)
            flat.append(b"")  # what an absent field reads (see _shape)
            values = getter(flat)
            flat.pop()
            row = b"\t".join(values)
            if b"\\" in row or b"\n" in row or b"\r" in row or row.count(b"\t") != _TABS:
                row = b"\t".join(map(_copy_escape, values))
            append(b"%d\t%s\t%s\n" % (partition, stream_id.replace("-", "\t", 1).encode(), row))
    except (TypeError, AttributeError):  # not bytes: a decoding client, or not an event
        return None
    return Staged(b"".join(lines), len(lines), frozenset(types))


def pairs(flat: list[Any]) -> dict[Any, Any]:
    """A stream entry's flat ``[field, value, …]`` reply as a dict (later fields win)."""
    it = iter(flat)
    return dict(zip(it, it, strict=False))
