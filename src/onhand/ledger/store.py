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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from onhand.domain import STATUS_RANK, ReservationStatus
from onhand.ledger.rows import MOVEMENT_COLUMNS, Batch

__all__ = ["ApplyResult", "LedgerStore"]

_COLS = ", ".join(MOVEMENT_COLUMNS)
_TEMP = f"""
CREATE TEMP TABLE IF NOT EXISTS tmp_movements
    AS SELECT {_COLS} FROM movements WITH NO DATA;
"""
_INSERT_MOVEMENTS = f"""
INSERT INTO movements ({_COLS}) SELECT {_COLS} FROM tmp_movements
ON CONFLICT (event_id) DO NOTHING
"""
_DIVERGENT = """
SELECT t.event_id FROM tmp_movements t JOIN movements m USING (event_id)
WHERE (m.partition, m.stream_ms, m.stream_seq) IS DISTINCT FROM
      (t.partition, t.stream_ms, t.stream_seq)
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
_CREATE_RESERVATIONS = """
INSERT INTO reservations (reservation_id, status, status_rank, owner, fingerprint,
                          created_ms, deadline_ms, max_deadline_ms, extensions, updated_ms)
SELECT id, st, rank, own, fp, cr, dl, cap, 0, up
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
            $7::text[], $8::smallint[], $9::bigint[])
     AS u(id, own, fp, cr, dl, cap, st, rank, up)
ON CONFLICT (reservation_id) DO NOTHING
RETURNING reservation_id
"""
_ALLOCATIONS = """
INSERT INTO reservation_allocations (reservation_id, line, warehouse, sku, qty)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bigint[])
ON CONFLICT DO NOTHING
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
_WATERMARKS = """
INSERT INTO stream_watermarks (partition, stream_ms, stream_seq)
SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bigint[])
ON CONFLICT (partition) DO UPDATE SET
    stream_ms = EXCLUDED.stream_ms, stream_seq = EXCLUDED.stream_seq, updated_at = now()
WHERE (stream_watermarks.stream_ms, stream_watermarks.stream_seq)
    < (EXCLUDED.stream_ms, EXCLUDED.stream_seq)
"""


_POSITIONS = """
INSERT INTO stream_positions (partition, stream_ms, stream_seq)
SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bigint[])
ON CONFLICT (partition) DO UPDATE SET
    stream_ms = EXCLUDED.stream_ms, stream_seq = EXCLUDED.stream_seq
WHERE (stream_positions.stream_ms, stream_positions.stream_seq)
    < (EXCLUDED.stream_ms, EXCLUDED.stream_seq)
"""


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


class LedgerStore:
    """Postgres access for the writer, the confirm barrier and recovery (asyncpg pool)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 4) -> LedgerStore:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    async def apply(self, batch: Batch) -> ApplyResult:
        """Apply ``batch`` in one transaction (see the module docstring)."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._apply(conn, batch)

    async def _apply(
        self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, batch: Batch
    ) -> ApplyResult:
        divergent: tuple[str, ...] = ()
        inserted = 0
        if batch.movements:
            await conn.execute(_TEMP)
            await conn.execute("TRUNCATE tmp_movements")
            await conn.copy_records_to_table(
                "tmp_movements", records=batch.movements, columns=MOVEMENT_COLUMNS
            )
            status = await conn.execute(_INSERT_MOVEMENTS)
            inserted = int(status.rsplit(" ", 1)[1])
            if inserted < len(batch.movements):
                divergent = tuple(r[0] for r in await conn.fetch(_DIVERGENT))
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
                for e in batch.levels.values()
            ]
            await conn.execute(_LEVELS, *_columns(levels, 9))
        statuses_left = dict(batch.statuses)
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
            inserted_rows = await conn.fetch(_CREATE_RESERVATIONS, *_columns(created, 9))
            for row in inserted_rows:
                statuses_left.pop(row[0], None)
            allocs = [
                (rid, ln, wh, sku, q) for (rid, ln, wh), (sku, q) in batch.allocations.items()
            ]
            await conn.execute(_ALLOCATIONS, *_columns(allocs, 5))
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
        if batch.watermarks:
            marks = [(p, ms, seq) for p, (ms, seq) in batch.watermarks.items()]
            await conn.execute(_WATERMARKS, *_columns(marks, 3))
        if batch.positions:
            positions = [(p, ms, seq) for p, (ms, seq) in batch.positions.items()]
            await conn.execute(_POSITIONS, *_columns(positions, 3))
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
