"""Benchmarks of the durable ledger: drain rate, lag under load, rehydrate at scale.

    python -m loadtests.bench_ledger [--quick] [--json FILE]
                                     [--only drain|hot|tx|lag|confirm|rehydrate]

Needs a Redis and a PostgreSQL (``ONHAND_BENCH_REDIS_URL``,
``ONHAND_BENCH_PG_ADMIN_URL``; defaults: the local servers). Works in its own Redis
namespace and its own database, both removed afterwards. Every figure is printed
next to its baseline from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import redis.asyncio

from loadtests.common import (
    REDIS_URL,
    Report,
    cpu_yardstick_ms,
    delete_namespace,
    fixed_and_per_unit,
    machine,
    percentile,
    scratch_database,
)
from onhand.domain import Line, ReserveRequest
from onhand.engine.base import ManualClock
from onhand.engine.memory import MemoryEngine
from onhand.engine.redis import RedisEngine, connect
from onhand.errors import InsufficientStock
from onhand.keys import Keys
from onhand.ledger.barrier import DurableConfirms
from onhand.ledger.migrate import asyncpg_dsn
from onhand.ledger.rows import MOVEMENT_COLUMNS, build_batch, parse_stream_id
from onhand.ledger.store import LedgerStore
from onhand.ledger.writer import StreamWriter
from onhand.settings import Settings

PARTITIONS = 16


async def _synthetic_events(
    n_events: int, keys: Keys, n_skus: int = 2_000, tag: str = ""
) -> list[tuple[str, dict[str, str]]]:
    """Realistic events from the reference engine: receipts, holds, confirms, expiries
    (of ``n_skus`` SKUs: with one, every event is in that SKU's partition stream). The
    same ``tag`` gives the same events; another tag, other SKU and reservation ids."""
    clock = ManualClock()
    mem = MemoryEngine(clock=clock)
    rng = random.Random(7)
    skus = [f"{tag}S{i}" for i in range(n_skus)]
    whs = ("W1", "W2", "W3")
    for sku in skus:
        for wh in whs:
            await mem.receive(sku, wh, 1_000_000)
    n = 0
    while len(mem._log) < n_events:
        n += 1
        rid = f"{tag}r{n}"
        sku = rng.choice(skus)
        await mem.reserve(ReserveRequest(rid, (Line(sku, rng.randint(1, 3), whs, True),), 60_000))
        roll = rng.random()
        if roll < 0.6:
            await mem.confirm(rid)
        elif roll < 0.8:
            await mem.release(rid)
        clock.advance(1)
    out = []
    for e in mem._log[:n_events]:
        out.append((keys.sku_stream(e.sku), e.to_fields()))
    return out


async def _fill_streams(
    client: redis.asyncio.Redis, events: list[tuple[str, dict[str, str]]]
) -> None:
    for start in range(0, len(events), 5_000):
        async with client.pipeline(transaction=False) as pipe:
            for stream, fields in events[start : start + 5_000]:
                pipe.xadd(stream, dict(fields))  # type: ignore[arg-type]
            await pipe.execute()


WRITER_BATCH: int = Settings.model_fields["writer_batch"].default
"""The batch ``onhand writer`` reads by default (``ONHAND_WRITER_BATCH``)."""


@asynccontextmanager
async def _scratch_ledger() -> AsyncIterator[tuple[Keys, redis.asyncio.Redis, LedgerStore, str]]:
    """(keys, client, store, database URL) of a new namespace and scratch database, the
    store with every connection open from the start (their backends' CPU is read around
    a drain: :func:`_backends_cpu_s`); all removed afterwards."""
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    client = connect(REDIS_URL)
    try:
        async with scratch_database() as db:
            store = await LedgerStore.open(asyncpg_dsn(db), min_size=4, max_size=4)
            try:
                yield Keys(namespace, PARTITIONS), client, store, db
            finally:
                await store.close()
    finally:
        await client.aclose()
        delete_namespace(namespace)


async def bench_drain(report: Report, n_events: int, batch: int = WRITER_BATCH) -> None:
    """Drain ``n_events`` with the writer (``batch``: its largest read, by default what
    ``onhand writer`` uses), then the bare insert of the same rows in chunks of
    ``batch`` (the baseline)."""
    async with _scratch_ledger() as (keys, client, store, db):
        events = await _synthetic_events(n_events, keys)
        await _fill_streams(client, events)
        baseline, baseline_cpu_s = await _baseline(db, keys, events, batch)
        # In production the writer is its own process (`onhand writer`): do not let
        # the harness's 50,000+ parsed events stay alive for the writer's garbage
        # collections to walk.
        del events
        gc.collect()
        writer = StreamWriter(client, store, keys, batch=batch, burst=True, block_ms=10)
        backends = await _backend_pids(store)
        backends_before = _backends_cpu_s(backends)
        process_before = time.process_time()
        started = time.perf_counter()
        await writer.run()  # as `onhand writer` runs it (its GC settings too)
        elapsed = time.perf_counter() - started
        writer_cpu_s = time.process_time() - process_before
        writer_cpu_s += _backends_cpu_s(backends) - backends_before
        rate = writer.written / elapsed
        report.add(
            f"writer drain rate (stream → Postgres, with projections; batch {batch:,})",
            rate,
            "events/s",
            "≥ 50,000",
            rate >= 50_000,
        )
        report.add("baseline: bare COPY + INSERT ON CONFLICT of the same rows", baseline, "rows/s")
        report.add("writer / baseline", 100 * rate / baseline, "%")
        # Steadier than the rates on a shared box: what each costs, not what it got.
        per_10k = 10_000 / n_events * 1000
        report.add(
            "writer CPU per 10,000 events (its process + Postgres backends)",
            writer_cpu_s * per_10k,
            "ms",
        )
        report.add("baseline CPU per 10,000 rows (same)", baseline_cpu_s * per_10k, "ms")
        report.add("writer CPU / baseline CPU", writer_cpu_s / baseline_cpu_s, "x")
        assert writer.written == n_events, (writer.written, n_events)


async def _running_drain(n_events: int, n_skus: int) -> float:
    """Events/s at which a running writer (``main``, not burst: it lingers under load
    as deployed) with the default settings persists ``n_events`` already in the
    streams, of ``n_skus`` SKUs."""
    async with _scratch_ledger() as (keys, client, store, _):
        await _fill_streams(client, await _synthetic_events(n_events, keys, n_skus))
        gc.collect()
        writer = StreamWriter(client, store, keys)
        started = time.perf_counter()
        task = asyncio.create_task(writer.main())
        while writer.written < n_events:  # polled: the writer has no event for it
            if task.done():
                break
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        writer.close()
        await task
        assert writer.written == n_events, (writer.written, n_events)
        return n_events / elapsed


async def bench_hot_partition(report: Report, n_events: int) -> None:
    """A sale of one SKU puts every event in one partition stream: how fast a running
    writer drains that, next to the same number of events spread over all partitions."""
    hot = await _running_drain(n_events, 1)
    spread = await _running_drain(n_events, 2_000)
    report.add(
        "running writer, defaults: one hot partition drained at",
        hot,
        "events/s",
        note="10,000 orders/s of one SKU, each confirmed, are 20,000 events/s in one stream",
    )
    report.add(
        f"baseline: the same {n_events:,} events over {PARTITIONS} partitions", spread, "events/s"
    )
    report.add("one partition / spread", hot / spread, "x")


TX_SIZES = (100, 300, 1_000, 3_000)
"""Events per writer transaction measured by :func:`bench_per_transaction`; under the
default linger a busy stream commits a few hundred per transaction."""


def split_per_transaction(samples: dict[int, list[float]]) -> tuple[float, float]:
    """Least-squares ``CPU per transaction = fixed + per_event * events`` over
    ``samples`` (events per transaction -> CPU µs per event, one value per round; at
    least two sizes): ``(fixed ms per transaction, µs per event)``."""
    fixed_us, per_event = fixed_and_per_unit(
        [(n, us) for n, values in samples.items() for us in values]
    )
    return fixed_us / 1000, per_event


async def bench_per_transaction(report: Report, n_events: int, rounds: int) -> None:
    """The ledger's CPU per event (the writer's process and its Postgres backends) by
    events per transaction, for a sale of one SKU (every event in one partition
    stream, as in ``loadtests.bench`` (c)). Each size drains ``n_events`` new events in
    transactions of that size (the writer's read of one stream); sizes alternate
    order over ``rounds``; the largest is the baseline. The split into a part per
    transaction and a part per event says what a longer writer linger could save."""
    parts: dict[int, list[tuple[float, float]]] = {n: [] for n in TX_SIZES}  # (writer, pg)
    async with _scratch_ledger() as (keys, client, store, _):
        backends = await _backend_pids(store)
        for rnd in range(rounds):
            for n in TX_SIZES if rnd % 2 == 0 else TX_SIZES[::-1]:
                events = await _synthetic_events(n_events, keys, 1, tag=f"r{rnd}n{n}")
                await _fill_streams(client, events)
                del events
                gc.collect()
                # batch / streams entries of each stream per read: n per transaction
                writer = StreamWriter(
                    client, store, keys, batch=n * PARTITIONS, burst=True, block_ms=10
                )
                pg_before, py_before = _backends_cpu_s(backends), time.process_time()
                await writer.run()
                py_us = (time.process_time() - py_before) / n_events * 1e6
                pg_us = (_backends_cpu_s(backends) - pg_before) / n_events * 1e6
                assert writer.written == n_events, (writer.written, n_events)
                parts[n].append((py_us, pg_us))
    samples = {n: [py + pg for py, pg in values] for n, values in parts.items()}
    base_n = TX_SIZES[-1]
    base = statistics.median(samples[base_n])
    for n in TX_SIZES:
        us = statistics.median(samples[n])
        py = statistics.median(p for p, _ in parts[n])
        pg = statistics.median(g for _, g in parts[n])
        report.add(
            f"ledger CPU per event, {n:,} events per transaction (one SKU)",
            us,
            "µs",
            note=f"{us / base:.2f} x {base_n:,} per transaction; writer {py:.1f} + "
            f"Postgres {pg:.1f} µs; median of {rounds}",
        )
    fixed_ms, per_event_us = split_per_transaction(samples)
    linger_ms = Settings.model_fields["writer_linger_ms"].default
    at_target = 10_000 * linger_ms // 1000  # events per transaction at 10,000/s
    report.add(
        "ledger CPU per transaction (least-squares split)",
        fixed_ms,
        "ms",
        note=f"+ {per_event_us:.1f} µs per event; at 10,000 events/s and the default "
        f"{linger_ms} ms linger ({at_target:,} per transaction) the fixed part is "
        f"{fixed_ms * 1000 / at_target:.1f} µs per event",
    )


async def _backend_pids(store: LedgerStore) -> list[int]:
    """The pids of the Postgres backends serving the scratch database (the store's
    connections, all open from the start: :func:`_scratch_ledger`)."""
    rows = await store.pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    )
    return [r[0] for r in rows]


def _backends_cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the Postgres backends ``pids`` have used so far, read
    from ``/proc``; NaN when Postgres runs elsewhere (another host or container)."""
    ticks = 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return float("nan")
    return ticks / os.sysconf("SC_CLK_TCK")


async def _baseline(
    db: str, keys: Keys, events: list[tuple[str, dict[str, str]]], chunk: int
) -> tuple[float, float]:
    """The bare ledger insert (COPY to staging + INSERT … ON CONFLICT) of the same rows:
    no Redis reads, no projections. Rows per second, and CPU seconds (this process and
    the connection's backend)."""
    from onhand.events import Event

    entries = [
        (keys.stream_partition(stream), f"{i + 1}-0", Event.from_fields(fields))
        for i, (stream, fields) in enumerate(events)
    ]
    rows = build_batch(entries).movements
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        await conn.execute(
            "CREATE TEMP TABLE base AS SELECT * FROM movements WITH NO DATA;"
            "CREATE TEMP TABLE base_target (LIKE movements INCLUDING ALL)"
        )
        backend = [conn.get_server_pid()]
        backend_before = _backends_cpu_s(backend)
        process_before = time.process_time()
        started = time.perf_counter()
        for s in range(0, len(rows), chunk):
            async with conn.transaction():
                await conn.execute("TRUNCATE base")
                await conn.copy_records_to_table(
                    "base", records=rows[s : s + chunk], columns=MOVEMENT_COLUMNS
                )
                cols = ", ".join(MOVEMENT_COLUMNS)
                await conn.execute(
                    f"INSERT INTO base_target ({cols}) SELECT {cols} FROM base"
                    " ON CONFLICT (event_id) DO NOTHING"
                )
        rate = len(rows) / (time.perf_counter() - started)
        cpu_s = time.process_time() - process_before
        return rate, cpu_s + _backends_cpu_s(backend) - backend_before
    finally:
        await conn.close()


@asynccontextmanager
async def _ledger_under_load(
    concurrency: int, pool_size: int
) -> AsyncIterator[tuple[RedisEngine, LedgerStore, redis.asyncio.Redis, list[str]]]:
    """A namespace with 1,000 SKUs of ample stock, a scratch database, and ``onhand
    writer`` draining them as its own process (as deployed), entered once the writer
    has committed the set-up's receipts (a measurement starts with a running writer,
    not with its start-up); removed afterwards."""
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    client = connect(REDIS_URL, max_connections=concurrency + 8)
    try:
        async with scratch_database() as db:
            store = await LedgerStore.open(asyncpg_dsn(db), max_size=pool_size)
            engine = RedisEngine(client, namespace=namespace, partitions=PARTITIONS)
            await engine.mark_ready(0)
            skus = [f"S{i}" for i in range(1_000)]
            for sku in skus:
                await engine.receive(sku, "W1", 10_000_000)
            env = {
                **os.environ,
                "ONHAND_REDIS_URL": REDIS_URL,
                "ONHAND_DATABASE_URL": db,
                "ONHAND_NAMESPACE": namespace,
                "ONHAND_PARTITIONS": str(PARTITIONS),
                "ONHAND_WRITER_BLOCK_MS": "50",
                "ONHAND_WRITER_TRIM_INTERVAL_MS": "500",
            }
            writer = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "onhand",
                "writer",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await _writer_caught_up(client, store, engine.keys, writer)
                yield engine, store, client, skus
            finally:
                writer.terminate()
                await writer.wait()
                await store.close()
    finally:
        await client.aclose()
        delete_namespace(namespace)


async def _writer_caught_up(
    client: redis.asyncio.Redis,
    store: LedgerStore,
    keys: Keys,
    writer: asyncio.subprocess.Process,
    timeout_s: float = 120.0,
) -> None:
    """Wait until ``writer`` has committed everything in the streams (lag 0)."""
    deadline = time.monotonic() + timeout_s
    while await _lag_seconds(client, store, keys) > 0:
        if writer.returncode is not None:
            raise RuntimeError(f"onhand writer exited ({writer.returncode}) while starting")
        if time.monotonic() > deadline:
            raise TimeoutError(f"onhand writer did not catch up within {timeout_s:.0f} s")
        await asyncio.sleep(0.05)


async def bench_lag(report: Report, seconds: float, concurrency: int) -> None:
    """Writer lag while reserve + confirm load runs: the writer is its own process, as
    deployed (``onhand writer``); the load runs here."""
    async with _ledger_under_load(concurrency, pool_size=2) as (engine, store, client, skus):
        stop = time.monotonic() + seconds
        done = 0
        rng = random.Random(3)

        async def load() -> None:
            nonlocal done
            while time.monotonic() < stop:
                rid = uuid.uuid4().hex
                line = Line(rng.choice(skus), 1, ("W1",))
                try:
                    await engine.reserve(ReserveRequest(rid, (line,), 60_000))
                    await engine.confirm(rid)
                except InsufficientStock:
                    pass
                done += 1

        lags: list[float] = []

        async def sample() -> None:
            await asyncio.sleep(1.0)  # let the load reach its pace
            while time.monotonic() < stop:
                lags.append(await _lag_seconds(client, store, engine.keys))
                await asyncio.sleep(0.1)

        started = time.perf_counter()
        await asyncio.gather(sample(), *(load() for _ in range(concurrency)))
        rate = done / (time.perf_counter() - started)
    report.add("sustained load during the lag run (reserve + confirm)", rate, "orders/s")
    report.add("writer lag p50", percentile(lags, 50) * 1000, "ms")
    report.add(
        "writer lag p99",
        percentile(lags, 99) * 1000,
        "ms",
        "< 1,000 ms",
        percentile(lags, 99) < 1.0,
    )
    report.add("writer lag max", max(lags) * 1000, "ms")


async def bench_confirms(report: Report, seconds: float, concurrency: int) -> None:
    """Orders (reserve, then confirm) per second through the durable confirm barrier
    (``DurableConfirms``, as the API confirms), next to two baselines in the same run:
    the Redis-only ``engine.confirm`` (the ceiling: no Postgres on the confirm's path)
    and the barrier writing one confirm per transaction (``max_group=1``, how it wrote
    before group commit). ``concurrency`` callers; the writer drains alongside. Then
    one caller, Redis only and through the barrier: what a confirm costs a checkout
    when nothing waits (a lone confirm is written at once, so ``max_group`` plays no
    part). Each mode runs twice, alternated; the figures are over both runs."""
    async with _ledger_under_load(concurrency, pool_size=4) as (engine, store, _, skus):
        redis_only = "Redis only (engine.confirm)"
        shipped = "barrier, group commit (as shipped)"
        modes: dict[str, Callable[[str], Awaitable[object]]] = {
            redis_only: engine.confirm,
            "barrier, one confirm per transaction": DurableConfirms(
                engine, store, max_group=1
            ).confirm,
            shipped: DurableConfirms(engine, store).confirm,
        }
        rng = random.Random(5)

        async def load(confirm: Callable[[str], Awaitable[object]], lat: list[float]) -> None:
            while time.monotonic() < stop:
                rid = uuid.uuid4().hex
                line = Line(rng.choice(skus), 1, ("W1",))
                await engine.reserve(ReserveRequest(rid, (line,), 60_000))
                began = time.perf_counter()
                await confirm(rid)
                lat.append(time.perf_counter() - began)

        for callers, names in ((concurrency, list(modes)), (1, [redis_only, shipped])):
            latencies: dict[str, list[float]] = {m: [] for m in names}
            elapsed: dict[str, float] = dict.fromkeys(names, 0.0)
            for _ in range(2):
                for mode in names:
                    stop = time.monotonic() + seconds / 2
                    started = time.perf_counter()
                    await asyncio.gather(
                        *(load(modes[mode], latencies[mode]) for _ in range(callers))
                    )
                    elapsed[mode] += time.perf_counter() - started
                    await asyncio.sleep(1.0)  # let the writer catch up between modes
            _report_confirms(report, callers, latencies, elapsed)


def _report_confirms(
    report: Report, callers: int, latencies: dict[str, list[float]], elapsed: dict[str, float]
) -> None:
    rates = {m: len(latencies[m]) / elapsed[m] for m in latencies}
    ms = {m: [x * 1000 for x in lat] for m, lat in latencies.items()}
    redis_only, *_, shipped = rates
    who = f"{callers} caller{'s' if callers > 1 else ''}"
    for mode, rate in rates.items():
        note = f"confirm p50 {percentile(ms[mode], 50):.1f} / p99 {percentile(ms[mode], 99):.1f} ms"
        if mode == shipped:
            if len(rates) > 2:
                one_each = list(rates.values())[1]
                note += f"; {rate / one_each:.1f} x one per transaction"
            note += f", {rate / rates[redis_only]:.2f} x Redis only"
            added = percentile(ms[mode], 50) - percentile(ms[redis_only], 50)
            note += f"; the write-through adds {added:.1f} ms at p50"
        report.add(f"orders/s, {who}, confirm: {mode}", rate, "orders/s", note=note)


async def _lag_seconds(client: redis.asyncio.Redis, store: LedgerStore, keys: Keys) -> float:
    """Now (Redis clock) minus the oldest entry above the committed watermark.

    One Postgres read, then one Redis pipeline (every partition and the clock), so the
    load sharing this event loop cannot stretch the measurement itself.
    """
    marks = await store.watermarks()
    async with client.pipeline(transaction=False) as pipe:
        for p in range(keys.partitions):
            mark = marks.get(p, (0, 0))
            pipe.xrange(keys.stream(p), f"({mark[0]}-{mark[1]}", "+", count=1)
        pipe.time()
        *firsts, (seconds, micros) = await pipe.execute()
    oldest = None
    for first in firsts:
        if first:
            ms = parse_stream_id(first[0][0].decode())[0]
            oldest = ms if oldest is None else min(oldest, ms)
    if oldest is None:
        return 0.0
    return max(0.0, (int(seconds) * 1000 + int(micros) // 1000 - oldest) / 1000)


async def bench_rehydrate(report: Report, records: int, holds: int) -> None:
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    try:
        async with scratch_database() as db:
            conn = await asyncpg.connect(asyncpg_dsn(db))
            try:
                n_skus = records // 4
                levels = [
                    (f"S{i // 4}", f"W{i % 4}", 100, 0, 0, 0, 1, False, 0) for i in range(records)
                ]
                now_ms = int(time.time() * 1000)
                held: dict[tuple[str, str], int] = {}
                res, allocs = [], []
                for h in range(holds):
                    sku, wh = f"S{h % n_skus}", f"W{h % 4}"
                    held[(sku, wh)] = held.get((sku, wh), 0) + 1
                    res.append(
                        (
                            f"h{h}",
                            "pending",
                            0,
                            "",
                            "f" * 64,
                            now_ms,
                            now_ms + 3_600_000,
                            now_ms + 7_200_000,
                            0,
                            now_ms,
                        )
                    )
                    allocs.append((f"h{h}", 0, wh, sku, 1))
                levels = [
                    (s, w, on, held.get((s, w), 0), co, ss, v + held.get((s, w), 0), low, up)
                    for s, w, on, _, co, ss, v, low, up in levels
                ]
                await conn.copy_records_to_table("stock_levels", records=levels)
                await conn.copy_records_to_table(
                    "reservations",
                    records=res,
                    columns=[
                        "reservation_id",
                        "status",
                        "status_rank",
                        "owner",
                        "fingerprint",
                        "created_ms",
                        "deadline_ms",
                        "max_deadline_ms",
                        "extensions",
                        "updated_ms",
                    ],
                )
                await conn.copy_records_to_table(
                    "reservation_allocations",
                    records=allocs,
                    columns=["reservation_id", "line", "warehouse", "sku", "qty"],
                )
            finally:
                await conn.close()
            env = {
                **os.environ,
                "ONHAND_REDIS_URL": REDIS_URL,
                "ONHAND_DATABASE_URL": db,
                "ONHAND_NAMESPACE": namespace,
                "ONHAND_PARTITIONS": str(PARTITIONS),
            }
            started = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "onhand",
                "rehydrate",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            elapsed = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(err.decode()[-2000:])
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            report.add(
                f"rehydrate {records:,} records + {holds:,} open holds (whole command)",
                elapsed,
                "s",
                "< 60 s",
                elapsed < 60,
            )
            report.add("rehydrate: records per second", records / elapsed, "records/s")
            report.add("rehydrate: peak memory of the process", peak_mb, "MiB")
    finally:
        delete_namespace(namespace)


def _write_json(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=2)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument(
        "--batch",
        type=int,
        default=WRITER_BATCH,
        help="the writer's batch (and the baseline's chunk) in the drain benchmark",
    )
    parser.add_argument(
        "--only",
        choices=("drain", "hot", "tx", "lag", "confirm", "rehydrate"),
        help="run one benchmark (default: all)",
    )
    args = parser.parse_args(argv)
    report = Report("Durable ledger")
    quick = args.quick
    yardstick_ms = cpu_yardstick_ms()  # before the runs, on an idle process
    if args.only in (None, "drain"):
        await bench_drain(report, 50_000 if quick else 200_000, args.batch)
    if args.only in (None, "hot"):
        await bench_hot_partition(report, 50_000 if quick else 200_000)
    if args.only in (None, "tx"):
        await bench_per_transaction(report, 20_000 if quick else 50_000, 2 if quick else 3)
    if args.only in (None, "lag"):
        await bench_lag(report, 10 if quick else 30, 32)
    if args.only in (None, "confirm"):
        await bench_confirms(report, 8 if quick else 20, 64)
    if args.only in (None, "rehydrate"):
        await bench_rehydrate(report, 100_000 if quick else 1_000_000, 10_000 if quick else 100_000)
    print(report.table())
    info = {**machine(), "cpu_yardstick_ms": f"{yardstick_ms:.1f}"}
    print("\n" + ", ".join(f"{k}: {v}" for k, v in info.items()))
    if args.json:
        payload: dict[str, Any] = {"machine": info, "figures": [f.__dict__ for f in report.figures]}
        _write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
