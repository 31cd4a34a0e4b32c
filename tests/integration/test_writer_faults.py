"""The stream writer under faults: kill -9 at random points, death between COMMIT and
XACK, and Postgres unreachable for half a minute while reservations keep flowing.

Every test ends with the same audit: the ledger holds each event the streams ever
carried exactly once, nothing is pending, nothing was lost or dead-lettered, and the
projections (``stock_levels``, reservation statuses) equal what Redis holds.

The random kill schedule is seeded; the seed is printed (``-s``) and can be replayed
with ``FAULT_SEED=<seed>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio
from redis.exceptions import ResponseError

from onhand.domain import Line, ReserveRequest
from onhand.engine.redis import RedisEngine
from onhand.ledger.migrate import asyncpg_dsn
from onhand.ledger.store import LedgerStore
from onhand.ledger.writer import StreamWriter
from tests.integration.ledger_support import PARTITIONS, Stack, open_stack
from tests.integration.support import new_id
from tests.proxy import TcpProxy

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

GROUP = "onhand-ledger"
TTL_MS = 3_600_000  # nothing expires during a test (and no reaper runs)


# -- producing events ------------------------------------------------------------------
async def _stock(engine: RedisEngine, n_skus: int, qty: int = 10**8) -> list[tuple[str, str]]:
    """``n_skus`` SKUs with one stocked warehouse each (one ``received`` event each)."""
    pairs = [(new_id("s"), new_id("w")) for _ in range(n_skus)]
    for start in range(0, n_skus, 50):
        await asyncio.gather(
            *(engine.receive(s, w, qty, reference="po") for s, w in pairs[start : start + 50])
        )
    return pairs


async def _reserve_and_resolve(
    engine: RedisEngine, rng: random.Random, stock: list[tuple[str, str]], lines: int
) -> str:
    """Reserve ``lines`` lines, then confirm (≈60 %), release (≈30 %) or leave it pending.

    Each line is one ``reserved`` event, and one more event when it is resolved.
    """
    rid = new_id("r")
    picked = rng.sample(stock, lines)
    request = ReserveRequest(
        rid, tuple(Line(s, rng.randint(1, 3), (w,)) for s, w in picked), ttl_ms=TTL_MS
    )
    await engine.reserve(request)
    roll = rng.random()
    if roll < 0.6:
        await engine.confirm(rid)
        return "confirmed"
    if roll < 0.9:
        await engine.release(rid)
        return "released"
    return "pending"


async def _reserve_many(
    engine: RedisEngine,
    rng: random.Random,
    stock: list[tuple[str, str]],
    n: int,
    *,
    lines: int = 4,
    concurrency: int = 48,
) -> None:
    for start in range(0, n, concurrency):
        size = min(concurrency, n - start)
        await asyncio.gather(
            *(_reserve_and_resolve(engine, rng, stock, lines) for _ in range(size))
        )


class Load:
    """Reserves and resolves continuously (``workers`` loops) until :meth:`stop`."""

    def __init__(
        self, engine: RedisEngine, stock: list[tuple[str, str]], rng: random.Random
    ) -> None:
        self.engine = engine
        self.stock = stock
        self.rng = rng
        self.reserves = 0
        self.errors: list[BaseException] = []
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, workers: int = 8, pause_s: float = 0.02, limit_s: float = 150) -> None:
        deadline = time.monotonic() + limit_s  # bounded even if the test forgets to stop it
        await asyncio.gather(*(self._worker(deadline, pause_s) for _ in range(workers)))

    async def _worker(self, deadline: float, pause_s: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                await _reserve_and_resolve(self.engine, self.rng, self.stock, 2)
                self.reserves += 1
            except Exception as exc:  # counted and asserted on, never swallowed silently
                self.errors.append(exc)
            await asyncio.sleep(pause_s)


# -- reading Redis ---------------------------------------------------------------------
def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _entries_added(client: redis.asyncio.Redis, streams: list[str]) -> int:
    """How many entries were ever appended to ``streams`` (trimming does not lower it)."""
    total = 0
    for stream in streams:
        with contextlib.suppress(ResponseError):  # no such stream yet
            total += int((await client.xinfo_stream(stream))["entries-added"])
    return total


async def _positions(client: redis.asyncio.Redis, streams: list[str]) -> dict[str, tuple[str, int]]:
    """Per stream: its last generated id and how many entries were ever appended."""
    out = {}
    for stream in streams:
        try:
            info = await client.xinfo_stream(stream)
        except ResponseError:  # no such stream yet
            out[stream] = ("0-0", 0)
            continue
        out[stream] = (_s(info["last-generated-id"]), int(info["entries-added"]))
    return out


async def _entries_between(
    client: redis.asyncio.Redis, start: dict[str, tuple[str, int]], end: dict[str, tuple[str, int]]
) -> list[str]:
    """The event ids of the entries appended between two :func:`_positions`, asserting
    that every one of them is still in its stream (none trimmed)."""
    ids: list[str] = []
    for stream, (first, added_before) in start.items():
        last, added_after = end[stream]
        if added_after == added_before:
            continue
        items = await client.xrange(stream, f"({first}", last) or []
        assert len(items) == added_after - added_before, f"{stream}: entries were trimmed"
        ids.extend(_event_id(fields) for _, fields in items)
    return ids


def _event_id(fields: dict[Any, Any] | None) -> str:
    assert fields is not None, "an entry trimmed while pending"
    return _s(fields[b"id"])


async def _event_ids(client: redis.asyncio.Redis, streams: list[str]) -> list[str]:
    """The event ids (field ``id``) of every entry in ``streams``."""
    ids: list[str] = []
    for stream in streams:
        start = "-"
        while True:
            items = await client.xrange(stream, start, "+", count=10_000) or []
            ids.extend(_event_id(fields) for _, fields in items)
            if len(items) < 10_000:
                break
            start = f"({_s(items[-1][0])}"
    return ids


async def _pending(client: redis.asyncio.Redis, streams: list[str]) -> int:
    total = 0
    for stream in streams:
        with contextlib.suppress(ResponseError):  # no group yet
            total += int((await client.xpending(stream, GROUP))["pending"])
    return total


async def _committed_but_pending(stack: Stack) -> set[tuple[int, int, int]]:
    """Entries still pending in the group whose rows are already committed (a writer
    died between COMMIT and XACK), as (partition, ms, seq)."""
    keys = stack.engine.keys
    parts: list[int] = []
    ms: list[int] = []
    seq: list[int] = []
    for stream in keys.all_streams():
        with contextlib.suppress(ResponseError):
            for row in await stack.client.xpending_range(stream, GROUP, "-", "+", 100_000):
                m, _, q = _s(row["message_id"]).partition("-")
                parts.append(keys.stream_partition(stream))
                ms.append(int(m))
                seq.append(int(q))
    rows = await stack.store.pool.fetch(
        "SELECT m.partition, m.stream_ms, m.stream_seq FROM movements m"
        " JOIN unnest($1::smallint[], $2::bigint[], $3::bigint[]) AS u(p, ms, seq)"
        " ON (m.partition, m.stream_ms, m.stream_seq) = (u.p, u.ms, u.seq)",
        parts,
        ms,
        seq,
    )
    return {(r[0], r[1], r[2]) for r in rows}


# -- the audit -------------------------------------------------------------------------
async def _movements(stack: Stack) -> int:
    return int(await stack.fetchval("SELECT count(*) FROM movements"))


async def _watermark_sum(stack: Stack) -> int:
    """Changes with every commit that carries movements (a row per partition: cheap)."""
    return sum(ms + seq for ms, seq in (await stack.store.watermarks()).values())


async def _assert_ledger_equals_redis(stack: Stack, produced: int) -> None:
    """Every event once, nothing pending, lost or dead-lettered, projections == Redis."""
    row = await stack.store.pool.fetchrow(
        "SELECT count(*), count(DISTINCT event_id) FROM movements"
    )
    assert row is not None and (row[0], row[1]) == (produced, produced)
    assert await _pending(stack.client, stack.engine.keys.all_streams()) == 0
    assert await stack.store.counts() == {"dead_letters": 0, "lost_events": 0}
    redis_state = await stack.engine.state()
    assert await stack.pg_levels() == redis_state.records
    rows = await stack.store.pool.fetch("SELECT reservation_id, status FROM reservations")
    assert {r["reservation_id"]: r["status"] for r in rows} == {
        rid: res.status.value for rid, res in redis_state.reservations.items()
    }


async def _wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = 0.02
) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if await predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval_s)


# -- writer processes ------------------------------------------------------------------
def _writer_env(redis_url: str, database_url: str, namespace: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONHAND_")}
    env.update(
        ONHAND_REDIS_URL=redis_url,
        ONHAND_DATABASE_URL=database_url,
        ONHAND_NAMESPACE=namespace,
        ONHAND_PARTITIONS=str(PARTITIONS),
        ONHAND_WRITER_CLAIM_IDLE_MS="500",
        ONHAND_WRITER_BATCH="500",
        ONHAND_WRITER_BLOCK_MS="100",
        ONHAND_WRITER_TRIM_INTERVAL_MS="200",
    )
    env.update(extra)
    return env


def _open_log(path: Path) -> IO[bytes]:
    return path.open("ab")


async def _spawn_writer(
    consumer: str, env: dict[str, str], log: IO[bytes], *, burst: bool = False
) -> asyncio.subprocess.Process:
    args = [sys.executable, "-m", "onhand", "writer", "--consumer", consumer]
    if burst:
        args.append("--burst")
    log.write(f"\n===== {' '.join(args[1:])}\n".encode())
    log.flush()
    return await asyncio.create_subprocess_exec(
        *args, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
    )


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` if it still runs, and wait for it (bounded)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await asyncio.wait_for(proc.wait(), 10)


async def _kill_at_a_random_point(
    stack: Stack, proc: asyncio.subprocess.Process, rng: random.Random, done: tuple[int, int]
) -> str:
    """SIGKILL ``proc`` at a random point of its run; returns which kind of point.

    ``done``: the movements count and watermark sum once everything is committed (then
    there is no progress left to wait for).
    """
    produced, final_mark = done
    before = await _movements(stack)

    async def committed_since(mark: int) -> bool:
        now = await _watermark_sum(stack)
        return now != mark or now == final_mark or proc.returncode is not None

    async def grew_past(count: int) -> bool:
        now = await _movements(stack)
        return now > count or now >= produced or proc.returncode is not None

    roll = rng.random()
    if roll < 0.2:  # anywhere: start-up, redelivery of its own pending entries, claiming
        mode = "early"
        await asyncio.sleep(rng.uniform(0.3, 1.6))
    elif roll < 0.6:  # right as a COMMIT lands: aims at the COMMIT..XACK window
        mode = "at-commit"
        mark = await _watermark_sum(stack)
        assert await _wait_for(lambda: committed_since(mark), 20, 0), "no progress"
    else:  # after it committed new rows: most likely inside a later batch
        mode = "mid-batch"
        assert await _wait_for(lambda: grew_past(before), 20), "no progress"
        await asyncio.sleep(rng.uniform(0.0, 0.4))
    assert proc.returncode is None, "the writer exited on its own"
    proc.kill()
    returncode = await asyncio.wait_for(proc.wait(), 10)
    assert returncode == -signal.SIGKILL
    return mode


# -- 1. kill -9 ------------------------------------------------------------------------
KILLS = 10


async def test_a_writer_killed_with_sigkill_at_random_points_loses_and_doubles_no_event(
    redis_url: str, database_url: str, namespace: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("FAULT_SEED") or secrets.randbits(32))
    rng = random.Random(seed)  # the kill schedule (the load interleaves: its own generator)
    print(f"\n[kill -9] seed {seed} (replay with FAULT_SEED={seed})")
    started = time.monotonic()
    log_path = tmp_path / "writers.log"
    async with open_stack(redis_url, database_url, namespace) as stack:
        streams = stack.engine.keys.all_streams()
        stock = await _stock(stack.engine, 200)
        await _reserve_many(stack.engine, random.Random(seed + 1), stock, 6_700)
        # Before any writer runs (nothing is trimmed yet): the streams hold every event.
        produced = sum([await stack.client.xlen(s) for s in streams])
        ids = await _event_ids(stack.client, streams)
        assert len(ids) == produced == await _entries_added(stack.client, streams)
        assert len(set(ids)) == produced >= 50_000
        produced_s = time.monotonic() - started
        print(f"[kill -9] {produced} events produced in {produced_s:.1f}s")

        final_mark = 0
        for last, _ in (await _positions(stack.client, streams)).values():
            final_mark += sum(int(part) for part in last.split("-"))
        done = (produced, final_mark)
        # Batches of 250, not 500: twice the commits (so twice the COMMIT..XACK windows)
        # and a drain slow enough that a writer left running for an "early" kill's 1.6 s
        # does not finish the load before half the kills have had a chance.
        env = _writer_env(redis_url, database_url, namespace, ONHAND_WRITER_BATCH="250")
        kills: list[str] = []
        mid_run = window_hits = 0
        unacked_before: set[tuple[int, int, int]] = set()
        consumer, names = "", 0
        log = _open_log(log_path)
        try:
            for i in range(KILLS):
                if i % 2 == 0:  # alternately a new consumer name and the same one again
                    consumer, names = f"killed-{names}", names + 1
                proc = await _spawn_writer(consumer, env, log)
                try:
                    mode = await _kill_at_a_random_point(stack, proc, rng, done)
                finally:
                    await _reap(proc)
                at_kill = await _movements(stack)
                mid_run += at_kill < produced
                unacked = await _committed_but_pending(stack)
                fresh = len(unacked - unacked_before)  # not left over from an earlier kill
                window_hits += fresh > 0
                unacked_before = unacked
                kills.append(
                    f"{consumer}/{mode}: {at_kill}/{produced} committed, "
                    f"{await _pending(stack.client, streams)} pending, of which "
                    f"{len(unacked)} committed but unacknowledged ({fresh} by this kill)"
                )
                print(f"[kill -9] kill {i + 1}: {kills[-1]}")

            # A burst writer only claims entries idle longer than claim_idle_ms (500 ms):
            # younger ones of a dead consumer would be left pending when it returns.
            await asyncio.sleep(0.7)
            final_started = time.monotonic()
            proc = await _spawn_writer("final", env, log, burst=True)
            try:
                await asyncio.wait_for(proc.wait(), 120)
            finally:
                await _reap(proc)
            final_s = time.monotonic() - final_started
        finally:
            log.close()
        assert proc.returncode == 0, log_path.read_text()[-3000:]

        await _assert_ledger_equals_redis(stack, produced)
        stored = {r[0] for r in await stack.store.pool.fetch("SELECT event_id FROM movements")}
        assert stored == set(ids)
        print(
            f"[kill -9] seed {seed}: {produced} events, {len(kills)} kills "
            f"({mid_run} while events were still uncommitted, {window_hits} leaving committed "
            f"entries unacknowledged), final burst {final_s:.1f}s, "
            f"total {time.monotonic() - started:.1f}s"
        )
        assert len(kills) >= 5
        assert mid_run >= 5, f"seed {seed}: the writers finished before enough kills"


# -- 1b. death between COMMIT and XACK, deterministically -------------------------------
class DiedAfterCommit(Exception):
    """Stands for the process dying right after COMMIT, before XACK."""


class DiesBeforeAck(StreamWriter):
    """A writer that dies at its first acknowledgement: the batch is committed, not acked."""

    async def _ack(self, entries: list[Any]) -> None:
        raise DiedAfterCommit(len(entries))


@pytest.mark.parametrize("restart_as", ["same consumer", "new consumer"])
async def test_a_batch_committed_but_never_acknowledged_is_redelivered_and_inserts_nothing_twice(
    redis_url: str, database_url: str, namespace: str, restart_as: str
) -> None:
    rng = random.Random(7)
    async with open_stack(redis_url, database_url, namespace) as stack:
        streams = stack.engine.keys.all_streams()
        stock = await _stock(stack.engine, 40)
        await _reserve_many(stack.engine, rng, stock, 300, lines=3)
        produced = sum([await stack.client.xlen(s) for s in streams])
        ids = set(await _event_ids(stack.client, streams))

        dying = DiesBeforeAck(
            stack.client, stack.store, stack.engine.keys, consumer="dying", batch=100
        )
        with pytest.raises(DiedAfterCommit):
            await dying.main()
        committed = await _movements(stack)
        assert 0 < committed == dying.written < produced
        assert await _pending(stack.client, streams) == committed  # all of them unacknowledged
        assert len(await _committed_but_pending(stack)) == committed

        if restart_as == "new consumer":
            await asyncio.sleep(0.15)  # the dead consumer's entries idle past claim_idle_ms
        fresh = stack.writer(
            consumer="dying" if restart_as == "same consumer" else "fresh", claim_idle_ms=100
        )
        await fresh.main()
        duplicates = fresh.metrics.registry.get_sample_value("onhand_writer_duplicate_events_total")
        assert (fresh.written, duplicates) == (produced - committed, committed)
        await _assert_ledger_equals_redis(stack, produced)
        stored = {r[0] for r in await stack.store.pool.fetch("SELECT event_id FROM movements")}
        assert stored == ids


# -- 2. Postgres unreachable ------------------------------------------------------------
OUTAGE_S = 31.0
WRITER_APP = "onhand-writer-under-test"


async def _writer_backends(admin: asyncpg.Connection, database: str) -> int:
    """Server-side connections of the writer's pool (it sets ``application_name``)."""
    return int(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            database,
            WRITER_APP,
        )
    )


def _describe(task: asyncio.Task[Any]) -> str:
    """Where ``task`` is stuck (its coroutine stack), for a precise failure message."""
    if task.done():
        exc = None if task.cancelled() else task.exception()
        return f"writer task finished: {'cancelled' if task.cancelled() else repr(exc)}"
    frames = task.get_stack(limit=30)
    return "writer task is awaiting:\n" + "\n".join(
        f"  {f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}" for f in frames
    )


async def test_a_postgres_outage_of_thirty_seconds_under_reservation_load_loses_and_doubles_nothing(
    redis_url: str, database_url: str, pg_admin_url: str, namespace: str
) -> None:
    rng = random.Random(20_240_531)
    started = time.monotonic()
    database = urlsplit(database_url).path.lstrip("/")
    async with open_stack(redis_url, database_url, namespace) as stack:
        streams = stack.engine.keys.all_streams()
        stock = await _stock(stack.engine, 50)
        admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
        proxy = TcpProxy.for_url(database_url)
        await proxy.start()
        pool = await asyncpg.create_pool(
            asyncpg_dsn(proxy.url_for(database_url)),
            min_size=1,
            max_size=4,
            server_settings={"application_name": WRITER_APP},
        )
        writer = StreamWriter(
            stack.client,
            LedgerStore(pool),
            stack.engine.keys,
            consumer="outage",
            batch=500,
            block_ms=100,
            claim_idle_ms=500,
            trim_interval_ms=200,
            engine=stack.engine,
        )
        errors = writer.metrics.registry
        writer_task = asyncio.create_task(writer.main())
        load = Load(stack.engine, stock, rng)
        load_task = asyncio.create_task(load.run())
        try:
            # -- normal: the writer keeps up through the proxy
            await asyncio.sleep(3)
            assert await _movements(stack) > 0 and not load.errors
            assert await _writer_backends(admin, database) > 0

            # -- cut: Postgres unreachable, reservations continue
            at_cut = await _positions(stack.client, streams)
            await proxy.cut()
            cut_at = time.monotonic()
            reserves_at_cut = load.reserves
            # the cut closes both sides: no relayed socket left, no server backend left
            assert proxy.connections == 0

            async def no_backends() -> bool:
                return await _writer_backends(admin, database) == 0

            assert await _wait_for(no_backends, 5), "the server still sees the writer"
            pg_errors_at_cut = errors.get_sample_value("onhand_writer_postgres_errors_total")
            committed_at_cut = await _movements(stack)  # nothing can commit from here on
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))

            outage_s = time.monotonic() - cut_at
            assert not load.errors, load.errors[:3]
            reserved_in_outage = load.reserves - reserves_at_cut
            assert reserved_in_outage > 0
            assert await _movements(stack) == committed_at_cut  # the writer committed nothing
            assert await no_backends()
            pg_errors = errors.get_sample_value("onhand_writer_postgres_errors_total")
            assert pg_errors is not None and pg_errors > (pg_errors_at_cut or 0)
            # nothing produced during the outage was trimmed: all of it is still there
            outage_ids = await _entries_between(
                stack.client, at_cut, await _positions(stack.client, streams)
            )
            assert len(outage_ids) > 0
            assert not writer_task.done(), _describe(writer_task)

            # -- restore, stop the load, let the writer catch up
            await proxy.restore()
            restored_at = time.monotonic()
            load.stop()
            await asyncio.wait_for(load_task, 10)
            assert not load.errors, load.errors[:3]
            produced = await _entries_added(stack.client, streams)

            async def resumed() -> bool:
                return await _movements(stack) > committed_at_cut or writer_task.done()

            assert await _wait_for(resumed, 30, 0.01), (
                f"no commit 30 s after restore; {_describe(writer_task)}"
            )
            resume_s = time.monotonic() - restored_at

            async def caught_up() -> bool:
                return await _movements(stack) >= produced or writer_task.done()

            assert await _wait_for(caught_up, 60, 0.1), (
                f"no catch-up 60 s after restore: {await _movements(stack)}/{produced} "
                f"committed; {_describe(writer_task)}"
            )
            assert not writer_task.done(), _describe(writer_task)
            catch_up_s = time.monotonic() - restored_at
            writer.close()
            await asyncio.wait_for(writer_task, 15)
        finally:
            load.stop()
            for task in (load_task, writer_task):
                if not task.done():
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 10)
            await pool.close()
            await proxy.stop()
            await admin.close()

        await _assert_ledger_equals_redis(stack, produced)
        missing = await stack.fetchval(
            "SELECT count(*) FROM unnest($1::text[]) AS u(id)"
            " WHERE NOT EXISTS (SELECT 1 FROM movements m WHERE m.event_id = u.id)",
            outage_ids,
        )
        assert missing == 0
        assert writer.lost == 0 and writer.dead_lettered == 0
        print(
            f"\n[pg outage] {produced} events ({len(outage_ids)} during the outage, from "
            f"{reserved_in_outage} reservations), outage {outage_s:.1f}s, "
            f"{int(pg_errors)} postgres errors; after restore: first commit {resume_s:.1f}s, "
            f"caught up {catch_up_s:.1f}s; "
            f"total {time.monotonic() - started:.1f}s"
        )
