"""Helpers shared by the integration tests: real Redis only, no fakes, no mocks."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio

from onhand.engine.redis import RedisEngine, connect
from onhand.events import Event, EventType
from onhand.state import State

__all__ = [
    "PARTITIONS",
    "KeyDump",
    "dump_namespace",
    "events_by_reservation",
    "new_id",
    "open_engine",
    "redis_clock_offset_ms",
    "redis_ms",
    "replayed_state",
]

PARTITIONS = 8

KeyDump = dict[bytes, tuple[str, bool, object]]
"""key -> (TYPE, has a TTL, content): every key of a namespace, value for value."""


def new_id(prefix: str) -> str:
    """A random allow-listed id (``[A-Za-z0-9._-]``) no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def open_engine(
    url: str,
    namespace: str,
    *,
    max_connections: int = 64,
    socket_timeout: float | None = None,
    coalesce: bool = False,
) -> AsyncIterator[RedisEngine]:
    """A :class:`RedisEngine` on its own client built by :func:`connect`; closed afterwards."""
    client = connect(url, max_connections=max_connections, socket_timeout=socket_timeout)
    try:
        engine = RedisEngine(client, namespace=namespace, partitions=PARTITIONS, coalesce=coalesce)
        await engine.mark_ready(0)
        yield engine
    finally:
        await client.aclose()


async def redis_ms(client: redis.asyncio.Redis) -> int:
    """The server clock (``TIME``) in milliseconds, as the scripts compute it."""
    seconds, micros = await client.time()
    return seconds * 1000 + micros // 1000


async def redis_clock_offset_ms(client: redis.asyncio.Redis) -> float:
    """Redis ``TIME`` minus the local wall clock (ms), corrected for half the round trip."""
    best: tuple[float, float] | None = None
    for _ in range(5):
        before = time.time() * 1000
        server = await redis_ms(client)
        after = time.time() * 1000
        if best is None or after - before < best[0]:
            best = (after - before, server - (before + after) / 2)
    assert best is not None
    return best[1]


async def dump_namespace(client: redis.asyncio.Redis, namespace: str) -> KeyDump:
    """TYPE, content and TTL-or-not of every key of the namespace, to prove nothing changed.

    Content is read per type (HGETALL, SMEMBERS, ZRANGE, XRANGE, GET, LRANGE) rather
    than with DUMP: a hashtable-encoded hash may DUMP its fields in another order after
    a mere read (incremental rehashing), although nothing changed.
    """
    keys = sorted([k async for k in client.scan_iter(match=f"{namespace}:*", count=1000)])
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.type(key)
            pipe.pttl(key)
        meta = await pipe.execute()
    types = [t.decode() if isinstance(t, bytes) else str(t) for t in meta[::2]]
    async with client.pipeline(transaction=False) as pipe:
        for key, kind in zip(keys, types, strict=True):
            if kind == "hash":
                pipe.hgetall(key)
            elif kind == "set":
                pipe.smembers(key)
            elif kind == "zset":
                pipe.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                pipe.xrange(key)
            elif kind == "list":
                pipe.lrange(key, 0, -1)
            else:
                pipe.get(key)
        contents = await pipe.execute()
    return {
        key: (kind, meta[2 * i + 1] >= 0, contents[i])
        for i, (key, kind) in enumerate(zip(keys, types, strict=True))
    }


async def replayed_state(engine: RedisEngine) -> State:
    """The state rebuilt by folding every event of the engine, from empty."""
    state = State()
    for event in await engine.events():
        state.apply(event)
    return state.canonical()


def events_by_reservation(events: list[Event]) -> dict[str, dict[EventType, list[Event]]]:
    """Events that name a reservation, grouped by reservation id and then by type."""
    out: dict[str, dict[EventType, list[Event]]] = {}
    for event in events:
        if event.reservation_id:
            out.setdefault(event.reservation_id, {}).setdefault(event.type, []).append(event)
    return out
