"""The warehouse catalog: Postgres is its record, Redis carries it to every API process.

A change is written to Postgres first (``warehouses``), then at once to Redis: the
whole entry into ``ns:catalog:warehouses`` and a bump of ``ns:catalog:version``, in one
MULTI. Each API process keeps the catalog in memory (reservations need it on every
call to order candidate warehouses) and reloads it when the version moves: it checks
at most every ``refresh_ms`` and right after its own changes. ``publish_all`` copies
Postgres into Redis again (first start, after a rehydrate).
"""

from __future__ import annotations

import json
import time

import asyncpg
from redis.asyncio import Redis

from onhand.allocation import Warehouse, by_priority
from onhand.keys import Keys

__all__ = ["WarehouseCatalog"]

_UPSERT = """
INSERT INTO warehouses (warehouse_id, name, latitude, longitude, priority, active)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (warehouse_id) DO UPDATE SET name = EXCLUDED.name,
    latitude = EXCLUDED.latitude, longitude = EXCLUDED.longitude,
    priority = EXCLUDED.priority, active = EXCLUDED.active, updated_at = now()
"""


def _encode(w: Warehouse) -> str:
    return json.dumps(
        {
            "name": w.name,
            "latitude": w.latitude,
            "longitude": w.longitude,
            "priority": w.priority,
            "active": w.active,
        },
        separators=(",", ":"),
    )


def _decode(wid: str, raw: str) -> Warehouse:
    d = json.loads(raw)
    return Warehouse(wid, d["name"], d["latitude"], d["longitude"], d["priority"], d["active"])


class WarehouseCatalog:
    """Read and change warehouses (see the module docstring)."""

    def __init__(
        self, client: Redis, keys: Keys, pool: asyncpg.Pool | None, *, refresh_ms: int = 1_000
    ) -> None:
        self.client, self.keys, self.pool = client, keys, pool
        self.refresh_ms = refresh_ms
        self._version: bytes | str | None = None
        self._checked = 0.0
        self._warehouses: dict[str, Warehouse] = {}
        self._by_priority: tuple[str, ...] = ()

    async def upsert(self, warehouse: Warehouse) -> Warehouse:
        """Create or replace one warehouse: Postgres, then Redis, then this cache."""
        if self.pool is None:
            raise RuntimeError("the catalog was opened without Postgres")
        w = warehouse
        await self.pool.execute(
            _UPSERT, w.warehouse_id, w.name, w.latitude, w.longitude, w.priority, w.active
        )
        await self._publish({w.warehouse_id: w})
        await self.refresh(force=True)
        return w

    async def publish_all(self) -> int:
        """Copy every warehouse from Postgres into Redis; returns how many."""
        if self.pool is None:
            raise RuntimeError("the catalog was opened without Postgres")
        rows = await self.pool.fetch("SELECT * FROM warehouses")
        found = {
            r["warehouse_id"]: Warehouse(
                r["warehouse_id"],
                r["name"],
                r["latitude"],
                r["longitude"],
                r["priority"],
                r["active"],
            )
            for r in rows
        }
        if found:
            await self._publish(found)
        await self.refresh(force=True)
        return len(found)

    async def _publish(self, warehouses: dict[str, Warehouse]) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.keys.warehouse_catalog(),
                mapping={wid: _encode(w) for wid, w in warehouses.items()},
            )
            pipe.incr(self.keys.catalog_version())
            await pipe.execute()

    async def refresh(self, *, force: bool = False) -> None:
        """Reload from Redis if the catalog version moved (checked every ``refresh_ms``)."""
        now = time.monotonic()
        if not force and now - self._checked < self.refresh_ms / 1000:
            return
        self._checked = now
        version = await self.client.get(self.keys.catalog_version())
        if version == self._version and not force:
            return
        raw = await self.client.hgetall(self.keys.warehouse_catalog())
        self._warehouses = {
            k.decode() if isinstance(k, bytes) else k: _decode(
                k.decode() if isinstance(k, bytes) else k,
                v.decode() if isinstance(v, bytes) else v,
            )
            for k, v in raw.items()
        }
        self._by_priority = by_priority(self._warehouses.values())
        self._version = version

    def get(self, warehouse_id: str) -> Warehouse | None:
        return self._warehouses.get(warehouse_id)

    def by_priority(self) -> tuple[str, ...]:
        """Active warehouse ids by priority (computed once per catalog version)."""
        return self._by_priority

    def all(self) -> list[Warehouse]:
        return sorted(self._warehouses.values(), key=lambda w: w.warehouse_id)
