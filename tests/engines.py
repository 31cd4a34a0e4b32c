"""Build the engines the contract suite holds to one specification.

``make_engine("memory", ...)`` is the executable specification; ``make_engine("redis",
...)`` is the real engine (imported lazily, so the memory side runs without it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from onhand.engine.base import DEFAULT_MAX_HOLD_LIFETIME_MS, StockEngine
from onhand.engine.memory import MemoryEngine
from onhand.keys import Keys

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["ENGINE_KINDS", "TEST_PARTITIONS", "make_engine", "make_ready"]

ENGINE_KINDS = ("memory", "redis")
TEST_PARTITIONS = 8


def make_engine(
    kind: str,
    *,
    clock: Callable[[], int] | None = None,
    redis_client: redis.asyncio.Redis | None = None,
    namespace: str | None = None,
    max_hold_lifetime_ms: int = DEFAULT_MAX_HOLD_LIFETIME_MS,
) -> StockEngine:
    """A fresh engine of ``kind`` ("memory" or "redis").

    ``clock=None`` means the wall clock (memory) or the Redis server's ``TIME`` (redis);
    tests pass one shared :class:`~onhand.engine.base.ManualClock`. The Redis engine
    needs ``redis_client`` and a ``namespace`` that the caller cleans up; a memory
    engine given the same ``namespace`` orders simultaneous expiries like it.
    """
    if kind == "memory":
        # With a namespace, simultaneous expiries run in the Redis layout's order (see
        # MemoryEngine's ``keys``), so a memory twin emits exactly the Redis events.
        keys = None if namespace is None else Keys(namespace, TEST_PARTITIONS)
        if clock is None:
            return MemoryEngine(max_hold_lifetime_ms=max_hold_lifetime_ms, keys=keys)
        return MemoryEngine(clock=clock, max_hold_lifetime_ms=max_hold_lifetime_ms, keys=keys)
    if kind == "redis":
        if redis_client is None or namespace is None:
            raise ValueError("a redis engine needs redis_client and namespace")
        from onhand.engine.redis import RedisEngine  # lazily: optional for memory runs

        return RedisEngine(
            redis_client,
            namespace=namespace,
            partitions=TEST_PARTITIONS,
            clock=clock,
            max_hold_lifetime_ms=max_hold_lifetime_ms,
        )
    raise ValueError(f"unknown engine kind {kind!r}; expected one of {ENGINE_KINDS}")


async def make_ready(engine: StockEngine) -> StockEngine:
    """Open every partition of a Redis engine (in production the ledger's recovery does
    this after checking Redis); a memory engine is always ready. Returns ``engine``."""
    mark_ready = getattr(engine, "mark_ready", None)
    if mark_ready is not None:
        await mark_ready(0)
    return engine
