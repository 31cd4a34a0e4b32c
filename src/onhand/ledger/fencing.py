"""Reopening a fenced Redis: is it safe to trust what it holds?

Every partition of a Redis that restarted (or failed over, or was flushed) is fenced
(see ``lua/_lib.lua``). Redis is *behind* the ledger when, for some partition, the
ledger holds a movement from a stream position Redis has not reached (its stream's
last generated id is lower): it lost or rolled back data, and only a rehydrate may
reopen it. Otherwise nothing the ledger knows is missing, and the partitions are
stamped with a new epoch and reopened.
"""

from __future__ import annotations

import enum
import logging

from redis.exceptions import ResponseError

from onhand.engine.redis import RedisEngine
from onhand.keys import Keys
from onhand.ledger.rows import parse_stream_id
from onhand.ledger.store import LedgerStore

__all__ = ["Verdict", "stream_positions", "verify_and_reopen"]

logger = logging.getLogger(__name__)


class Verdict(enum.StrEnum):
    OPEN = "open"
    REOPENED = "reopened"
    NEEDS_REHYDRATE = "needs-rehydrate"


async def stream_positions(engine: RedisEngine) -> dict[int, tuple[int, int]]:
    """Each partition stream's last generated id (``(0, 0)`` when it does not exist)."""
    keys: Keys = engine.keys
    out: dict[int, tuple[int, int]] = {}
    for p in range(keys.partitions):
        try:
            info = await engine.client.xinfo_stream(keys.stream(p))
        except ResponseError:  # no such key
            out[p] = (0, 0)
            continue
        last = info["last-generated-id"]
        out[p] = parse_stream_id(last.decode() if isinstance(last, bytes) else str(last))
    return out


async def verify_and_reopen(engine: RedisEngine, store: LedgerStore) -> Verdict:
    """Reopen fenced partitions if Redis is not behind the ledger (module docstring)."""
    readiness = await engine.readiness()
    if all(v is not None for v in readiness.values()):
        return Verdict.OPEN
    ledger = await store.max_stream_ids()
    for p, mark in (await store.watermarks()).items():
        ledger[p] = max(ledger.get(p, (0, 0)), mark)
    redis_at = await stream_positions(engine)
    behind = {
        p: (redis_at.get(p, (0, 0)), pos)
        for p, pos in ledger.items()
        if redis_at.get(p, (0, 0)) < pos
    }
    if behind:
        logger.critical(
            "Redis is behind the ledger in %d partitions (e.g. %s): it lost or rolled back "
            "data. It stays fenced; run `onhand rehydrate --force`.",
            len(behind),
            dict(list(behind.items())[:3]),
        )
        return Verdict.NEEDS_REHYDRATE
    run_id = str((await engine.client.info("server"))["run_id"])
    new_deployment = all(pos == (0, 0) for pos in ledger.values())  # nothing recorded yet
    epoch = await store.new_epoch(
        run_id, "first start" if new_deployment else "verified after restart"
    )
    await engine.mark_ready(epoch)
    if new_deployment:
        logger.info("the ledger is empty (a new deployment): Redis opened with epoch %d", epoch)
    else:
        logger.warning("Redis restarted without losing ledger data; reopened with epoch %d", epoch)
    return Verdict.REOPENED
