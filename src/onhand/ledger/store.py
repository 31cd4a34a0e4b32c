"""The ledger's Postgres side: apply a batch in one transaction; read what recovery needs.

Contract of :meth:`LedgerStore.apply`: one transaction per batch. Movements are inserted
idempotently (``ON CONFLICT (event_id) DO NOTHING``), so a batch may be applied any
number of times; projections only move forward (record version, status rank, extension
number, policy version); the per-partition watermark only moves up and is committed
with the rows it covers. A duplicate event id whose stream position differs from the
stored one is *divergent*: Redis reused an event id for a different event (it lost data
and was not fenced) — :class:`ApplyResult` reports those, they are never overwritten.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from onhand.domain import STATUS_RANK, ReservationStatus
from onhand.events import EventType
from onhand.ledger.rows import MOVEMENT_COLUMNS, STAGE_COLUMNS, Batch, Staged

__all__ = ["STAGE_TABLE", "ApplyResult", "LedgerStore"]

_COLS = ", ".join(MOVEMENT_COLUMNS)
MOVEMENT_TYPES = {
    "event_id": "text",
    "partition": "smallint",
    "stream_ms": "bigint",
    "stream_seq": "bigint",
    "type": "text",
    "at_ms": "bigint",
    "sku": "text",
    "warehouse": "text",
    "d_on_hand": "bigint",
    "d_held": "bigint",
    "d_committed": "bigint",
    "on_hand": "bigint",
    "held": "bigint",
    "committed": "bigint",
    "safety_stock": "bigint",
    "version": "bigint",
    "low": "boolean",
    "beyond": "bigint",
    "reservation_id": "text",
    "line": "integer",
    "deadline_ms": "bigint",
    "max_deadline_ms": "bigint",
    "fingerprint": "text",
    "owner": "text",
    "reason": "text",
    "reference": "text",
    "actor": "text",
    "policy": "text",
}
"""Postgres type of each ``movements`` column (``tables.movements``), by name: the element
types of the arrays :meth:`LedgerStore.apply` sends the rows as."""
_N = len(MOVEMENT_COLUMNS)
ARRAY_ROWS = 64
"""A batch of at most this many movements sends them as one array per column, in the
statement that inserts them (one round trip); a larger one copies them into a staging
table first (``COPY`` and the insert: 2.6 against 1.8 ms for one movement, 30 against
39 to 48 ms for 1,000, the two about even near 100 — measured on the benchmark machine)."""
# The partitions' watermarks ($1 to $3) and stream positions ($4 to $6) move in CTEs of the
# statement that inserts the movements.
_MARKS = """
WITH w AS (
    INSERT INTO stream_watermarks (partition, stream_ms, stream_seq)
    SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bigint[])
    ON CONFLICT (partition) DO UPDATE SET
        stream_ms = EXCLUDED.stream_ms, stream_seq = EXCLUDED.stream_seq, updated_at = now()
    WHERE (stream_watermarks.stream_ms, stream_watermarks.stream_seq)
        < (EXCLUDED.stream_ms, EXCLUDED.stream_seq)
), p AS (
    INSERT INTO stream_positions (partition, stream_ms, stream_seq)
    SELECT * FROM unnest($4::smallint[], $5::bigint[], $6::bigint[])
    ON CONFLICT (partition) DO UPDATE SET
        stream_ms = EXCLUDED.stream_ms, stream_seq = EXCLUDED.stream_seq
    WHERE (stream_positions.stream_ms, stream_positions.stream_seq)
        < (EXCLUDED.stream_ms, EXCLUDED.stream_seq)
)"""
_ARRAYS = ", ".join(f"${i + 7}::{MOVEMENT_TYPES[c]}[]" for i, c in enumerate(MOVEMENT_COLUMNS))
_MOVEMENTS_FROM_ARRAYS = f"""{_MARKS}
INSERT INTO movements ({_COLS}) SELECT * FROM unnest({_ARRAYS})
ON CONFLICT (event_id) DO NOTHING
"""
# ON COMMIT DELETE ROWS: empty at the start of every transaction, without a TRUNCATE
# (a new file and a catalog update, 3 ms) per batch.
_TEMP = f"""
CREATE TEMP TABLE IF NOT EXISTS tmp_movements ON COMMIT DELETE ROWS
    AS SELECT {_COLS} FROM movements WITH NO DATA
"""
_MOVEMENTS_FROM_COPY = f"""{_MARKS}
INSERT INTO movements ({_COLS}) SELECT {_COLS} FROM tmp_movements
ON CONFLICT (event_id) DO NOTHING
"""
# A statement of its own: it sees the rows the insert added and those it found in place.
_DIVERGENT = """
SELECT u.event_id
FROM unnest($1::text[], $2::smallint[], $3::bigint[], $4::bigint[])
    AS u(event_id, partition, stream_ms, stream_seq)
JOIN movements m USING (event_id)
WHERE (m.partition, m.stream_ms, m.stream_seq) IS DISTINCT FROM
      (u.partition, u.stream_ms, u.stream_seq)
"""
_LEVELS = """
INSERT INTO stock_levels
    (sku, warehouse, on_hand, held, committed, safety_stock, version, low, updated_ms)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                     $6::bigint[], $7::bigint[], $8::bool[], $9::bigint[])
ON CONFLICT (sku, warehouse) DO UPDATE SET
    on_hand = EXCLUDED.on_hand, held = EXCLUDED.held, committed = EXCLUDED.committed,
    safety_stock = EXCLUDED.safety_stock, version = EXCLUDED.version, low = EXCLUDED.low,
    updated_ms = EXCLUDED.updated_ms
WHERE stock_levels.version < EXCLUDED.version
"""
# The allocations go in the same statement (a CTE: a table of its own, one round trip).
_CREATE_RESERVATIONS = """
WITH a AS (
    INSERT INTO reservation_allocations (reservation_id, line, warehouse, sku, qty)
    SELECT * FROM unnest($10::text[], $11::int[], $12::text[], $13::text[], $14::bigint[])
    ON CONFLICT DO NOTHING
)
INSERT INTO reservations (reservation_id, status, status_rank, owner, fingerprint,
                          created_ms, deadline_ms, max_deadline_ms, extensions, updated_ms)
SELECT id, st, rank, own, fp, cr, dl, cap, 0, up
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
            $7::text[], $8::smallint[], $9::bigint[])
     AS u(id, own, fp, cr, dl, cap, st, rank, up)
ON CONFLICT (reservation_id) DO NOTHING
RETURNING reservation_id
"""
_STATUSES = """
UPDATE reservations r
SET status = u.status, status_rank = u.rank, updated_ms = GREATEST(r.updated_ms, u.at)
FROM unnest($1::text[], $2::text[], $3::smallint[], $4::bigint[]) AS u(id, status, rank, at)
WHERE r.reservation_id = u.id AND r.status_rank < u.rank
"""
_EXTENSIONS = """
UPDATE reservations r
SET deadline_ms = u.dl, extensions = u.n, updated_ms = GREATEST(r.updated_ms, u.at)
FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[]) AS u(id, n, dl, at)
WHERE r.reservation_id = u.id AND r.extensions < u.n
"""
_POLICIES = """
INSERT INTO sku_policies (sku, backorder_limit, preorder_limit, preorder_release_ms,
    reorder_point, reorder_qty, lead_time_days, max_line_qty, policy_version, updated_ms)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                     $6::bigint[], $7::int[], $8::bigint[], $9::bigint[], $10::bigint[])
ON CONFLICT (sku) DO UPDATE SET
    backorder_limit = EXCLUDED.backorder_limit, preorder_limit = EXCLUDED.preorder_limit,
    preorder_release_ms = EXCLUDED.preorder_release_ms,
    reorder_point = EXCLUDED.reorder_point, reorder_qty = EXCLUDED.reorder_qty,
    lead_time_days = EXCLUDED.lead_time_days, max_line_qty = EXCLUDED.max_line_qty,
    policy_version = EXCLUDED.policy_version, updated_ms = EXCLUDED.updated_ms
WHERE sku_policies.policy_version < EXCLUDED.policy_version
"""
# -- the writer's fast path: every row and projection derived from the staging table ----
# ``tmp_stream_entries`` holds the stream fields as they are on the stream (NULL: absent).
# Each statement below gives exactly what ``build_batch`` + ``_apply`` give for the same
# entries: the same defaults (an absent number is 0, ``line`` -1), the same NULLs in
# ``movements``, the same winners where several events of a batch touch one row (highest
# version / rank, the earliest entry on ties; the latest allocation), the same guards.
# The staging table's columns: a movement's, with ``low`` as the stream has it (0 or 1).
_STAGE_TYPES = {**MOVEMENT_TYPES, "low": "bigint"}
STAGE_TABLE = "tmp_stream_entries"
# ON COMMIT DELETE ROWS: empty at the start of every transaction (a rollback removes
# what it copied), without a TRUNCATE (a new file and a catalog update) per batch
_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} ("
    + ", ".join(f"{c} {_STAGE_TYPES[c]}" for c in STAGE_COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
_NO_LEVELS_SQL = "('policy_set', 'extended')"  # rows.py: _NO_LEVELS
_ORDER = "partition, stream_ms, stream_seq"  # the order the writer read them in
_C = 'COLLATE "C"'  # grouping keys only need equality: sort them bytewise (cheaper)
_STAGED_MOVEMENTS = f"""
INSERT INTO movements ({_COLS})
SELECT event_id, partition, stream_ms, stream_seq, type, at_ms, coalesce(sku, ''), warehouse,
    coalesce(d_on_hand, 0), coalesce(d_held, 0), coalesce(d_committed, 0),
    CASE WHEN lv THEN coalesce(on_hand, 0) END, CASE WHEN lv THEN coalesce(held, 0) END,
    CASE WHEN lv THEN coalesce(committed, 0) END,
    CASE WHEN lv THEN coalesce(safety_stock, 0) END, coalesce(version, 0),
    CASE WHEN lv THEN coalesce(low, 0) <> 0 END, CASE WHEN lv THEN coalesce(beyond, 0) END,
    reservation_id, CASE WHEN line >= 0 THEN line END, nullif(deadline_ms, 0),
    nullif(max_deadline_ms, 0), fingerprint, owner, reason, reference, actor, policy
FROM (SELECT *, type NOT IN {_NO_LEVELS_SQL} AS lv FROM {STAGE_TABLE}) s
ON CONFLICT (event_id) DO NOTHING
"""
# At most the duplicates can diverge: $1 is their number. (A parameter also has the
# statement planned on each execution: see ``PLANNING`` below.)
_STAGED_DIVERGENT = f"""
SELECT t.event_id FROM {STAGE_TABLE} t JOIN movements m USING (event_id)
WHERE (m.partition, m.stream_ms, m.stream_seq) IS DISTINCT FROM
      (t.partition, t.stream_ms, t.stream_seq)
LIMIT $1
"""
_STAGED_LEVELS = f"""
INSERT INTO stock_levels
    (sku, warehouse, on_hand, held, committed, safety_stock, version, low, updated_ms)
SELECT DISTINCT ON (sku {_C}, warehouse {_C}) sku, warehouse, on_hand, held, committed,
    safety_stock, version, low, updated_ms
FROM (
    SELECT coalesce(sku, '') AS sku, coalesce(warehouse, '') AS warehouse,
        coalesce(on_hand, 0) AS on_hand, coalesce(held, 0) AS held,
        coalesce(committed, 0) AS committed, coalesce(safety_stock, 0) AS safety_stock,
        coalesce(version, 0) AS version, coalesce(low, 0) <> 0 AS low, at_ms AS updated_ms,
        {_ORDER}
    FROM {STAGE_TABLE}
    WHERE type NOT IN ('policy_set', 'extended', 'low_stock')
) s
ORDER BY sku {_C}, warehouse {_C}, version DESC, {_ORDER}
ON CONFLICT (sku, warehouse) DO UPDATE SET
    on_hand = EXCLUDED.on_hand, held = EXCLUDED.held, committed = EXCLUDED.committed,
    safety_stock = EXCLUDED.safety_stock, version = EXCLUDED.version, low = EXCLUDED.low,
    updated_ms = EXCLUDED.updated_ms
WHERE stock_levels.version < EXCLUDED.version
"""
_RESOLUTIONS_SQL = ", ".join(
    f"('{t.value}', '{s.value}', {STATUS_RANK[s]})"
    for t, s in (
        (EventType.CONFIRMED, ReservationStatus.CONFIRMED),
        (EventType.RELEASED, ReservationStatus.RELEASED),
        (EventType.EXPIRED, ReservationStatus.EXPIRED),
        (EventType.FULFILLED, ReservationStatus.FULFILLED),
        (EventType.CANCELLED, ReservationStatus.CANCELLED),
    )
)
RESOLUTION_TYPES = frozenset(
    t.value.encode()
    for t in (
        EventType.CONFIRMED,
        EventType.RELEASED,
        EventType.EXPIRED,
        EventType.FULFILLED,
        EventType.CANCELLED,
    )
)
_STAGED_STATUS_CTE = f"""
st AS (
    SELECT DISTINCT ON (id {_C}) id, status, rank, at
    FROM (
        SELECT coalesce(s.reservation_id, '') AS id, r.status, r.rank, s.at_ms AS at,
            s.partition, s.stream_ms, s.stream_seq
        FROM {STAGE_TABLE} s JOIN (VALUES {_RESOLUTIONS_SQL}) AS r(type, status, rank)
            ON s.type = r.type
    ) u
    ORDER BY id {_C}, rank DESC, {_ORDER}
)"""
_STAGED_STATUSES_UPDATE = """
UPDATE reservations r
SET status = st.status, status_rank = st.rank, updated_ms = GREATEST(r.updated_ms, st.at)
FROM st WHERE r.reservation_id = st.id AND r.status_rank < st.rank
"""
# A reservation created and resolved in the batch is inserted in its final status; where
# it already existed the INSERT does nothing and the status goes through the guarded
# UPDATE that follows (a separate statement, so it sees a row another transaction
# committed while the INSERT waited for it). On the rows the INSERT added the UPDATE
# finds their rank already reached and changes nothing — as in ``_apply``.
# ``c`` (one row per new reservation) and ``st`` (one per resolved one) are combined as
# ``c LEFT JOIN st USING (id)`` would, but grouped over their union: Postgres has no
# statistics on the staging table and planned that join as a nested loop comparing
# every pair (a mixed batch of 1,500 entries: 550,000 comparisons, 50 ms instead of 4).
# A batch without resolutions (holds only: a sale's peak) inserts ``c`` as it is.
_STAGED_NEW_CTE = f"""
c AS (
    SELECT DISTINCT ON (id {_C}) id, own, fp, cr, dl, cap
    FROM (
        SELECT coalesce(reservation_id, '') AS id, coalesce(owner, '') AS own,
            coalesce(fingerprint, '') AS fp, at_ms AS cr, coalesce(deadline_ms, 0) AS dl,
            coalesce(max_deadline_ms, 0) AS cap, {_ORDER}
        FROM {STAGE_TABLE} WHERE type = 'reserved'
    ) u
    ORDER BY id {_C}, {_ORDER}
)"""
_RESERVATIONS_INSERT = """
INSERT INTO reservations (reservation_id, status, status_rank, owner, fingerprint,
                          created_ms, deadline_ms, max_deadline_ms, extensions, updated_ms)"""
_STAGED_RESERVATIONS = f"""
WITH {_STAGED_NEW_CTE.strip()}, {_STAGED_STATUS_CTE.strip()}, both_ AS (
    SELECT id {_C} AS id, true AS new, own, fp, cr, dl, cap, NULL::text AS status,
        NULL::int AS rank, NULL::bigint AS at
    FROM c
    UNION ALL
    SELECT id {_C}, false, NULL, NULL, NULL, NULL, NULL, status, rank, at FROM st
){_RESERVATIONS_INSERT}
SELECT id, coalesce(max(status), 'pending'), coalesce(max(rank), 0), max(own), max(fp),
    max(cr), max(dl), max(cap), 0, GREATEST(coalesce(max(at), max(cr)), max(cr))
FROM both_
GROUP BY id
HAVING bool_or(new)
ORDER BY id
ON CONFLICT (reservation_id) DO NOTHING
"""
_STAGED_PENDING_RESERVATIONS = f"""
WITH {_STAGED_NEW_CTE.strip()}{_RESERVATIONS_INSERT}
SELECT id, 'pending', 0, own, fp, cr, dl, cap, 0, cr FROM c ORDER BY id {_C}
ON CONFLICT (reservation_id) DO NOTHING
"""
_STAGED_STATUSES = f"WITH {_STAGED_STATUS_CTE.strip()}\n{_STAGED_STATUSES_UPDATE}"
_STAGED_ALLOCATIONS = f"""
INSERT INTO reservation_allocations (reservation_id, line, warehouse, sku, qty)
SELECT DISTINCT ON (id {_C}, ln, wh {_C}) id, ln, wh, sku, qty
FROM (
    SELECT coalesce(reservation_id, '') AS id, coalesce(line, -1) AS ln,
        coalesce(warehouse, '') AS wh, coalesce(sku, '') AS sku, coalesce(d_held, 0) AS qty,
        {_ORDER}
    FROM {STAGE_TABLE} WHERE type = 'reserved'
) u
ORDER BY id {_C}, ln, wh {_C}, partition DESC, stream_ms DESC, stream_seq DESC
ON CONFLICT DO NOTHING
"""
_STAGED_EXTENSIONS = f"""
UPDATE reservations r
SET deadline_ms = u.dl, extensions = u.n, updated_ms = GREATEST(r.updated_ms, u.at)
FROM (
    SELECT DISTINCT ON (id {_C}) id, n, dl, at
    FROM (
        SELECT coalesce(reservation_id, '') AS id, coalesce(version, 0)::int AS n,
            coalesce(deadline_ms, 0) AS dl, at_ms AS at, {_ORDER}
        FROM {STAGE_TABLE} WHERE type = 'extended'
    ) e
    ORDER BY id {_C}, n DESC, {_ORDER}
) u
WHERE r.reservation_id = u.id AND r.extensions < u.n
"""
_STAGED_MARKS = f"""
WITH m AS (
    SELECT DISTINCT ON (partition) partition, stream_ms, stream_seq
    FROM {STAGE_TABLE} ORDER BY partition, stream_ms DESC, stream_seq DESC
), w AS (
    INSERT INTO stream_watermarks (partition, stream_ms, stream_seq) SELECT * FROM m
    ON CONFLICT (partition) DO UPDATE SET
        stream_ms = EXCLUDED.stream_ms, stream_seq = EXCLUDED.stream_seq, updated_at = now()
    WHERE (stream_watermarks.stream_ms, stream_watermarks.stream_seq)
        < (EXCLUDED.stream_ms, EXCLUDED.stream_seq)
)
INSERT INTO stream_positions (partition, stream_ms, stream_seq) SELECT * FROM m
ON CONFLICT (partition) DO UPDATE SET
    stream_ms = EXCLUDED.stream_ms, stream_seq = EXCLUDED.stream_seq
WHERE (stream_positions.stream_ms, stream_positions.stream_seq)
    < (EXCLUDED.stream_ms, EXCLUDED.stream_seq)
"""
_LEVEL_TYPES = frozenset(
    t.value.encode()
    for t in EventType
    if t not in (EventType.POLICY_SET, EventType.EXTENDED, EventType.LOW_STOCK)
)


RESERVATIONS_LOCK = "SELECT pg_advisory_xact_lock(7283459120147)"
"""Taken (until COMMIT) before a writer transaction touches ``reservations``. The writer
applies partition groups in concurrent transactions, and a reservation with lines in
several groups is updated by each: without one order for those row locks, two groups
could deadlock. Everything else a group writes is its own (records, movements and
watermarks live in one partition), so only this tail of the transactions is serial."""


WRITER_SHARED_LOCK = "SELECT pg_advisory_xact_lock_shared(7283459120148)"
WRITE_THROUGH_LOCK = "SELECT pg_advisory_xact_lock(7283459120148)"
"""Every writer transaction takes the first (shared: writer transactions still run
side by side), a write-through of the confirm or policy barrier the second (exclusive),
each as its first statement. Both kinds insert the same rows (a confirm's movements,
allocations and stream positions), in different orders and partly under
:data:`RESERVATIONS_LOCK`; without this, each could wait for the other's rows and
Postgres would break the cycle only after ``deadlock_timeout`` (a 1 s confirm stall and
a writer retry). Now a write-through waits at most for the writer transactions in
flight, and none waits for it while it runs."""


def _staged_statements(types: frozenset[bytes]) -> tuple[list[str], list[str]]:
    """The statements a staged batch needs (by the event types in it), in two groups:
    the first ends with the movements insert (its status is the group's); the second,
    empty if the batch touches no reservation, starts with :data:`RESERVATIONS_LOCK`."""
    first = [WRITER_SHARED_LOCK]
    if types & _LEVEL_TYPES:
        first.append(_STAGED_LEVELS)
    if b"reserved" in types:
        first.append(_STAGED_ALLOCATIONS)
    first += [_STAGED_MARKS, _STAGED_MOVEMENTS]
    second = []
    if b"reserved" in types:
        resolved = types & RESOLUTION_TYPES
        second.append(_STAGED_RESERVATIONS if resolved else _STAGED_PENDING_RESERVATIONS)
    if types & RESOLUTION_TYPES:
        second.append(_STAGED_STATUSES)
    if b"extended" in types:
        second.append(_STAGED_EXTENSIONS)
    if second:
        second.insert(0, RESERVATIONS_LOCK)
    return [p.strip() for p in first], [p.strip() for p in second]


def _staged_scripts(types: frozenset[bytes]) -> tuple[str, str]:
    """:func:`_staged_statements` as two scripts (one round trip each)."""
    first, second = _staged_statements(types)
    return ";".join(first), ";".join(second)


async def _stage(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, staged: Staged
) -> None:
    """Copy ``staged`` into the staging table (in the caller's transaction)."""
    await conn.execute(_STAGE)
    await conn.copy_to_table(
        STAGE_TABLE,
        source=_once(staged.payload),  # (bytes would be taken for a path)
        columns=STAGE_COLUMNS,
        format="text",
        null="",
    )


async def _once(payload: bytes) -> AsyncIterator[bytes]:
    yield payload


@dataclass(frozen=True, slots=True)
class ApplyResult:
    inserted: int
    duplicates: int
    divergent: tuple[str, ...]


def _columns(rows: Iterable[tuple[Any, ...]], n: int) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(n)]
    for row in rows:
        for i, value in enumerate(row):
            cols[i].append(value)
    return cols


PLANNING = {"plan_cache_mode": "force_custom_plan"}
"""Session settings of every connection :meth:`LedgerStore.open` makes. asyncpg keeps
each statement prepared, and Postgres may then reuse one plan for it, made when the
ledger's tables were small: a plan that hashed an empty ``movements`` table reads the
whole table on every later execution until an ``ANALYZE`` happens to invalidate it
(docs/architecture.md, "Plans follow the tables", has the figures). The tables grow
from nothing to millions of rows under one long-lived process, so every statement with
parameters is planned for the tables as they are when it runs. (A statement without
parameters keeps its first plan whatever this says: give it one.)"""


class LedgerStore:
    """Postgres access for the writer, the confirm barrier and recovery (asyncpg pool)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 4) -> LedgerStore:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, server_settings=PLANNING
        )
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    async def apply(
        self, batch: Batch, *, lock_reservations: bool = False, write_through: bool = False
    ) -> ApplyResult:
        """Apply ``batch`` in one transaction (see the module docstring).

        ``lock_reservations``: take :data:`RESERVATIONS_LOCK` before the reservation
        statements (the writer, which runs transactions concurrently), and the writer's
        shared lock first; ``write_through``: a barrier's transaction, which takes
        :data:`WRITE_THROUGH_LOCK` first instead."""
        async with self.pool.acquire() as conn, conn.transaction():
            if write_through:
                await conn.execute(WRITE_THROUGH_LOCK)
                lock_reservations = False  # the exclusive lock covers it
            elif lock_reservations:
                await conn.execute(WRITER_SHARED_LOCK)
            return await self._apply(conn, batch, lock_reservations=lock_reservations)

    async def apply_staged(self, staged: Staged) -> ApplyResult:
        """Apply the writer's staged entries in one transaction: ``COPY`` them into the
        staging table, then one script derives the movements and every projection from
        it. Same contract (and same rows) as :meth:`apply` of ``build_batch`` of them."""
        async with self.pool.acquire() as conn, conn.transaction():
            await _stage(conn, staged)
            own, shared = _staged_scripts(staged.types)
            status = await conn.execute(own)
            inserted = int(status.rsplit(" ", 1)[1])
            divergent: tuple[str, ...] = ()
            if inserted < staged.count:
                duplicates = staged.count - inserted
                rows = await conn.fetch(_STAGED_DIVERGENT, duplicates)
                divergent = tuple(r[0] for r in rows)
            if shared:
                await conn.execute(shared)
            return ApplyResult(inserted, staged.count - inserted, divergent)

    async def staged_plans(self, staged: Staged) -> list[dict[str, Any]]:
        """The plan Postgres makes for each statement :meth:`apply_staged` would run on
        ``staged`` (``EXPLAIN (FORMAT JSON)``, in order), made in a transaction that is
        rolled back: nothing is written. For tests and for diagnosing a slow writer."""
        async with self.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                await _stage(conn, staged)
                first, second = _staged_statements(staged.types)
                plans = []
                for statement in first + second:
                    raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + statement)
                    plans.append(json.loads(raw)[0])
                return plans
            finally:
                await transaction.rollback()

    async def _apply(
        self,
        conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        batch: Batch,
        *,
        lock_reservations: bool = False,
    ) -> ApplyResult:
        divergent: tuple[str, ...] = ()
        inserted = 0
        if batch.movements:
            marks = [(p, ms, seq) for p, (ms, seq) in batch.watermarks.items()]
            positions = [(p, ms, seq) for p, (ms, seq) in batch.positions.items()]
            both = (*_columns(marks, 3), *_columns(positions, 3))
            if len(batch.movements) <= ARRAY_ROWS:
                rows = _columns(batch.movements, _N)
                status = await conn.execute(_MOVEMENTS_FROM_ARRAYS, *both, *rows)
            else:
                await conn.execute(_TEMP)
                await conn.copy_records_to_table(
                    "tmp_movements", records=batch.movements, columns=MOVEMENT_COLUMNS
                )
                status = await conn.execute(_MOVEMENTS_FROM_COPY, *both)
            inserted = int(status.rsplit(" ", 1)[1])
            if inserted < len(batch.movements):
                where = _columns((m[:4] for m in batch.movements), 4)
                divergent = tuple(r[0] for r in await conn.fetch(_DIVERGENT, *where))
        if batch.levels:
            levels: list[tuple[Any, ...]] = [
                (
                    e.sku,
                    e.warehouse,
                    e.on_hand,
                    e.held,
                    e.committed,
                    e.safety_stock,
                    e.version,
                    bool(e.low),
                    e.at_ms,
                )
                # Sorted: every writer of stock_levels locks rows in (sku, warehouse)
                # order, so concurrent transactions cannot deadlock on them.
                for e in sorted(batch.levels.values(), key=lambda e: (e.sku, e.warehouse))
            ]
            await conn.execute(_LEVELS, *_columns(levels, 9))
        statuses_left = dict(batch.statuses)
        if lock_reservations and (batch.created or statuses_left or batch.extensions):
            await conn.execute(RESERVATIONS_LOCK)
        if batch.created:
            # A reservation created and resolved in the same batch is inserted with its
            # final status (one write instead of an insert and an update). Where the row
            # already existed (its other partition's events came in an earlier batch),
            # the insert does nothing and the status goes through the guarded update.
            created: list[tuple[Any, ...]] = []
            for rid, e in batch.created.items():
                status, at = statuses_left.get(rid, (ReservationStatus.PENDING, e.at_ms))
                created.append(
                    (
                        rid,
                        e.owner,
                        e.fingerprint,
                        e.at_ms,
                        e.deadline_ms,
                        e.max_deadline_ms,
                        status.value,
                        STATUS_RANK[status],
                        max(at, e.at_ms),
                    )
                )
            allocs = [
                (rid, ln, wh, sku, q) for (rid, ln, wh), (sku, q) in batch.allocations.items()
            ]
            inserted_rows = await conn.fetch(
                _CREATE_RESERVATIONS, *_columns(created, 9), *_columns(allocs, 5)
            )
            for row in inserted_rows:
                statuses_left.pop(row[0], None)
        if statuses_left:
            statuses = [(r, s.value, STATUS_RANK[s], at) for r, (s, at) in statuses_left.items()]
            await conn.execute(_STATUSES, *_columns(statuses, 4))
        if batch.extensions:
            extended = [(rid, n, dl, at) for rid, (n, dl, at) in batch.extensions.items()]
            await conn.execute(_EXTENSIONS, *_columns(extended, 4))
        if batch.policies:
            policies = [
                (sku, *(int(v) for v in e.policy.split(",")), e.version, e.at_ms)
                for sku, e in batch.policies.items()
            ]
            await conn.execute(_POLICIES, *_columns(policies, 10))
        return ApplyResult(inserted, len(batch.movements) - inserted, divergent)

    # -- failures ------------------------------------------------------------------------
    async def dead_letter(
        self, partition: int, stream_id: str, fields: Mapping[str, str], error: str, attempts: int
    ) -> None:
        await self.pool.execute(
            "INSERT INTO dead_letters (partition, stream_id, fields, error, attempts)"
            " VALUES ($1, $2, $3::jsonb, $4, $5)",
            partition,
            stream_id,
            json.dumps(dict(fields)),
            error[:2000],
            attempts,
        )

    async def record_lost(self, partition: int, stream_ids: Iterable[str], cause: str) -> int:
        ids = list(stream_ids)
        if ids:
            await self.pool.executemany(
                "INSERT INTO lost_events (partition, stream_id, cause) VALUES ($1, $2, $3)",
                [(partition, i, cause) for i in ids],
            )
        return len(ids)

    # -- reads ---------------------------------------------------------------------------
    async def watermarks(self) -> dict[int, tuple[int, int]]:
        rows = await self.pool.fetch(
            "SELECT partition, stream_ms, stream_seq FROM stream_watermarks"
        )
        return {r["partition"]: (r["stream_ms"], r["stream_seq"]) for r in rows}

    async def max_stream_ids(self) -> dict[int, tuple[int, int]]:
        """Per partition, the highest stream position any stored movement came from."""
        rows = await self.pool.fetch(
            "SELECT partition, stream_ms, stream_seq FROM stream_positions"
        )
        return {r["partition"]: (r["stream_ms"], r["stream_seq"]) for r in rows}

    async def counts(self) -> dict[str, int]:
        row = await self.pool.fetchrow(
            "SELECT (SELECT count(*) FROM dead_letters) AS dead_letters,"
            " (SELECT count(*) FROM lost_events) AS lost_events"
        )
        assert row is not None
        return dict(row)

    async def has_movement(self, reservation_id: str, event_type: str) -> bool:
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM movements WHERE reservation_id = $1 AND type = $2)",
                reservation_id,
                event_type,
            )
        )

    async def new_epoch(self, run_id: str, reason: str) -> int:
        epoch = await self.pool.fetchval(
            "INSERT INTO redis_epochs (run_id, reason) VALUES ($1, $2) RETURNING epoch",
            run_id,
            reason,
        )
        return int(epoch)

    async def current_epoch(self) -> int:
        return int(await self.pool.fetchval("SELECT coalesce(max(epoch), 0) FROM redis_epochs"))
