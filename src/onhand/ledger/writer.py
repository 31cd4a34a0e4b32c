"""The stream writer: drains every partition stream into the Postgres ledger.

One consumer group (``group``) over every partition stream, created from id ``0`` so
nothing already in a stream is skipped. The loop:

1. on start, re-read this consumer's own pending entries (id ``0``) before new ones;
2. every ``claim_idle_ms``, take over entries that another (dead) consumer left pending
   longer than that (``XAUTOCLAIM``); ids it reports as deleted were trimmed before
   anyone persisted them: they are recorded in ``lost_events`` and counted, loudly;
3. read a batch (``XREADGROUP … >``), apply it in **one** Postgres transaction
   (:meth:`LedgerStore.apply`: idempotent inserts, version-guarded projections, the
   watermark), and ``XACK`` only after ``COMMIT``;
   Under load the next read waits until ``linger_ms`` after the previous one began:
   when a read brought at least ``linger_from`` entries but less than half a batch
   and no stream gave its whole share of the read (``batch`` / streams entries: that
   stream has more waiting) — a backlog is read back to back, also one in a single
   hot partition; a light trickle, fewer entries per read, goes as it comes. So a
   busy stream is committed in batches of hundreds instead of tens of entries per
   transaction — each transaction costs Postgres a fixed share
   (statements, commit) that small batches pay per event. Under load it adds at most
   ``linger_ms`` to the lag (and so to what a Redis without persistence can lose);
4. every ``trim_interval_ms``, trim each stream with ``MINID`` below both the committed
   watermark and the oldest entry still pending — never with ``MAXLEN``, which drops
   entries nobody has persisted.

While Postgres is unreachable the writer backs off and retries the same batch without
acknowledging anything; Redis keeps serving. An event that fails on its own
``max_attempts`` times goes to ``dead_letters`` with the error (then it is acknowledged).
SIGTERM/SIGINT finish the batch in flight, then stop. ``burst=True`` drains everything
and returns (tests, the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from redis.asyncio import Redis
from redis.client import NEVER_DECODE
from redis.exceptions import RedisError, ResponseError

from onhand.engine.redis import RedisEngine
from onhand.events import Event
from onhand.keys import Keys
from onhand.ledger.fencing import Verdict, verify_and_reopen
from onhand.ledger.metrics import WriterMetrics
from onhand.ledger.rows import Staged, build_batch, pairs, parse_stream_id, stage_entries
from onhand.ledger.store import ApplyResult, LedgerStore

__all__ = ["StreamWriter"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
"""Postgres errors about the data of an event: the only ones that may dead-letter it.
Any other error (a missing table, a permission, a syntax error after a bad deploy) says
the writer cannot work at all: it backs off and retries without acknowledging."""

TRANSIENT_PG = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.InsufficientResourcesError,
)
"""Postgres errors that say nothing about the data: back off and retry the batch."""


@dataclass(slots=True)
class _Entry:
    partition: int
    stream: str
    stream_id: str
    flat: list[Any] | None  # the reply's [field, value, …]; None: trimmed while pending

    @property
    def fields(self) -> dict[Any, Any] | None:
        """The entry's fields as a dict (later fields win), ``None`` if it was trimmed."""
        return None if self.flat is None else pairs(self.flat)

    def text_fields(self) -> dict[str, str]:
        return {_s(k): _s(v) for k, v in (self.fields or {}).items()}


@dataclass(slots=True)
class _Part:
    """The entries of one group of partitions; ``staged``: their COPY rows when every one
    of them can take the fast path (:func:`stage_entries`), else ``None``."""

    entries: list[_Entry]
    staged: Staged | None


def _stream_replies(reply: Any) -> Any:
    """``[[stream, entries], …]`` of an XREADGROUP reply, RESP2 (list) or RESP3 (map)."""
    if not reply:
        return ()
    return reply.items() if isinstance(reply, dict) else reply


async def _settle(task: asyncio.Task[None] | None) -> asyncio.Task[None] | None:
    """Wait for the batch in flight (if any); the result is the new (empty) slot."""
    if task is not None:
        await task
    return None


@contextlib.contextmanager
def _batch_gc() -> Iterator[None]:
    """The cyclic collector tuned for a process that drains batches.

    Each batch allocates tens of thousands of container objects (reply lists, entries)
    that stay alive until the batch is acknowledged and are then freed by reference
    counting (they form no cycles). With the default threshold (700 net allocations)
    the collector runs dozens of times per batch, walking exactly those live objects
    (≈ 30 % of the writer's Python time). Here: what exists at start (modules, clients)
    is frozen out of the generations, and a young collection runs after 50,000 net
    allocations (about every few batches), so cycles are still collected."""
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, threshold[1], threshold[2])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StreamWriter:
    """Long-running writer over one namespace's streams (``main()``, ``close()``, burst)."""

    def __init__(
        self,
        redis: Redis,
        store: LedgerStore,
        keys: Keys,
        *,
        group: str = "onhand-ledger",
        consumer: str | None = None,
        batch: int = 20_000,
        block_ms: int = 200,
        claim_idle_ms: int = 30_000,
        max_attempts: int = 3,
        trim_interval_ms: int = 1_000,
        linger_ms: int = 100,
        linger_from: int = 32,
        burst: bool = False,
        metrics: WriterMetrics | None = None,
        engine: RedisEngine | None = None,
        parallel: int = 2,
    ) -> None:
        self.redis = redis
        self.store = store
        self.keys = keys
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_attempts = max_attempts
        self.trim_interval_ms = trim_interval_ms
        self.linger_ms = linger_ms
        self.linger_from = max(1, linger_from)
        self.burst = burst
        self.metrics = metrics if metrics is not None else WriterMetrics()
        self.engine = engine
        self.verdict: Verdict | None = None
        self.streams = keys.all_streams()
        # Partitions are applied in ``parallel`` groups (partition mod parallel), each in
        # its own transaction on its own connection: a group's stock records, movements
        # and watermarks are its own; reservations spanning groups only move forward.
        self.parallel = max(1, min(parallel, keys.partitions))
        self.written = 0
        self.lost = 0
        self.dead_lettered = 0
        self.divergent: list[str] = []
        self._stop = asyncio.Event()
        self._backoff_s = 0.05
        self.filled = False  # the last read gave some stream its whole share (_read)
        # The same connections without redis-py's reply parsing for the two stream reads:
        # entries arrive as flat lists of bytes, made into one dict each, nothing else.
        self._raw = Redis(connection_pool=redis.connection_pool)
        for command in ("XREADGROUP", "XAUTOCLAIM"):
            self._raw.response_callbacks.pop(command, None)

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Stop after the batch in flight (it is committed and acknowledged first)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        """:meth:`main` as the job of its process (``onhand writer``): SIGINT/SIGTERM
        wired to :meth:`close`, and the cyclic garbage collector tuned for it
        (:func:`_batch_gc`). Both are restored when it returns."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.close)
        try:
            with _batch_gc():
                await self.main()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def setup(self) -> None:
        """Create the consumer group on every stream, from id 0 (idempotent)."""
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def main(self) -> None:
        """Run the loop (module docstring). One batch is committed while the next is read
        and staged, so Redis reads, Python work and Postgres commits overlap;
        acknowledgements still follow their own batch's commit, and batches commit one at
        a time, in the order they were read."""
        await self._retry_redis(self.setup)
        await self._drain(own_pending=True)
        next_claim = next_trim = next_read = 0.0
        inflight: asyncio.Task[None] | None = None
        try:
            while not self.stopping:
                now = time.monotonic()
                if now < next_read:  # linger: let a trickle gather (module docstring)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), next_read - now)
                    now = time.monotonic()
                claimed = 0
                if now >= next_claim:
                    inflight = await _settle(inflight)
                    claimed = await self._retry_redis(self._claim)
                    next_claim = now + self.claim_idle_ms / 2000
                read = await self._retry_redis(lambda: self._read(">", block=not self.burst))
                # A stream that filled its share of the read has more waiting: read again at
                # once, else one hot partition could not drain faster than its share per
                # linger (1,250 entries per 100 ms by default) whatever its rate.
                busy = self.linger_from <= len(read) < self.batch // 2 and not self.filled
                busy = busy and not self.burst
                next_read = now + self.linger_ms / 1000 if busy else 0.0
                parts = self._prepare(read) if read else None
                inflight = await _settle(inflight)
                if parts is not None:
                    inflight = asyncio.create_task(self._apply(parts))
                if now >= next_trim or (self.burst and not read):
                    inflight = await _settle(inflight)
                    await self._retry_redis(self.trim)
                    await self._guard()
                    next_trim = now + self.trim_interval_ms / 1000
                if self.burst and not read and not claimed:
                    if await self._retry_redis(lambda: self._read("0", block=False)):
                        await self._drain(own_pending=True)
                    elif not await self._retry_redis(self._take_over_group):
                        return  # nothing new, nothing pending anywhere in the group
        finally:
            await _settle(inflight)  # the batch in flight is committed and acknowledged

    # -- reading -------------------------------------------------------------------------
    async def _retry_redis(self, call: Callable[[], Awaitable[T]]) -> T:
        delay = 0.05
        while True:
            try:
                return await call()
            except RedisError as exc:
                if self.stopping:
                    raise
                logger.warning("writer: Redis error (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _read(self, start: str, *, block: bool) -> list[_Entry]:
        """Up to ``batch / streams`` entries of each stream; :attr:`filled` says whether
        a stream gave that many (it may hold more, already waiting)."""
        count = max(1, self.batch // len(self.streams))
        args: list[Any] = ["GROUP", self.group, self.consumer, "COUNT", count]
        if block:
            args += ["BLOCK", self.block_ms]
        args += ["STREAMS", *self.streams, *[start] * len(self.streams)]
        reply = await self._raw.execute_command(  # type: ignore[no-untyped-call]
            "XREADGROUP", *args, **{NEVER_DECODE: True}
        )
        entries: list[_Entry] = []
        append = entries.append
        self.filled = False
        for stream_raw, items in _stream_replies(reply):
            self.filled = self.filled or len(items) >= count
            stream = _s(stream_raw)
            partition = self.keys.stream_partition(stream)
            for stream_id, flat in items:
                append(_Entry(partition, stream, stream_id.decode(), flat or None))
        return entries

    async def _drain(self, *, own_pending: bool) -> None:
        """Process this consumer's own pending entries (id 0) until none are left."""
        while not self.stopping:
            entries = await self._retry_redis(lambda: self._read("0", block=False))
            if not entries:
                return
            await self._process(entries)

    async def _take_over_group(self) -> int:
        """Burst mode's last step: claim whatever other consumers still hold (idle or
        not) and persist it, so "drained" means nothing is pending in the group."""
        pending = 0
        for stream in self.streams:
            summary = await self.redis.xpending(stream, self.group)
            pending += int(summary["pending"]) if summary else 0
        if not pending:
            return 0
        saved, self.claim_idle_ms = self.claim_idle_ms, 0
        try:
            return await self._claim()
        finally:
            self.claim_idle_ms = saved

    async def _claim(self) -> int:
        """Take over entries idle longer than ``claim_idle_ms``; count deleted ones as lost."""
        claimed = 0
        for stream in self.streams:
            partition = self.keys.stream_partition(stream)
            cursor = "0-0"
            for _ in range(100):  # bounded: XAUTOCLAIM scans at most COUNT*10 per call
                reply = await self._raw.execute_command(  # type: ignore[no-untyped-call]
                    "XAUTOCLAIM",
                    stream,
                    self.group,
                    self.consumer,
                    self.claim_idle_ms,
                    cursor,
                    "COUNT",
                    self.batch,
                    **{NEVER_DECODE: True},
                )
                cursor = _s(reply[0])
                items = reply[1]
                deleted = [_s(d) for d in (reply[2] if len(reply) > 2 else [])]
                if deleted:
                    await self._lost(partition, stream, deleted, ack=False)
                entries = [_Entry(partition, stream, _s(i), f or None) for i, f in items]
                if entries:
                    claimed += len(entries)
                    await self._process(entries)
                if cursor == "0-0":
                    break
        return claimed

    # -- processing ----------------------------------------------------------------------
    async def _lost(self, partition: int, stream: str, ids: list[str], *, ack: bool) -> None:
        logger.error(
            "writer: %d entries of %s vanished before they were persisted (trimmed while "
            "pending): %s — counted in lost_events",
            len(ids),
            stream,
            ", ".join(ids[:10]),
        )
        await self._retry_pg(
            lambda: self.store.record_lost(partition, ids, "trimmed-while-pending")
        )
        self.lost += len(ids)
        self.metrics.lost.inc(len(ids))
        if ack:
            await self._retry_redis(lambda: self.redis.xack(stream, self.group, *ids))

    async def _retry_pg(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call``, backing off while Postgres is unreachable or refuses for reasons
        that are not the data (``DATA_ERRORS`` propagate)."""
        delay = 0.05
        while True:
            try:
                return await call()
            except DATA_ERRORS:
                raise
            except (*TRANSIENT_PG, asyncpg.PostgresError) as exc:
                self.metrics.postgres_errors.inc()
                if self.stopping:
                    raise
                if isinstance(exc, TRANSIENT_PG):
                    logger.warning("writer: Postgres unavailable (%s); retry in %.2fs", exc, delay)
                else:
                    logger.error(
                        "writer: Postgres refused a batch (%r); retry in %.2fs", exc, delay
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _prepare(self, entries: list[_Entry]) -> list[_Part]:
        """Split ``entries`` into partition groups and stage each (CPU only, no I/O)."""
        groups: list[list[_Entry]] = [[] for _ in range(self.parallel)]
        n = self.parallel
        for e in entries:
            groups[e.partition % n].append(e)
        return [
            _Part(g, stage_entries((e.partition, e.stream_id, e.flat) for e in g))
            for g in groups
            if g
        ]

    async def _process(self, entries: list[_Entry]) -> None:
        """Persist ``entries`` (one transaction per partition group), then acknowledge."""
        await self._apply(self._prepare(entries))

    async def _apply(self, parts: list[_Part]) -> None:
        """Apply the groups concurrently; each is acknowledged after its own commit. An
        error is raised once every group has finished (none is left running)."""
        if len(parts) == 1:
            return await self._apply_part(parts[0])
        results = await asyncio.gather(*map(self._apply_part, parts), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _apply_part(self, part: _Part) -> None:
        """The fast path if the part has one and Postgres takes it; else the general
        path, which isolates whatever Postgres (or parsing) refuses."""
        if part.staged is not None and await self._commit_staged(part.entries, part.staged):
            return
        await self._process_events(part.entries)

    async def _commit_staged(self, entries: list[_Entry], staged: Staged) -> bool:
        started = time.perf_counter()
        try:
            result = await self._retry_pg(lambda: self.store.apply_staged(staged))
        except DATA_ERRORS as exc:  # nothing committed: the general path finds the culprit
            logger.warning(
                "writer: staged batch of %d refused (%s); parsing it event by event",
                staged.count,
                exc,
            )
            return False
        await self._committed(result, staged.count, started, entries)
        return True

    async def _process_events(self, entries: list[_Entry]) -> None:
        """The general path: parse each entry into an :class:`Event` (dead-lettering the
        unparsable ones), fold them with :func:`build_batch`, apply in one transaction."""
        gone = defaultdict(list)
        parsed: list[tuple[_Entry, Event]] = []
        poison: list[tuple[_Entry, str]] = []
        for entry in entries:
            fields = entry.fields
            if fields is None:
                gone[(entry.partition, entry.stream)].append(entry.stream_id)
                continue
            try:
                parsed.append((entry, Event.from_fields(fields)))
            except (KeyError, ValueError, TypeError) as exc:
                poison.append((entry, f"unparsable event: {exc!r}"))
        for (partition, stream), ids in gone.items():
            await self._lost(partition, stream, ids, ack=True)
        if parsed:
            await self._commit(parsed)
        for entry, error in poison:
            await self._dead_letter(entry, error, self.max_attempts)

    async def _commit(self, parsed: list[tuple[_Entry, Event]]) -> None:
        batch = build_batch([(e.partition, e.stream_id, ev) for e, ev in parsed])
        started = time.perf_counter()
        try:
            result = await self._retry_pg(lambda: self.store.apply(batch, lock_reservations=True))
        except DATA_ERRORS as exc:  # the data, not the connection: isolate the event
            logger.warning("writer: batch of %d failed (%s); applying one by one", len(batch), exc)
            for entry, event in parsed:
                await self._commit_one(entry, event)
            return
        await self._committed(result, len(batch), started, [e for e, _ in parsed])

    async def _committed(
        self, result: ApplyResult, size: int, started: float, entries: list[_Entry]
    ) -> None:
        """Account for a committed batch, fence on divergence, then acknowledge it."""
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(size)
        self.metrics.batches.inc()
        self.metrics.events.inc(result.inserted)
        self.metrics.duplicates.inc(result.duplicates)
        self.metrics.last_commit.set_to_current_time()
        self.written += result.inserted
        if result.divergent:
            self._divergent(result.divergent)
            if self.engine is not None:
                await self._retry_redis(self.engine.fence)
        await self._ack(entries)

    async def _commit_one(self, entry: _Entry, event: Event) -> None:
        batch = build_batch([(entry.partition, entry.stream_id, event)])
        for attempt in range(1, self.max_attempts + 1):
            try:
                result = await self._retry_pg(
                    lambda: self.store.apply(batch, lock_reservations=True)
                )
            except DATA_ERRORS as exc:
                if attempt == self.max_attempts:
                    await self._dead_letter(entry, repr(exc), attempt)
                    return
                continue
            self.written += result.inserted
            self.metrics.events.inc(result.inserted)
            if result.divergent:
                self._divergent(result.divergent)
            await self._ack([entry])
            return

    async def _dead_letter(self, entry: _Entry, error: str, attempts: int) -> None:
        logger.error("writer: dead-lettering %s %s: %s", entry.stream, entry.stream_id, error)
        fields = entry.text_fields()
        await self._retry_pg(
            lambda: self.store.dead_letter(
                entry.partition, entry.stream_id, fields, error, attempts
            )
        )
        self.dead_lettered += 1
        self.metrics.dead_lettered.inc()
        await self._ack([entry])

    async def _guard(self) -> None:
        """Reopen a Redis that restarted without losing ledger data; else keep it fenced."""
        if self.engine is None:
            return
        try:
            self.verdict = await verify_and_reopen(self.engine, self.store)
        except (RedisError, *TRANSIENT_PG) as exc:
            logger.warning("writer: could not check Redis readiness (%s)", exc)

    def _divergent(self, ids: tuple[str, ...]) -> None:
        self.divergent.extend(ids)
        self.metrics.divergent.inc(len(ids))
        logger.critical(
            "writer: %d events reuse ids already stored for other stream positions (%s): Redis "
            "lost data without being fenced. Fencing it; run `onhand rehydrate --force`.",
            len(ids),
            ", ".join(ids[:5]),
        )

    async def _ack(self, entries: list[_Entry]) -> None:
        by_stream: dict[str, list[str]] = defaultdict(list)
        for e in entries:
            by_stream[e.stream].append(e.stream_id)
        # Already committed: if this fails the entries are delivered again and the ledger
        # ignores the duplicates. One round trip for every stream (XACK is idempotent).
        await self._retry_redis(self._acker(by_stream))

    def _acker(self, by_stream: dict[str, list[str]]) -> Callable[[], Awaitable[int]]:
        async def ack() -> int:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream, ids in by_stream.items():
                    pipe.xack(stream, self.group, *ids)
                return sum(int(n) for n in await pipe.execute())

        return ack

    # -- trimming and lag ----------------------------------------------------------------
    async def trim(self) -> dict[int, str]:
        """Trim every stream below min(committed watermark, oldest pending). Returns the
        MINID used per partition."""
        try:
            marks = await self.store.watermarks()
        except TRANSIENT_PG:
            return {}  # no watermark known: trim nothing
        done: dict[int, str] = {}
        for stream in self.streams:
            partition = self.keys.stream_partition(stream)
            mark = marks.get(partition)
            if mark is None:
                continue
            summary = await self.redis.xpending(stream, self.group)
            floor = mark
            if summary and summary.get("pending"):
                floor = min(floor, parse_stream_id(_s(summary["min"])))
            minid = f"{floor[0]}-{floor[1]}"
            await self.redis.xtrim(stream, minid=minid, approximate=False)
            done[partition] = minid
        await self._observe_lag()
        return done

    async def _observe_lag(self) -> None:
        oldest: int | None = None
        for stream in self.streams:
            partition = str(self.keys.stream_partition(stream))
            with contextlib.suppress(ResponseError):
                for g in await self.redis.xinfo_groups(stream):
                    if _s(g["name"]) != self.group:
                        continue
                    lag = g.get("lag")
                    self.metrics.lag_entries.labels(partition).set(int(lag or 0))
                    self.metrics.pending_entries.labels(partition).set(int(g["pending"]))
                    if int(lag or 0) or int(g["pending"]):
                        first = await self.redis.xrange(stream, "-", "+", count=1)
                        if first:
                            ms = parse_stream_id(_s(first[0][0]))[0]
                            oldest = ms if oldest is None else min(oldest, ms)
        now_ms = time.time() * 1000
        self.metrics.lag_seconds.set(0 if oldest is None else max(0.0, (now_ms - oldest) / 1000))
