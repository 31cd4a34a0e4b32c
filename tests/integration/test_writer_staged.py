"""The writer's fast path (COPY to staging + set-based SQL) against its general path.

``LedgerStore.apply_staged(stage_entries(…))`` promises the same rows, in every table,
as ``LedgerStore.apply(build_batch(…))`` of the same entries. Both paths drain the same
stream entries, chunk by chunk, into two fresh databases; every table is compared.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.client import NEVER_DECODE

from onhand.domain import Line, ReserveRequest, SkuPolicy
from onhand.events import Event
from onhand.ledger.migrate import asyncpg_dsn, upgrade
from onhand.ledger.rows import build_batch, pairs, stage_entries
from onhand.ledger.store import LedgerStore
from tests.integration.ledger_support import Stack, open_stack
from tests.integration.support import new_id
from tests.pg import create_database, drop_database, new_database_name

pytestmark = pytest.mark.postgres

# (table, ORDER BY); every column but the wall-clock ones is compared
TABLES = (
    ("movements", "event_id"),
    ("stock_levels", "sku, warehouse"),
    ("reservations", "reservation_id"),
    ("reservation_allocations", "reservation_id, line, warehouse"),
    ("sku_policies", "sku"),
    ("stream_watermarks", "partition"),
    ("stream_positions", "partition"),
)
WALL_CLOCK = {"recorded_at", "updated_at"}

Entry = tuple[int, str, list[Any]]


@asynccontextmanager
async def second_database(pg_admin_url: str) -> AsyncIterator[LedgerStore]:
    name = new_database_name()
    url = await asyncio.to_thread(create_database, pg_admin_url, name)
    try:
        await upgrade(url)
        store = await LedgerStore.open(asyncpg_dsn(url))
        try:
            yield store
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(drop_database, pg_admin_url, name)


async def _scenario(stack: Stack) -> None:
    """Every event type, reservations with lines in several partitions, reservations
    created and resolved in one chunk or in different ones, text needing COPY escapes."""
    e = stack.engine
    skus = [new_id("s") for _ in range(6)]
    w1, w2 = new_id("w"), new_id("w")
    await e.set_policy(skus[0], SkuPolicy(reorder_point=50, backorder_limit=2))
    for i, sku in enumerate(skus):
        await e.receive(sku, w1, 100, reference=f"po-{i}\\{i}", actor="clerk one")
        await e.receive(sku, w2, 40)
    rids = []
    for i in range(24):
        rid = new_id("r")
        rids.append(rid)
        lines = [Line(skus[i % 6], 1 + i % 3, (w1, w2), allow_split=True)]
        if i % 4 == 0:  # several lines, usually in several partitions
            lines.append(Line(skus[(i + 1) % 6], 2, (w2,)))
            lines.append(Line(skus[(i + 3) % 6], 1, (w1,)))
        await e.reserve(ReserveRequest(rid, tuple(lines), ttl_ms=60_000))
        if i % 3 == 0:
            await e.confirm(rid)
        if i % 6 == 0:
            await e.fulfill(rid)
    for i in (1, 2, 4, 5):  # pending ones
        await e.release(rids[i])
    await e.cancel(rids[3])  # confirmed
    await e.extend(rids[8], 120_000)
    await e.extend(rids[8], 180_000)
    await e.confirm(rids[8])
    await e.adjust(skus[1], w2, -3, reason="damaged", reference="rma\\7")
    await e.transfer(skus[2], w1, w2, 4)
    level = await e.stock_level(skus[3], w1)
    await e.set_count(skus[3], w1, level.on_hand - 7, expected_version=level.version)
    await e.set_safety_stock(skus[4], w1, 5)
    await e.set_policy(skus[0], SkuPolicy(reorder_point=10))
    for i in (10, 11, 13):
        await e.confirm(rids[i])
    # The API only takes printable ASCII, but the writer copies whatever a stream holds:
    # copies of an adjustment whose text needs every COPY escape.
    keys = e.keys
    stream = keys.sku_stream(skus[1])
    last: Any = await stack.client.xrevrange(stream, count=1)
    fields: dict[bytes, bytes] = last[0][1]
    for i, text in enumerate(("tab\there", "new\nline\r\n", "back\\slash\\t", "all\t\\\n")):
        copy = {**fields, b"id": fields[b"id"] + b"-copy%d" % i, b"rsn": text.encode()}
        await stack.client.xadd(stream, copy)  # type: ignore[arg-type]


async def _entries(stack: Stack) -> list[Entry]:
    """Every stream entry as the writer reads it (raw flat replies), in time order."""
    keys = stack.engine.keys
    raw = Redis(connection_pool=stack.client.connection_pool)  # as the writer reads
    raw.response_callbacks.pop("XRANGE", None)
    out: list[tuple[tuple[int, int], Entry]] = []
    for stream in keys.all_streams():
        reply = await raw.execute_command(  # type: ignore[no-untyped-call]
            "XRANGE", stream, "-", "+", **{NEVER_DECODE: True}
        )
        for raw_id, flat in reply:
            sid = raw_id.decode()
            ms, _, seq = sid.partition("-")
            out.append(((int(ms), int(seq)), (keys.stream_partition(stream), sid, list(flat))))
    return [entry for _, entry in sorted(out)]


async def _general(store: LedgerStore, chunk: list[Entry]) -> None:
    batch = build_batch([(p, sid, Event.from_fields(pairs(flat))) for p, sid, flat in chunk])
    await store.apply(batch, lock_reservations=True)


async def _staged(store: LedgerStore, chunk: list[Entry]) -> bool:
    """The fast path where it takes the chunk (else the general path); True if it did."""
    staged = stage_entries((p, sid, list(flat)) for p, sid, flat in chunk)
    if staged is None:
        await _general(store, chunk)
        return False
    result = await store.apply_staged(staged)
    assert not result.divergent
    return True


async def _tables(store: LedgerStore) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for table, order in TABLES:
        rows = await store.pool.fetch(f"SELECT * FROM {table} ORDER BY {order}")
        out[table] = [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]
    return out


@pytest.mark.parametrize("chunk_size", [1, 7, 40, 10_000])
async def test_the_staged_path_writes_exactly_what_the_general_path_writes(
    redis_url: str, database_url: str, namespace: str, pg_admin_url: str, chunk_size: int
) -> None:
    async with (
        open_stack(redis_url, database_url, namespace) as stack,
        second_database(pg_admin_url) as general,
    ):
        await _scenario(stack)
        entries = await _entries(stack)
        assert {pairs(f)[b"t"] for _, _, f in entries} >= {
            b"received", b"reserved", b"confirmed", b"released", b"fulfilled", b"cancelled",
            b"extended", b"adjusted", b"transfer_out", b"transfer_in", b"counted",
            b"safety_stock_set", b"policy_set", b"low_stock",
        }  # fmt: skip
        fast = 0
        chunks = [entries[i : i + chunk_size] for i in range(0, len(entries), chunk_size)]
        for chunk in chunks:
            fast += await _staged(stack.store, chunk)
            await _general(general, chunk)
        assert fast >= len(chunks) // 2  # most chunks took the fast path
        # replayed (a redelivery): nothing changes on either side
        for chunk in chunks[: max(1, len(chunks) // 3)]:
            await _staged(stack.store, chunk)
            await _general(general, chunk)
        staged_tables = await _tables(stack.store)
        assert len(staged_tables["movements"]) == len(entries)
        assert staged_tables == await _tables(general)
