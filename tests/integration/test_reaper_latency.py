"""How late a reaper that runs every 100 ms returns the stock of expired holds."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

from onhand.domain import Line, ReserveRequest
from onhand.engine.redis import RedisEngine
from onhand.events import EventType
from tests.integration.support import new_id, open_engine

PRODUCE_S = 8.0  # holds are created for this long
REAP_EVERY_S = 0.1


async def _reaper(engine: RedisEngine, stop: asyncio.Event) -> int:
    """``expire_due()`` every 100 ms (start to start) until told to stop."""
    total = 0
    while not stop.is_set():
        started = time.monotonic()
        total += await engine.expire_due()
        await asyncio.sleep(max(0.0, REAP_EVERY_S - (time.monotonic() - started)))
    return total


async def _short_holds(
    engine: RedisEngine, skus: list[str], whs: list[str], deadlines: dict[str, int]
) -> None:
    """Holds with 100-500 ms TTLs, about 50 a second per producer, never released."""
    rng = random.Random()
    end = time.monotonic() + PRODUCE_S
    while time.monotonic() < end:
        rid = new_id("short")
        line = Line(rng.choice(skus), rng.randint(1, 3), tuple(rng.sample(whs, 2)))
        res = await engine.reserve(ReserveRequest(rid, (line,), rng.randint(100, 500)))
        deadlines[rid] = res.deadline_ms
        await asyncio.sleep(rng.uniform(0.005, 0.035))


async def _other_traffic(engine: RedisEngine, skus: list[str], whs: list[str]) -> int:
    """Long holds that are confirmed or released by their owners: the rest of checkout."""
    rng, done = random.Random(), 0
    end = time.monotonic() + PRODUCE_S
    while time.monotonic() < end:
        rid = new_id("long")
        lines = tuple(Line(sku, 1, (rng.choice(whs),)) for sku in rng.sample(skus, 2))
        await engine.reserve(ReserveRequest(rid, lines, 60_000))
        await (engine.confirm if rng.random() < 0.5 else engine.release)(rid)
        done += 1
        await asyncio.sleep(rng.uniform(0, 0.01))
    return done


async def test_a_reaper_every_100_ms_returns_expired_stock_within_a_second_at_p99(
    redis_url: str, namespace: str
) -> None:
    skus, whs = [new_id("sku") for _ in range(3)], [new_id("wh") for _ in range(3)]
    async with open_engine(redis_url, namespace) as engine:
        for sku in skus:
            for wh in whs:
                await engine.receive(sku, wh, 1_000_000)
        deadlines: dict[str, int] = {}
        stop = asyncio.Event()
        reaper = asyncio.create_task(_reaper(engine, stop))
        _, others = await asyncio.gather(
            asyncio.gather(*(_short_holds(engine, skus, whs, deadlines) for _ in range(4))),
            asyncio.gather(*(_other_traffic(engine, skus, whs) for _ in range(2))),
        )
        await asyncio.sleep(0.5 + 2 * REAP_EVERY_S)  # the last TTL plus two reaper rounds
        stop.set()
        reaped = await reaper

        expired = {
            e.reservation_id: e.at_ms for e in await engine.events() if e.type is EventType.EXPIRED
        }
        assert set(expired) == set(deadlines), "every short hold expired, nothing else did"
        assert reaped == len(deadlines)
        lateness = sorted(expired[rid] - deadline for rid, deadline in deadlines.items())
        assert lateness[0] >= 0, "a hold expired before its deadline"
        p50, p99 = statistics.median(lateness), lateness[int(0.99 * (len(lateness) - 1))]
        print(
            f"\nreaper lateness over {len(lateness)} holds (Redis TIME, ms): "
            f"p50={p50:.0f} p99={p99} max={lateness[-1]}; other checkouts: {sum(others)}"
        )
        assert len(lateness) > 500
        assert p99 < 1000
        for sku in skus:
            availability = await engine.availability(sku)
            assert availability.held == 0
