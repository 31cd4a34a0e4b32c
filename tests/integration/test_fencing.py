"""Fencing: a Redis that was emptied, restarted or never stamped answers nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio

from onhand.domain import Line, ReserveRequest
from onhand.engine.redis import RedisEngine, connect
from onhand.errors import EngineNotReady
from tests.integration.support import dump_namespace, new_id
from tests.servers import RedisServer


def _order(rid: str, sku: str, wh: str, qty: int = 1) -> ReserveRequest:
    return ReserveRequest(rid, (Line(sku, qty, (wh,)),), ttl_ms=60_000)


async def test_an_unstamped_namespace_refuses_every_operation_and_changes_nothing(
    redis_client: redis.asyncio.Redis, namespace: str
):
    engine = RedisEngine(redis_client, namespace=namespace, partitions=4)
    sku, wh = new_id("s"), new_id("w")
    before = await dump_namespace(redis_client, namespace)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: engine.receive(sku, wh, 5),
        lambda: engine.adjust(sku, wh, 1, reason="found"),
        lambda: engine.set_count(sku, wh, 3, expected_version=0),
        lambda: engine.transfer(sku, wh, new_id("w"), 1),
        lambda: engine.reserve(_order(new_id("r"), sku, wh)),
        lambda: engine.confirm(new_id("r")),
        lambda: engine.release(new_id("r")),
        lambda: engine.expire_due(),
        lambda: engine.stock_level(sku, wh),
        lambda: engine.availability(sku),
        lambda: engine.get_reservation(new_id("r")),
    ]
    for call in calls:
        with pytest.raises(EngineNotReady):
            await call()
    assert await dump_namespace(redis_client, namespace) == before


async def test_fence_closes_and_mark_ready_reopens_every_partition(
    redis_client: redis.asyncio.Redis, namespace: str
):
    engine = RedisEngine(redis_client, namespace=namespace, partitions=4)
    sku, wh = new_id("s"), new_id("w")
    await engine.mark_ready(3)
    await engine.receive(sku, wh, 5)
    await engine.fence()
    assert set((await engine.readiness()).values()) == {None}
    with pytest.raises(EngineNotReady):
        await engine.reserve(_order(new_id("r"), sku, wh))
    with pytest.raises(EngineNotReady):
        await engine.availability(sku)
    run_id = await engine.mark_ready(4)
    assert set((await engine.readiness()).values()) == {f"4:{run_id}"}
    assert (await engine.reserve(_order(new_id("r"), sku, wh))).allocations[0].qty == 1


@pytest.mark.parametrize(
    "private_redis", [("--appendonly", "yes", "--appendfsync", "always")], indirect=True
)
async def test_a_restarted_redis_keeps_its_data_but_is_fenced_until_stamped_again(
    private_redis: RedisServer, namespace: str
):
    sku, wh = new_id("s"), new_id("w")
    client = connect(private_redis.url)
    try:
        engine = RedisEngine(client, namespace=namespace, partitions=4)
        await engine.mark_ready(1)
        await engine.receive(sku, wh, 5)
    finally:
        await client.aclose()
    private_redis.kill()
    private_redis.restart()
    client = connect(private_redis.url)
    try:
        engine = RedisEngine(client, namespace=namespace, partitions=4)
        assert await client.exists(engine.keys.stock(sku, wh))  # the data survived (AOF)...
        # ...and so did the function library, which read the old process's run_id: the
        # new process's library state reads its own.
        library = engine._scripts.library.name
        assert await client.execute_command("FUNCTION", "LIST", "LIBRARYNAME", library)  # type: ignore[no-untyped-call]
        with pytest.raises(EngineNotReady):  # ...but no script trusts it
            await engine.reserve(_order(new_id("r"), sku, wh))
        with pytest.raises(EngineNotReady):
            await engine.stock_level(sku, wh)
        await engine.mark_ready(2)
        assert (await engine.stock_level(sku, wh)).on_hand == 5
    finally:
        await client.aclose()


async def test_confirm_with_events_returns_exactly_the_entries_it_appended(
    redis_client: redis.asyncio.Redis, namespace: str
):
    engine = RedisEngine(redis_client, namespace=namespace, partitions=4)
    await engine.mark_ready(0)
    sku, w1, w2, rid = new_id("s"), new_id("w"), new_id("w"), new_id("r")
    await engine.receive(sku, w1, 2)
    await engine.receive(sku, w2, 2)
    await engine.reserve(
        ReserveRequest(rid, (Line(sku, 3, (w1, w2), allow_split=True),), ttl_ms=60_000)
    )
    confirmation = await engine.confirm_with_events(rid)
    reservation, events = confirmation.reservation, confirmation.events
    assert reservation.status == "confirmed"
    stream = engine.keys.sku_stream(sku)
    raw: Any = await redis_client.xrange(stream, "-", "+")
    entries = {(eid.decode(), f[b"id"].decode()) for eid, f in raw}
    assert {(e.stream_id, e.event.event_id) for e in events} <= entries
    assert sorted(e.event.warehouse for e in events) == sorted([w1, w2])
    assert {e.partition for e in events} == {engine.keys.partition(sku)}
    assert (await engine.confirm_with_events(rid)).events == []  # a repeat appends nothing
