"""The stream writer against real Redis and Postgres: drain, idempotency, trim, losses."""

from __future__ import annotations

import asyncio

import pytest

from onhand.domain import Line, ReserveRequest, SkuPolicy
from tests.integration.ledger_support import Stack, open_stack
from tests.integration.support import new_id

pytestmark = pytest.mark.postgres


async def _busy(stack: Stack, n: int = 20) -> tuple[str, list[str]]:
    e = stack.engine
    sku, w1, w2 = new_id("s"), new_id("w"), new_id("w")
    await e.set_policy(sku, SkuPolicy(reorder_point=5, backorder_limit=2))
    await e.receive(sku, w1, 100, reference="po-1")
    await e.receive(sku, w2, 50)
    rids = []
    for i in range(n):
        rid = new_id("r")
        rids.append(rid)
        await e.reserve(
            ReserveRequest(rid, (Line(sku, 1 + i % 3, (w1, w2), allow_split=True),), ttl_ms=60_000)
        )
    for rid in rids[: n // 2]:
        await e.confirm(rid)
    for rid in rids[n // 2 : -1][:3]:
        await e.release(rid)
    await e.extend(rids[-1], 120_000)
    await e.fulfill(rids[0])
    await e.adjust(sku, w2, -3, reason="damaged")
    await e.transfer(sku, w1, w2, 4)
    return sku, rids


async def test_the_writer_drains_every_event_once_and_projects_the_redis_levels(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace) as stack:
        await _busy(stack)
        events = await stack.engine.events()
        writer = await stack.drain()
        assert writer.written == len(events)
        assert await stack.fetchval("SELECT count(*) FROM movements") == len(events)
        ids = {e.event_id for e in events}
        stored = {r[0] for r in await stack.store.pool.fetch("SELECT event_id FROM movements")}
        assert stored == ids
        redis_state = await stack.engine.state()
        assert await stack.pg_levels() == redis_state.records
        rows = await stack.store.pool.fetch(
            "SELECT reservation_id, status, deadline_ms FROM reservations"
        )
        assert {r[0]: (r[1], r[2]) for r in rows} == {
            rid: (res.status.value, res.deadline_ms)
            for rid, res in redis_state.reservations.items()
        }
        # the writer is idempotent: a second writer over the same group finds nothing new
        again = await stack.drain()
        assert again.written == 0
        assert await stack.fetchval("SELECT count(*) FROM movements") == len(events)


async def test_redelivered_entries_insert_nothing_twice(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace) as stack:
        await _busy(stack, 5)
        events = await stack.engine.events()
        writer = stack.writer()
        await writer.setup()
        entries = await writer._read(">", block=False)  # delivered, not yet acknowledged
        from onhand.events import Event
        from onhand.ledger.rows import build_batch

        batch = build_batch(
            [(e.partition, e.stream_id, Event.from_fields(e.fields or {})) for e in entries]
        )
        first = await stack.store.apply(batch)
        second = await stack.store.apply(batch)  # a crash between COMMIT and XACK
        assert (first.inserted, second.inserted, second.duplicates) == (len(events), 0, len(events))
        assert second.divergent == ()
        await stack.drain()  # re-reads its own pending entries first, then acknowledges
        assert await stack.fetchval("SELECT count(*) FROM movements") == len(events)
        for stream in stack.engine.keys.all_streams():
            assert (await stack.client.xpending(stream, writer.group))["pending"] == 0


async def test_trimming_never_drops_an_entry_postgres_has_not_committed(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace) as stack:
        await _busy(stack, 10)
        writer = await stack.drain()
        committed = await stack.fetchval("SELECT count(*) FROM movements")
        # the writer is stopped; twice as many events arrive, then trimming runs
        await _busy(stack, 20)
        produced = len(await stack.engine.events())  # only what the streams still hold
        await writer.trim()
        assert len(await stack.engine.events()) == produced  # nothing undrained was trimmed
        final = await stack.drain()
        total = await stack.fetchval("SELECT count(*) FROM movements")
        assert total == committed + final.written
        assert final.lost == 0
        await final.trim()
        left = sum([await stack.client.xlen(s) for s in stack.engine.keys.all_streams()])
        assert left <= stack.engine.keys.partitions  # each keeps at most its watermark entry


async def test_a_maxlen_trim_loses_undelivered_events_which_the_writer_cannot_recover(
    redis_url: str, database_url: str, namespace: str
):
    """Negative control: the hazard the writer's MINID trimming exists to avoid."""
    async with open_stack(redis_url, database_url, namespace, partitions=1) as stack:
        await _busy(stack, 10)
        produced = len(await stack.engine.events())
        stream = stack.engine.keys.stream(0)
        await stack.client.xtrim(stream, maxlen=5, approximate=False)
        writer = await stack.drain()
        assert writer.written == 5 < produced  # the rest is gone, and nothing could know


async def test_entries_trimmed_while_pending_are_counted_as_lost_not_skipped(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace, partitions=1) as stack:
        await _busy(stack, 4)
        produced = len(await stack.engine.events())
        crashed = stack.writer(consumer="crashed")
        await crashed.setup()
        delivered = await crashed._read(">", block=False)  # then it dies without acking
        stream = stack.engine.keys.stream(0)
        await stack.client.xtrim(stream, maxlen=2, approximate=False)  # an operator's mistake
        survivor = await stack.drain(consumer="survivor", claim_idle_ms=1)
        assert len(delivered) == produced
        assert survivor.lost == produced - 2
        assert await stack.fetchval("SELECT count(*) FROM lost_events") == produced - 2
        assert await stack.fetchval("SELECT count(*) FROM movements") == 2


async def test_an_unparsable_entry_goes_to_dead_letters_and_the_rest_commits(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace, partitions=1) as stack:
        await _busy(stack, 3)
        produced = len(await stack.engine.events())
        await stack.client.xadd(stack.engine.keys.stream(0), {"id": "junk", "t": "no-such-type"})
        writer = await stack.drain()
        assert (writer.written, writer.dead_lettered) == (produced, 1)
        row = await stack.store.pool.fetchrow("SELECT fields, error FROM dead_letters")
        assert row is not None and "no-such-type" in row["fields"]


async def test_a_confirm_in_a_later_batch_than_its_reservation_reaches_the_ledger(
    redis_url: str, database_url: str, namespace: str
):
    """A two-partition order: one partition's reserve lands in batch 1, the rest later."""
    from onhand.events import Event
    from onhand.ledger.rows import build_batch

    async with open_stack(redis_url, database_url, namespace) as stack:
        e, keys = stack.engine, stack.engine.keys
        a = new_id("s")
        b = next(
            s for s in (new_id("s") for _ in range(100)) if keys.partition(s) != keys.partition(a)
        )
        wh, rid = new_id("w"), new_id("r")
        for sku in (a, b):
            await e.receive(sku, wh, 5)
        lines = (Line(a, 1, (wh,)), Line(b, 1, (wh,)))
        await e.reserve(ReserveRequest(rid, lines, ttl_ms=60_000))
        await e.confirm(rid)
        writer = stack.writer()
        await writer.setup()
        entries = [
            (x.partition, x.stream_id, Event.from_fields(x.fields or {}))
            for x in await writer._read(">", block=False)
        ]
        first = [x for x in entries if x[0] == keys.partition(a) and x[2].type != "confirmed"]
        await stack.store.apply(build_batch(first))
        await stack.store.apply(build_batch(entries))
        status = await stack.fetchval(
            "SELECT status FROM reservations WHERE reservation_id = $1", rid
        )
        assert status == "confirmed"


async def test_a_burst_writer_takes_over_what_a_crashed_consumer_still_held(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace) as stack:
        await _busy(stack, 5)
        produced = len(await stack.engine.events())
        crashed = stack.writer(consumer="crashed")
        await crashed.setup()
        assert len(await crashed._read(">", block=False)) == produced  # then it dies
        writer = await stack.drain(consumer="after", claim_idle_ms=30_000)
        assert writer.written == produced
        for stream in stack.engine.keys.all_streams():
            assert (await stack.client.xpending(stream, writer.group))["pending"] == 0


async def test_a_schema_problem_pauses_the_writer_instead_of_dead_lettering_events(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace) as stack:
        await _busy(stack, 3)
        produced = len(await stack.engine.events())
        await stack.store.pool.execute("ALTER TABLE stock_levels RENAME TO stock_levels_gone")
        writer = stack.writer(burst=False)
        task = asyncio.create_task(writer.main())
        await asyncio.sleep(1.0)
        assert writer.written == 0 and writer.dead_lettered == 0
        assert writer.metrics.postgres_errors._value.get() > 0
        await stack.store.pool.execute("ALTER TABLE stock_levels_gone RENAME TO stock_levels")
        for _ in range(100):
            if writer.written == produced:
                break
            await asyncio.sleep(0.1)
        writer.close()
        await task
        assert (writer.written, writer.dead_lettered) == (produced, 0)


async def _trickle(stack: Stack, writer_kwargs: dict[str, int], n: int = 20) -> tuple[int, float]:
    """A running writer while ``n`` holds of one SKU (one partition) arrive 20 ms apart:
    the number of batches it committed them in, and how long after the last hold it
    had them all."""
    e = stack.engine
    sku, wh = new_id("s"), new_id("w")
    await e.receive(sku, wh, 1_000)
    writer = stack.writer(burst=False, **writer_kwargs)
    task = asyncio.create_task(writer.main())
    try:
        for _ in range(100):  # the receipt is committed: the writer is running
            if writer.written == 1:
                break
            await asyncio.sleep(0.01)
        before = writer.metrics.batches._value.get()
        for _ in range(n):
            await e.reserve(ReserveRequest(new_id("r"), (Line(sku, 1, (wh,)),), ttl_ms=60_000))
            await asyncio.sleep(0.02)
        last = asyncio.get_running_loop().time()
        for _ in range(300):
            if writer.written == 1 + n:
                break
            await asyncio.sleep(0.01)
        waited = asyncio.get_running_loop().time() - last
        assert writer.written == 1 + n
        return int(writer.metrics.batches._value.get() - before), waited
    finally:
        writer.close()
        await asyncio.wait_for(task, 0.5)  # a stop does not wait out a linger


async def test_a_light_trickle_is_committed_as_it_comes_without_lingering(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace) as stack:
        batches, waited = await _trickle(stack, {"linger_ms": 1_000})  # linger_from 32
        assert batches >= 10
        assert waited < 0.5


async def test_a_busy_stream_is_committed_in_a_few_batches_within_the_linger(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace) as stack:
        batches, waited = await _trickle(stack, {"linger_ms": 1_000, "linger_from": 1})
        assert batches <= 3
        assert waited < 1.0 + 0.5


async def test_a_hot_partition_with_a_backlog_is_read_back_to_back_not_once_per_linger(
    redis_url: str, database_url: str, namespace: str
):
    # One SKU, so one partition stream; each read takes at most batch / streams (10) of
    # its entries. Lingering 1 s after each full read would take 10 s for 101 entries.
    async with open_stack(redis_url, database_url, namespace) as stack:
        e = stack.engine
        sku, wh = new_id("s"), new_id("w")
        await e.receive(sku, wh, 1_000)
        for _ in range(100):
            await e.reserve(ReserveRequest(new_id("r"), (Line(sku, 1, (wh,)),), ttl_ms=60_000))
        streams = len(e.keys.all_streams())
        writer = stack.writer(burst=False, batch=10 * streams, linger_ms=1_000, linger_from=1)
        task = asyncio.create_task(writer.main())
        try:
            started = asyncio.get_running_loop().time()
            for _ in range(500):
                if writer.written == 101:
                    break
                await asyncio.sleep(0.01)
            took = asyncio.get_running_loop().time() - started
        finally:
            writer.close()
            await asyncio.wait_for(task, 1.5)
        assert writer.written == 101
        assert took < 2.0
