"""Helpers shared by the ledger tests: an engine + store + writer on one namespace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio

from onhand.engine.redis import RedisEngine, connect
from onhand.ledger.migrate import asyncpg_dsn
from onhand.ledger.store import LedgerStore
from onhand.ledger.writer import StreamWriter
from onhand.state import RecordState

PARTITIONS = 4


@dataclass
class Stack:
    engine: RedisEngine
    store: LedgerStore
    client: redis.asyncio.Redis

    def writer(self, **kwargs: Any) -> StreamWriter:
        kwargs.setdefault("burst", True)
        kwargs.setdefault("block_ms", 50)
        kwargs.setdefault("trim_interval_ms", 100)
        return StreamWriter(self.client, self.store, self.engine.keys, **kwargs)

    async def drain(self, **kwargs: Any) -> StreamWriter:
        writer = self.writer(**kwargs)
        await writer.main()
        return writer

    async def pg_levels(self) -> dict[tuple[str, str], RecordState]:
        rows = await self.store.pool.fetch("SELECT * FROM stock_levels")
        return {
            (r["sku"], r["warehouse"]): RecordState(
                r["on_hand"], r["held"], r["committed"], r["safety_stock"], r["version"], r["low"]
            )
            for r in rows
        }

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.store.pool.fetchval(sql, *args)


@asynccontextmanager
async def open_stack(
    redis_url: str,
    database_url: str,
    namespace: str,
    *,
    partitions: int = PARTITIONS,
    stamp: bool = True,
) -> AsyncIterator[Stack]:
    """Engine, store and client on one namespace; ``stamp`` opens every partition."""
    client = connect(redis_url)
    store = LedgerStore(
        await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=4)
    )
    try:
        engine = RedisEngine(client, namespace=namespace, partitions=partitions)
        if stamp:
            await engine.mark_ready(0)
        yield Stack(engine, store, client)
    finally:
        await store.close()
        await client.aclose()
