"""The benchmark's headroom in Redis's key tables (loadtests.keyspace), on a private
server whose tables can be inspected (``DEBUG HTSTATS``): after ``ensure`` a run starts
on settled tables, and adding what it was told does not make either of them double."""

from __future__ import annotations

import re

import pytest
import redis.asyncio
from loadtests import bench_keyspace
from loadtests.keyspace import Headroom

from tests.servers import RedisServer

DEBUG = [("--enable-debug-command", "yes")]


async def _tables(client: redis.asyncio.Redis) -> tuple[list[int], bool]:
    """(table sizes of the keys and the TTL tables, whether any is being rehashed).

    Redis only: ``loadtests.keyspace`` models Redis's dict (power-of-two tables, moved
    by incremental rehashing). Valkey 8 and later keep keys in a hashtable of their own
    (``DEBUG HTSTATS`` gives bucket counts and a rehashing index on every table): the
    test's premise does not hold there, so it is skipped (the suite falls back to
    Valkey only where no ``redis-server`` is on PATH)."""
    server = await client.info("server")
    if "valkey_version" in server or server.get("server_name") == "valkey":
        pytest.skip("Valkey's keyspace is not Redis's power-of-two dict (see docstring)")
    text = (await client.execute_command("DEBUG", "HTSTATS", "0")).decode()  # type: ignore[no-untyped-call]
    sizes = [int(n) for n in re.findall(r"table size: (\d+)", text)]
    assert "[Dictionary HT]" in text and len(sizes) >= 2, text
    return sizes, "rehashing" in text


async def _add(client: redis.asyncio.Redis, prefix: str, n: int, *, ttl: bool) -> None:
    script = "for i = 1, tonumber(ARGV[2]) do redis.call('SET', ARGV[1] .. i, 'v'"
    script += ", 'PX', 600000) end" if ttl else ") end"
    await client.eval(script, 0, prefix, n)


@pytest.mark.parametrize("private_redis", DEBUG, indirect=True)
async def test_a_run_after_ensure_starts_on_settled_tables_and_never_doubles_them(
    private_redis: RedisServer,
):
    client = redis.asyncio.Redis.from_url(private_redis.url)
    try:
        await _add(client, "app:plain:", 2_000, ttl=False)
        await _add(client, "app:ttl:", 1_000, ttl=True)  # tables of 4,096 and 1,024
        headroom = Headroom(client, "bench")
        added = await headroom.ensure(6_000, 3_000)
        assert added > 0 and headroom.added == added
        sizes, rehashing = await _tables(client)
        assert not rehashing
        keys, volatile = await headroom.counts()
        assert (keys, volatile) == (3_000 + added, 1_000 + added)
        assert sizes[0] >= keys + 6_000 and sizes[1] >= volatile + 3_000

        await _add(client, "run:plain:", 3_000, ttl=False)
        await _add(client, "run:ttl:", 3_000, ttl=True)  # what the run was allowed
        assert (await _tables(client))[0] == sizes  # no table doubled
    finally:
        await client.aclose()


@pytest.mark.parametrize("private_redis", DEBUG, indirect=True)
async def test_the_filler_lives_in_its_own_namespace_and_expires_by_itself(
    private_redis: RedisServer,
):
    client = redis.asyncio.Redis.from_url(private_redis.url)
    try:
        headroom = Headroom(client, "bench")
        added = await headroom.ensure(100, 0)
        names = [key async for key in client.scan_iter(count=1_000)]
        assert len(names) == added and all(n.startswith(b"bench:fill:") for n in names)
        ttls = {await client.pttl(n) for n in names[:50]}
        assert all(0 < ttl <= 3_600_000 for ttl in ttls)
        assert await headroom.ensure(100, 0) == 0  # room already
    finally:
        await client.aclose()


async def test_the_doubling_benchmark_crosses_each_size_once_then_runs_past_it_settled(
    private_redis: RedisServer,
):
    runs = await bench_keyspace.bench([16, 18], 0.3, url=private_redis.url)
    assert [(r.bits, r.kind) for r in runs] == [
        (16, "doubling"),
        (16, "settled"),
        (18, "doubling"),
        (18, "settled"),
    ]
    for doubling, settled in zip(runs[::2], runs[1::2], strict=True):
        size = 1 << doubling.bits
        assert doubling.keys_before == size - 1_000 < size < doubling.keys_after
        assert settled.keys_before >= doubling.keys_after
        assert doubling.reservations > 0 and settled.reservations > 0
    client = redis.asyncio.Redis.from_url(private_redis.url)
    try:
        assert await client.dbsize() == 0  # its namespaces, the filler's too, are gone
    finally:
        await client.aclose()
