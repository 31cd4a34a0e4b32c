"""Build the engines the contract suite holds to one specification.

``make_engine("memory", ...)`` is the executable specification; ``make_engine("redis",
...)`` is the real engine (imported lazily, so the memory side runs without it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from onhand.engine.base import DEFAULT_MAX_HOLD_LIFETIME_MS, StockEngine
from onhand.engine.memory import MemoryEngine

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["ENGINE_KINDS", "TEST_PARTITIONS", "make_engine"]

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
    needs ``redis_client`` and a ``namespace`` that the caller cleans up.
    """
    if kind == "memory":
        if clock is None:
            return MemoryEngine(max_hold_lifetime_ms=max_hold_lifetime_ms)
        return MemoryEngine(clock=clock, max_hold_lifetime_ms=max_hold_lifetime_ms)
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
