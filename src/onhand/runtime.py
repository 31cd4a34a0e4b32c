"""Composition root for command-line processes: clients built from :class:`Settings`.

Each command opens exactly what it needs through :func:`open_stack` and closes it on
the way out; nothing here runs at import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import Redis

from onhand.engine.redis import RedisEngine, connect
from onhand.ledger.migrate import asyncpg_dsn
from onhand.ledger.store import LedgerStore
from onhand.settings import Settings

__all__ = ["Stack", "engine_for", "open_stack"]


@dataclass
class Stack:
    settings: Settings
    engine: RedisEngine
    store: LedgerStore | None

    def ledger(self) -> LedgerStore:
        if self.store is None:
            raise RuntimeError("this command was opened without Postgres")
        return self.store


def engine_for(settings: Settings, client: Redis, *, coalesce: bool = False) -> RedisEngine:
    """The engine every process builds from its settings (namespace, partitions, …)."""
    return RedisEngine(
        client,
        namespace=settings.namespace,
        partitions=settings.partitions,
        max_hold_lifetime_ms=settings.max_hold_lifetime_ms,
        retention_ms=settings.retention_ms,
        coalesce=coalesce,
    )


@asynccontextmanager
async def open_stack(settings: Settings, *, postgres: bool = True) -> AsyncIterator[Stack]:
    client = connect(settings.require_redis_url(), max_connections=64)
    store = None
    try:
        engine = engine_for(settings, client)
        if postgres:
            store = await LedgerStore.open(asyncpg_dsn(settings.require_database_url()))
        yield Stack(settings, engine, store)
    finally:
        if store is not None:
            await store.close()
        await client.aclose()
