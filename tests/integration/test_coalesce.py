"""Coalesced script calls behave like separate calls (real Redis).

Many concurrent callers share pipelines (fewer pipelines than calls), yet each gets
its own reply or its own error; a function library flushed under load is reloaded and the
calls run exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from onhand.domain import Line, ReserveRequest
from onhand.errors import EngineFault, InsufficientStock, InvalidInput
from tests.integration.support import new_id, open_engine


async def test_concurrent_reserves_share_pipelines_and_each_gets_its_own_answer(
    redis_url: str, namespace: str
) -> None:
    sku, wh = new_id("sku"), new_id("wh")
    async with open_engine(redis_url, namespace, coalesce=True) as engine:
        await engine.receive(sku, wh, 50)
        coalescer = engine._coalescer
        assert coalescer is not None
        before = coalescer.pipelines, coalescer.calls

        async def one(i: int) -> str:
            try:
                await engine.reserve(ReserveRequest(f"r{i}", (Line(sku, 1, (wh,)),), 60_000))
            except InsufficientStock:
                return "short"
            return "held"

        outcomes = await asyncio.gather(*(one(i) for i in range(200)))
        assert outcomes.count("held") == 50 and outcomes.count("short") == 150
        pipelines = coalescer.pipelines - before[0]
        calls = coalescer.calls - before[1]
        assert calls >= 200
        assert pipelines < calls / 4, (pipelines, calls)
        level = await engine.stock_level(sku, wh)
        assert (level.on_hand, level.held) == (50, 50)


async def test_under_heavy_load_full_batches_go_out_beyond_the_eager_pipelines(
    redis_url: str, namespace: str
) -> None:
    sku, wh = new_id("sku"), new_id("wh")
    async with open_engine(redis_url, namespace, coalesce=True) as engine:
        await engine.receive(sku, wh, 1_000)
        coalescer = engine._coalescer
        assert coalescer is not None
        request = ReserveRequest  # 400 callers arrive in one loop turn, before any reply
        await asyncio.gather(
            *(engine.reserve(request(f"h{i}", (Line(sku, 1, (wh,)),), 60_000)) for i in range(400))
        )
        assert coalescer.largest_batch == coalescer.max_batch
        assert coalescer.peak_in_flight == coalescer.max_in_flight > coalescer.eager_in_flight
        assert (await engine.stock_level(sku, wh)).held == 400


async def test_a_lone_call_is_sent_at_once_and_alone(redis_url: str, namespace: str) -> None:
    sku, wh = new_id("sku"), new_id("wh")
    async with open_engine(redis_url, namespace, coalesce=True) as engine:
        await engine.receive(sku, wh, 5)
        coalescer = engine._coalescer
        assert coalescer is not None
        before = coalescer.pipelines
        await engine.reserve(ReserveRequest("lone", (Line(sku, 1, (wh,)),), 60_000))
        assert coalescer.pipelines == before + 1
        assert coalescer.largest_batch == 1 and coalescer.peak_in_flight == 1


async def test_calls_arriving_while_one_is_out_wait_for_it_and_go_together(
    redis_url: str, namespace: str
) -> None:
    sku, wh = new_id("sku"), new_id("wh")
    async with open_engine(redis_url, namespace, coalesce=True) as engine:
        await engine.receive(sku, wh, 10)
        coalescer = engine._coalescer
        assert coalescer is not None
        before = coalescer.pipelines
        await asyncio.gather(
            *(
                engine.reserve(ReserveRequest(f"m{i}", (Line(sku, 1, (wh,)),), 60_000))
                for i in range(6)
            )
        )
        # the first goes at once and alone; the five that came meanwhile, as one batch
        assert coalescer.pipelines == before + 2
        assert coalescer.largest_batch == 5 and coalescer.peak_in_flight == 1


async def test_an_error_in_one_coalesced_call_does_not_touch_its_neighbours(
    redis_url: str, namespace: str
) -> None:
    sku, wh = new_id("sku"), new_id("wh")
    async with open_engine(redis_url, namespace, coalesce=True) as engine:
        results = await asyncio.gather(
            engine.receive(sku, wh, 5),
            engine.run_script("receive", [], ["x"]),  # wrong arity: refused by the script
            engine.receive(sku, wh, 7),
            return_exceptions=True,
        )
        assert not isinstance(results[0], BaseException)
        assert isinstance(results[1], InvalidInput), results[1]
        assert not isinstance(results[2], BaseException)
        assert (await engine.stock_level(sku, wh)).on_hand == 12


async def test_reserves_batched_into_one_call_each_get_their_own_answer_or_error(
    redis_url: str, namespace: str
) -> None:
    sku, bad, wh = new_id("sku"), new_id("sku"), new_id("wh")
    async with open_engine(redis_url, namespace, coalesce=True) as engine:
        await engine.receive(sku, wh, 100)
        await engine.receive(bad, wh, 100)
        coalescer = engine._coalescer
        assert coalescer is not None
        await engine.client.delete(engine.keys.holds(bad))
        await engine.client.set(engine.keys.holds(bad), "not a zset")
        await engine.client.set(engine.keys.reservation("taken"), "not a hash")

        def hold(rid: str, of: str = sku) -> ReserveRequest:
            return ReserveRequest(rid, (Line(of, 1, (wh,)),), 60_000)

        keys, args = engine.reserve_arguments(hold("badarg"))
        args[3] = "0"  # ttl_ms out of range: refused by the script
        calls: list[Coroutine[Any, Any, object]] = [engine.reserve(hold(f"g{i}")) for i in range(8)]
        calls += [
            engine.run_script("reserve", keys, args),
            engine.reserve(hold("wrongtype", bad)),  # the script finds a key of another type
            engine.reserve(hold("taken")),  # Redis fails the call: header of another type
        ]
        calls += [engine.reserve(hold(f"h{i}")) for i in range(8)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert coalescer.batched >= 10, coalescer.batched
        good = results[:8] + results[11:]
        assert not [r for r in good if isinstance(r, BaseException)], good
        assert isinstance(results[8], InvalidInput), results[8]
        assert isinstance(results[9], EngineFault), results[9]
        assert isinstance(results[10], EngineFault), results[10]
        assert (await engine.stock_level(sku, wh)).held == 16
        assert (await engine.stock_level(bad, wh)).held == 0


@pytest.mark.slow
async def test_a_flushed_function_library_is_reloaded_and_each_call_runs_once(
    private_redis: object, namespace: str
) -> None:
    url = private_redis.url  # type: ignore[attr-defined]
    sku, wh = new_id("sku"), new_id("wh")
    async with open_engine(url, namespace, coalesce=True) as engine:
        await engine.receive(sku, wh, 1)
        await engine.client.function_flush()
        await asyncio.gather(*(engine.receive(sku, wh, 1) for _ in range(100)))
        level = await engine.stock_level(sku, wh)
        assert (level.on_hand, level.version) == (101, 101)
