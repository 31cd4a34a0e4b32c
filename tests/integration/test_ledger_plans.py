"""The ledger's statements stay cheap as its tables and batches grow.

asyncpg keeps statements prepared, and Postgres may reuse a plan made while a table
was empty — hash the whole table — long after it holds millions of rows. These tests
run the writer's and the barrier's real statements on an empty ledger, grow the
ledger, run them again on the same connection, and read from Postgres's own
counters how many rows sequential scans of ``movements`` and ``reservations`` read
in that last run (no timing). The staging table has no statistics at all, so the
writer's statements over it are checked for plans that compare every pair of rows.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from onhand.events import Event, EventType
from onhand.ledger.migrate import asyncpg_dsn
from onhand.ledger.rows import Staged, build_batch, stage_entries
from onhand.ledger.store import STAGE_TABLE, LedgerStore

pytestmark = pytest.mark.postgres

ROWS = 20_000
RUNS = 8  # past the five custom plans after which Postgres may keep a generic one


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[LedgerStore]:
    store = await LedgerStore.open(asyncpg_dsn(database_url), max_size=1)  # one connection
    try:
        yield store
    finally:
        await store.close()


def _confirmed(i: int, reservation_id: str = "r1") -> Event:
    at_ms = 1_700_000_000_000 + i
    return Event(f"c{i}", EventType.CONFIRMED, at_ms, "S", "W", reservation_id=reservation_id)


def _staged(i: int) -> Staged:
    flat = [x.encode() for kv in _confirmed(i).to_fields().items() for x in kv]
    staged = stage_entries([(1, f"{1_700_000_000_000 + i}-0", flat)])
    assert staged is not None
    return staged


async def _run_both(store: LedgerStore, i: int) -> None:
    """The writer applies an entry twice (the second time a duplicate: the divergence
    check runs); the barrier writes a group of confirms (the status update runs)."""
    await store.apply_staged(_staged(i))
    assert (await store.apply_staged(_staged(i))).duplicates == 1
    group = [(2, f"{i + 1}-{k}", _confirmed(1_000 * (i + 1) + k, f"r{k}")) for k in range(3)]
    await store.apply(build_batch(group), write_through=True)


async def _grow(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
    await conn.execute(
        "INSERT INTO movements (event_id, partition, stream_ms, stream_seq, type, at_ms,"
        f" sku, version) SELECT 'e' || g, g % 16, g, 0, 'received', g, 'S', g"
        f" FROM generate_series(1, {ROWS}) g;"
        "INSERT INTO reservations (reservation_id, status, status_rank, fingerprint,"
        " created_ms, deadline_ms, max_deadline_ms, updated_ms)"
        f" SELECT 'r' || g, 'pending', 0, 'f', 1, 1, 1, 1 FROM generate_series(1, {ROWS}) g"
    )


async def _seq_rows_read(conn: asyncpg.Connection) -> dict[str, int]:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch(
        "SELECT relname, seq_tup_read FROM pg_stat_user_tables"
        " WHERE relname IN ('movements', 'reservations')"
    )
    return {r["relname"]: r["seq_tup_read"] for r in rows}


async def test_applying_batches_reads_the_ledger_by_key_after_it_grew_from_empty(
    store: LedgerStore, database_url: str
) -> None:
    observer = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for i in range(RUNS):
            await _run_both(store, i)
        async with store.pool.acquire() as conn:
            await _grow(conn)
            await conn.execute("SELECT pg_stat_force_next_flush()")
        before = await _seq_rows_read(observer)
        async with store.pool.acquire() as conn:
            await conn.execute("SELECT pg_stat_force_next_flush()")
        await _run_both(store, RUNS)
        async with store.pool.acquire() as conn:  # its counters reach the observer
            await conn.execute("SELECT pg_stat_force_next_flush()")
        after = await _seq_rows_read(observer)
    finally:
        await observer.close()
    read = {t: after[t] - before[t] for t in after}
    assert read == {"movements": 0, "reservations": 0}


def _batch(n: int, *, mixed: bool) -> Staged:
    """``n`` new one-line reservations; ``mixed``: every other one confirmed and every
    fifth extended in the same batch (a busy checkout: what one writer transaction
    holds under load), else holds only (a sale's peak)."""
    entries: list[tuple[int, str, list[bytes]]] = []
    at_ms = 1_700_000_000_000
    for i in range(n):
        rid = f"m{i}"
        events = [
            Event(f"s:S:W:{2 * i + 1}", EventType.RESERVED, at_ms + i, "S", "W", d_held=1,
                  held=1, version=2 * i + 1, reservation_id=rid, line=0, deadline_ms=at_ms + 1,
                  max_deadline_ms=at_ms + 2, fingerprint="f" * 64, owner="checkout"),
        ]  # fmt: skip
        if mixed and i % 2:
            events.append(
                Event(f"s:S:W:{2 * i + 2}", EventType.CONFIRMED, at_ms + i, "S", "W",
                      d_held=-1, d_committed=1, committed=1, version=2 * i + 2,
                      reservation_id=rid, line=0),
            )  # fmt: skip
        if mixed and i % 5 == 0:
            events.append(
                Event(f"x:{rid}:1", EventType.EXTENDED, at_ms + i, "S", "W", version=1,
                      reservation_id=rid, deadline_ms=at_ms + 2),
            )  # fmt: skip
        for e in events:
            flat = [x.encode() for kv in e.to_fields().items() for x in kv]
            entries.append((1, f"{at_ms + len(entries)}-0", flat))
    staged = stage_entries(entries)
    assert staged is not None
    return staged


def _pairwise(node: dict[str, Any]) -> list[str]:
    """Nested loops in ``node``'s plan whose inner side reads the staging table (or a
    materialized CTE) again for every outer row: a comparison of every pair of rows.
    (An inner index scan of a ledger table is one probe per row, not that.)"""

    def rescans(inner: dict[str, Any]) -> bool:
        return (
            inner.get("Relation Name") == STAGE_TABLE
            or inner["Node Type"] == "CTE Scan"
            or any(rescans(child) for child in inner.get("Plans", []))
        )

    found = []
    if node["Node Type"] == "Nested Loop" and rescans(node["Plans"][1]):
        found.append(json.dumps(node, indent=1))
    for child in node.get("Plans", []):
        found += _pairwise(child)
    return found


@pytest.mark.parametrize("mixed", [True, False], ids=["mixed", "holds-only"])
@pytest.mark.parametrize("reservations", [300, 800, 2_000])
async def test_the_writer_never_compares_every_pair_of_a_batchs_rows(
    store: LedgerStore, reservations: int, mixed: bool
) -> None:
    # Postgres has no statistics on the staging table (it guesses its rows from its
    # size): the join of a batch's new reservations with its resolutions was planned as
    # a nested loop over both, 550,000 comparisons for a batch of 1,500 entries.
    plans = await store.staged_plans(_batch(reservations, mixed=mixed))
    # two locks, levels, allocations, watermarks, movements, reservations (and for a
    # mixed batch statuses and extensions): every statement the batch needs
    assert len(plans) == (9 if mixed else 7)
    for plan in plans:
        assert _pairwise(plan["Plan"]) == []
