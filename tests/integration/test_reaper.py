"""The reaper worker against a real Redis: burst mode drains, close() stops the loop."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from onhand.domain import Line, ReservationStatus, ReserveRequest
from onhand.engine.base import ManualClock
from onhand.engine.redis import RedisEngine
from onhand.reaper import Reaper


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_a_burst_reaper_expires_every_overdue_hold_across_batches_and_exits(
    redis_client: Redis, namespace: str
):
    clock = ManualClock()
    engine = RedisEngine(redis_client, namespace=namespace, partitions=4, clock=clock)
    await engine.mark_ready(0)
    sku = _id("sku")
    await engine.receive(sku, "W1", 1_000)
    rids = [_id("r") for _ in range(120)]
    for rid in rids:
        await engine.reserve(ReserveRequest(rid, (Line(sku, 2, ("W1",)),), ttl_ms=1_000))
    assert (await engine.stock_level(sku, "W1")).held == 240

    clock.advance(1_000)  # every deadline is now due (deadline <= now)
    reaper = Reaper(engine, batch=7, burst=True)  # small batches: many passes
    await asyncio.wait_for(reaper.main(), timeout=30)

    assert reaper.expired_total == 120
    level = await engine.stock_level(sku, "W1")
    assert (level.held, level.available) == (0, 1_000)
    for rid in rids[:5]:
        assert (await engine.get_reservation(rid)).status is ReservationStatus.EXPIRED


async def test_a_reaper_leaves_holds_that_are_not_yet_due(redis_client: Redis, namespace: str):
    clock = ManualClock()
    engine = RedisEngine(redis_client, namespace=namespace, partitions=2, clock=clock)
    await engine.mark_ready(0)
    sku, rid = _id("sku"), _id("r")
    await engine.receive(sku, "W1", 5)
    await engine.reserve(ReserveRequest(rid, (Line(sku, 5, ("W1",)),), ttl_ms=1_000))
    clock.advance(999)
    await Reaper(engine, burst=True).main()
    assert (await engine.get_reservation(rid)).status is ReservationStatus.PENDING


async def test_close_stops_a_running_reaper(redis_client: Redis, namespace: str):
    engine = RedisEngine(redis_client, namespace=namespace, partitions=2)
    await engine.mark_ready(0)
    reaper = Reaper(engine, interval_ms=20)
    task = asyncio.create_task(reaper.main())
    await asyncio.sleep(0.1)
    reaper.close()
    await asyncio.wait_for(task, timeout=5)
    assert reaper.errors_total == 0
