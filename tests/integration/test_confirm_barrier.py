"""The confirm barrier's group commit, against real Redis and Postgres.

Concurrent durable confirms share write-through transactions; each is acknowledged
only once Postgres holds it, and one failing confirm does not fail the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from onhand.domain import Line, ReservationStatus, ReserveRequest
from onhand.ledger.barrier import DurableConfirms
from onhand.ledger.migrate import asyncpg_dsn
from onhand.ledger.rows import Batch
from onhand.ledger.store import WRITER_SHARED_LOCK, ApplyResult, LedgerStore
from tests.integration.ledger_support import Stack, open_stack
from tests.integration.support import new_id

pytestmark = pytest.mark.postgres


class CountingStore(LedgerStore):
    """The real store, recording how many reservations each write-through carried;
    ``refuse`` makes any batch holding that reservation fail (not a Postgres error)."""

    def __init__(self, pool: asyncpg.Pool, refuse: str = "") -> None:
        super().__init__(pool)
        self.groups: list[int] = []
        self.refuse = refuse

    async def apply(
        self, batch: Batch, *, lock_reservations: bool = False, write_through: bool = False
    ) -> ApplyResult:
        self.groups.append(len(batch.created))
        if self.refuse in batch.created:
            raise ValueError(f"refused {self.refuse}")
        return await super().apply(
            batch, lock_reservations=lock_reservations, write_through=write_through
        )


@asynccontextmanager
async def writer_transaction_in_flight(database_url: str) -> AsyncIterator[None]:
    """Hold the writer's shared lock, as a writer transaction does while it runs."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with conn.transaction():
            await conn.execute(WRITER_SHARED_LOCK)
            yield
    finally:
        await conn.close()


async def _holds(stack: Stack, n: int) -> list[str]:
    sku, wh = new_id("s"), new_id("w")
    await stack.engine.receive(sku, wh, n)
    rids = [new_id("r") for _ in range(n)]
    for rid in rids:
        await stack.engine.reserve(ReserveRequest(rid, (Line(sku, 1, (wh,)),), ttl_ms=600_000))
    return rids


async def _confirmed_in_redis(stack: Stack, rids: list[str]) -> None:
    for _ in range(500):
        got = [await stack.engine.get_reservation(rid) for rid in rids]
        if all(r.status is ReservationStatus.CONFIRMED for r in got):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the confirms did not reach Redis")


async def _durable(database_url: str, rids: list[str]) -> list[bool]:
    """Which of ``rids`` have their confirm in the ledger (own connection: not the
    pool the barrier uses)."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        found = await conn.fetch(
            "SELECT reservation_id FROM movements WHERE type = 'confirmed'"
            " AND reservation_id = ANY($1::text[])",
            rids,
        )
    finally:
        await conn.close()
    confirmed = {r["reservation_id"] for r in found}
    return [rid in confirmed for rid in rids]


async def test_confirms_waiting_for_the_ledger_share_a_transaction_acknowledged_after_it(
    redis_url: str, database_url: str, namespace: str
) -> None:
    async with open_stack(redis_url, database_url, namespace) as stack:
        store = CountingStore(stack.store.pool)
        confirms = DurableConfirms(stack.engine, store)
        rids = await _holds(stack, 40)
        async with writer_transaction_in_flight(database_url):
            tasks = [asyncio.create_task(confirms.confirm(rid)) for rid in rids]
            await _confirmed_in_redis(stack, rids)
            await asyncio.sleep(0.1)
            assert not any(t.done() for t in tasks)  # nothing acknowledged before Postgres
            assert await _durable(database_url, rids) == [False] * 40
        done = await asyncio.gather(*tasks)
        assert [r.status for r in done] == [ReservationStatus.CONFIRMED] * 40
        assert await _durable(database_url, rids) == [True] * 40
        # the first confirm's transaction waited on the lock; the other 39 went together
        assert sum(store.groups) == 40 and len(store.groups) <= 3, store.groups


async def test_a_confirm_the_ledger_refuses_fails_alone_and_the_rest_of_its_group_is_acknowledged(
    redis_url: str, database_url: str, namespace: str
) -> None:
    async with open_stack(redis_url, database_url, namespace) as stack:
        rids = await _holds(stack, 10)
        store = CountingStore(stack.store.pool, refuse=rids[5])
        confirms = DurableConfirms(stack.engine, store)
        async with writer_transaction_in_flight(database_url):
            tasks = [asyncio.create_task(confirms.confirm(rid)) for rid in rids]
            await _confirmed_in_redis(stack, rids)
            await asyncio.sleep(0.1)
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        assert [isinstance(a, ValueError) for a in answers] == [i == 5 for i in range(10)]
        assert await _durable(database_url, rids) == [i != 5 for i in range(10)]
        assert len(store.groups) < 10 + 10  # grouped first, then each alone once


class GatedStore(LedgerStore):
    """The real store; a batch holding ``held`` waits for ``gate`` (a slow Postgres),
    and ``entered`` says it has started."""

    def __init__(self, pool: asyncpg.Pool, held: str) -> None:
        super().__init__(pool)
        self.held = held
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def apply(
        self, batch: Batch, *, lock_reservations: bool = False, write_through: bool = False
    ) -> ApplyResult:
        if self.held in batch.created:
            self.entered.set()
            await self.gate.wait()
        return await super().apply(
            batch, lock_reservations=lock_reservations, write_through=write_through
        )


async def test_a_confirm_whose_caller_went_away_is_still_written_and_close_waits_for_it(
    redis_url: str, database_url: str, namespace: str
) -> None:
    async with open_stack(redis_url, database_url, namespace) as stack:
        rids = await _holds(stack, 3)
        store = GatedStore(stack.store.pool, held=rids[1])
        confirms = DurableConfirms(stack.engine, store)
        tasks = [asyncio.create_task(confirms.confirm(rid)) for rid in rids]
        await asyncio.wait_for(store.entered.wait(), 10)  # its write-through has begun
        tasks[1].cancel()  # e.g. the client disconnected
        await asyncio.wait({tasks[1]})
        assert tasks[1].cancelled()
        assert (await _durable(database_url, rids))[1] is False
        asyncio.get_running_loop().call_later(0.2, store.gate.set)
        await confirms.close()  # e.g. the server shutting down
        assert await _durable(database_url, rids) == [True, True, True]
        done = await asyncio.gather(tasks[0], tasks[2])
        assert [r.status for r in done] == [ReservationStatus.CONFIRMED] * 2
