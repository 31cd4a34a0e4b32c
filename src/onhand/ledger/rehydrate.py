"""Rebuild Redis from Postgres, the source of truth after Redis lost data.

Order of work (each step is safe to repeat if the process dies):

1. refuse a Redis that still holds stock data unless ``force`` (an operator decision);
2. fence: close every partition, so nothing is served from a half-built state;
3. drain whatever the streams still hold into the ledger (idempotent), then settle the
   projection: held and committed from the ledger's open reservations (:func:`settle_levels`);
4. delete the namespace's keys, then write, 500 keys per script call: stock records and
   warehouse sets, SKU policies with their beyond-stock exposure, reservations (open
   ones with their deadline and hold indexes; resolved ones still within retention, so
   repeats stay idempotent), and each stream positioned after the ledger's highest
   stream id with its consumer group;
5. verify: a SHA-1 digest per 500 keys, computed in Redis, must equal the one of the
   ledger's state, and Redis must hold no key the ledger does not explain;
6. record a new epoch in Postgres and open the partitions stamped with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from onhand.domain import Allocation, ReservationStatus, SkuPolicy
from onhand.engine.redis import RedisEngine
from onhand.errors import OnhandError
from onhand.keys import Keys
from onhand.ledger.store import LedgerStore
from onhand.ledger.writer import StreamWriter
from onhand.state import RecordState, ReservationState, SkuState, State

__all__ = [
    "RedisNotEmpty",
    "RehydrateReport",
    "VerificationFailed",
    "ledger_state",
    "rehydrate",
    "settle_levels",
]

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``."""


class RedisNotEmpty(OnhandError):
    """Redis holds stock data of this namespace; rehydrate needs ``force`` to replace it."""


class VerificationFailed(OnhandError):
    """Redis read back differs from the ledger; the partitions stay fenced."""


@dataclass(frozen=True, slots=True)
class RehydrateReport:
    records: int
    skus: int
    reservations: int
    pending: int
    drained: int
    epoch: int
    run_id: str
    seconds: float


_DERIVED_LEVELS = """
WITH open AS (
    SELECT a.sku, a.warehouse,
           sum(a.qty) FILTER (WHERE r.status = 'pending') AS held,
           sum(a.qty) FILTER (WHERE r.status = 'confirmed') AS committed
    FROM reservation_allocations a JOIN reservations r USING (reservation_id)
    WHERE r.status IN ('pending', 'confirmed')
    GROUP BY a.sku, a.warehouse
), ahead AS (
    -- movements the writer has not reached (written through by a durable confirm)
    SELECT m.sku, m.warehouse, max(m.version) AS version
    FROM movements m LEFT JOIN stream_watermarks w USING (partition)
    WHERE m.warehouse IS NOT NULL
      AND (m.stream_ms, m.stream_seq) > (coalesce(w.stream_ms, -1), coalesce(w.stream_seq, -1))
    GROUP BY m.sku, m.warehouse
)
SELECT k.sku, k.warehouse,
       coalesce(s.on_hand, 0) AS on_hand,
       coalesce(o.held, 0) AS held, coalesce(o.committed, 0) AS committed,
       coalesce(s.safety_stock, 0) AS safety_stock,
       greatest(coalesce(s.version, 0), coalesce(a.version, 0)) AS version,
       coalesce(s.low, false) AS low
FROM (SELECT sku, warehouse FROM stock_levels UNION SELECT sku, warehouse FROM open) k
LEFT JOIN stock_levels s USING (sku, warehouse)
LEFT JOIN open o USING (sku, warehouse)
LEFT JOIN ahead a USING (sku, warehouse)
WHERE s.sku IS NULL OR (s.held, s.committed, s.version)
      IS DISTINCT FROM (coalesce(o.held, 0), coalesce(o.committed, 0),
                        greatest(s.version, coalesce(a.version, 0)))
"""


async def settle_levels(store: LedgerStore, *, now_ms: int) -> int:
    """Make ``stock_levels`` agree with the ledger's reservations before a rebuild.

    After Redis lost data, a record's projected ``held``/``committed`` may count holds
    that were lost before the writer committed them (a written-through confirm moves
    the record's version past events the ledger never got). Held and committed are
    re-derived from the ledger's pending and confirmed reservations, and the version
    is raised to the highest movement of the record, so no event id is reused. Returns
    how many records were corrected (0 when the projection already agreed).
    """
    async with store.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(_DERIVED_LEVELS)
        if rows:
            await conn.execute(
                _UPSERT_LEVELS,
                *(list(column) for column in zip(*rows, strict=True)),  # SELECT's order
                [now_ms] * len(rows),
            )
    return len(rows)


_UPSERT_LEVELS = """
INSERT INTO stock_levels
    (sku, warehouse, on_hand, held, committed, safety_stock, version, low, updated_ms)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                     $6::bigint[], $7::bigint[], $8::bool[], $9::bigint[])
ON CONFLICT (sku, warehouse) DO UPDATE SET
    held = EXCLUDED.held, committed = EXCLUDED.committed, version = EXCLUDED.version,
    updated_ms = EXCLUDED.updated_ms
"""


async def ledger_state(store: LedgerStore, *, now_ms: int, retention_ms: int) -> State:
    """The engine state Postgres implies (what Redis must hold after a rebuild)."""
    state = State()
    async with store.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        async for r in conn.cursor("SELECT * FROM stock_levels", prefetch=10_000):
            rec = RecordState(
                r["on_hand"], r["held"], r["committed"], r["safety_stock"], r["version"], r["low"]
            )
            state.records[(r["sku"], r["warehouse"])] = rec
            state.warehouses.setdefault(r["sku"], set()).add(r["warehouse"])
        beyond: dict[str, int] = {}
        for (sku, _), rec in state.records.items():
            if rec.exposure:
                beyond[sku] = beyond.get(sku, 0) + rec.exposure
        for r in await conn.fetch("SELECT * FROM sku_policies"):
            policy = SkuPolicy(
                r["backorder_limit"],
                r["preorder_limit"],
                r["preorder_release_ms"],
                r["reorder_point"],
                r["reorder_qty"],
                r["lead_time_days"],
                r["max_line_qty"],
            )
            state.skus[r["sku"]] = SkuState(policy, r["policy_version"], beyond.pop(r["sku"], 0))
        for sku, units in beyond.items():
            state.skus[sku] = SkuState(beyond=units)
        allocations: dict[str, list[Allocation]] = {}
        rows = await conn.fetch(
            "SELECT a.* FROM reservation_allocations a JOIN reservations r USING (reservation_id)"
            " WHERE r.status_rank < 2 OR r.updated_ms + $1 > $2",
            retention_ms,
            now_ms,
        )
        for row in rows:
            allocations.setdefault(row["reservation_id"], []).append(
                Allocation(row["line"], row["sku"], row["warehouse"], row["qty"])
            )
        rows = await conn.fetch(
            "SELECT * FROM reservations WHERE status_rank < 2 OR updated_ms + $1 > $2",
            retention_ms,
            now_ms,
        )
        for r in rows:
            rid = r["reservation_id"]
            allocs = tuple(sorted(allocations.get(rid, []), key=lambda a: (a.line, a.warehouse)))
            res = ReservationState(
                ReservationStatus(r["status"]),
                r["fingerprint"],
                r["owner"],
                r["created_ms"],
                r["deadline_ms"],
                r["max_deadline_ms"],
                allocs,
                r["extensions"],
                r["updated_ms"],
            )
            state.reservations[rid] = res
            if res.status is ReservationStatus.PENDING:
                state.deadlines[rid] = res.deadline_ms
                for a in allocs:
                    state.holds.setdefault(a.sku, {})[rid] = res.deadline_ms
    return state.canonical()


async def _delete_namespace(client: Redis, keys: Keys, *, keep_ready: bool) -> int:
    deleted = 0
    batch: list[str] = []
    async for raw in client.scan_iter(match=keys.pattern(), count=2000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        if keep_ready and key.endswith(":ready"):
            continue
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await client.unlink(*batch)
    return deleted


async def _has_stock_data(client: Redis, keys: Keys) -> bool:
    async for raw in client.scan_iter(match=keys.pattern(), count=2000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        if not key.endswith((":ready", ":events")):
            return True
    return False


def _header(keys: Keys, rid: str, r: ReservationState) -> dict[str, str]:
    allocs = [
        {
            "l": a.line,
            "s": a.sku,
            "w": a.warehouse,
            "q": a.qty,
            "k": keys.stock(a.sku, a.warehouse),
            "g": keys.sku(a.sku),
            "h": keys.holds(a.sku),
            "e": keys.sku_stream(a.sku),
            "r": keys.sku_ready(a.sku),
        }
        for a in r.allocations
    ]
    return {
        "id": rid,
        "st": r.status.value,
        "fp": r.fingerprint,
        "own": r.owner,
        "cr": str(r.created_ms),
        "dl": str(r.deadline_ms),
        "cap": str(r.max_deadline_ms),
        "nx": str(r.extensions),
        "up": str(r.updated_ms),
        "al": json.dumps(allocs),
        "dk": keys.reservation_deadlines(rid),
    }


CHUNK = 500
"""Keys per ``load`` / ``digest`` script call."""
IN_FLIGHT = 8
"""Script calls sent at once, so Python prepares the next while Redis runs one."""
RECORD_FIELDS = ("on", "he", "co", "ss", "v", "low")
SKU_FIELDS = ("bo", "po", "prel", "rp", "rq", "lt", "mlq", "pv", "bey")
HEADER_FIELDS = ("id", "st", "fp", "own", "cr", "dl", "cap", "nx", "up", "al", "dk")


@dataclass
class _Content:
    """What a namespace must hold, grouped by key kind, as the exact strings written."""

    hashes: dict[tuple[str, ...], list[tuple[str, list[str]]]]
    sets: list[tuple[str, list[str]]]
    zsets: list[tuple[str, list[tuple[int, str]]]]
    expire_at: list[tuple[str, int]]


def _content(keys: Keys, state: State, retention_ms: int) -> _Content:
    records = [
        (
            keys.stock(sku, wh),
            [
                str(r.on_hand),
                str(r.held),
                str(r.committed),
                str(r.safety_stock),
                str(r.version),
                "1" if r.low else "0",
            ],
        )
        for (sku, wh), r in state.records.items()
    ]
    skus = []
    for sku, s in state.skus.items():
        p = s.policy
        values = (
            p.backorder_limit,
            p.preorder_limit,
            p.preorder_release_ms,
            p.reorder_point,
            p.reorder_qty,
            p.lead_time_days,
            p.max_line_qty,
            s.policy_version,
            s.beyond,
        )
        skus.append((keys.sku(sku), [str(v) for v in values]))
    headers, expire_at = [], []
    for rid, r in state.reservations.items():
        h = _header(keys, rid, r)
        headers.append((keys.reservation(rid), [h[f] for f in HEADER_FIELDS]))
        if r.status not in (ReservationStatus.PENDING, ReservationStatus.CONFIRMED):
            expire_at.append((keys.reservation(rid), r.updated_ms + retention_ms))
    sets = [(keys.warehouses(sku), sorted(whs)) for sku, whs in state.warehouses.items()]
    zsets: dict[str, list[tuple[int, str]]] = {}
    for rid, deadline in state.deadlines.items():
        zsets.setdefault(keys.reservation_deadlines(rid), []).append(
            (deadline, keys.reservation(rid))
        )
    for sku, holds in state.holds.items():
        zsets[keys.holds(sku)] = [(d, keys.reservation(r)) for r, d in holds.items()]
    return _Content(
        hashes={RECORD_FIELDS: records, SKU_FIELDS: skus, HEADER_FIELDS: headers},
        sets=sets,
        zsets=[(k, sorted(v)) for k, v in zsets.items()],
        expire_at=expire_at,
    )


def _chunks(items: list[Any], size: int = CHUNK) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _zset_parts(members: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    return _chunks(members, 2_000)  # Lua's unpack() takes at most ~8,000 values


async def write_state(
    engine: RedisEngine, content: _Content, *, progress: Progress | None = None
) -> None:
    """Write ``content`` into an empty namespace with the ``load`` script, 500 keys a call."""
    calls: list[tuple[list[str], list[str]]] = []
    for fields, items in content.hashes.items():
        for chunk in _chunks(items):
            args = ["hash", str(len(fields)), *fields]
            for _, values in chunk:
                args += values
            calls.append(([k for k, _ in chunk], args))
    set_parts = [(k, part) for k, members in content.sets for part in _chunks(members, 2_000)]
    for chunk in _chunks(set_parts):
        args = ["set"]
        for _, members in chunk:
            args += [str(len(members)), *members]
        calls.append(([k for k, _ in chunk], args))
    for key, members in content.zsets:
        for part in _zset_parts(members):
            args = ["zset", str(len(part))]
            for score, member in part:
                args += [str(score), member]
            calls.append(([key], args))
    for start in range(0, len(calls), IN_FLIGHT):
        window = calls[start : start + IN_FLIGHT]
        await asyncio.gather(*(engine.run_script("load", k, a) for k, a in window))
        if progress is not None:
            progress("write", start + len(window), len(calls))
    for chunk in _chunks(content.expire_at):
        async with engine.client.pipeline(transaction=False) as pipe:
            for key, at in chunk:
                pipe.pexpireat(key, at)
            await pipe.execute()


def _sha1(lines: list[str]) -> str:
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()


async def verify_state(
    engine: RedisEngine, content: _Content, *, progress: Progress | None = None
) -> None:
    """Compare Redis with ``content`` through ``digest`` (SHA-1 per 500 keys); raise
    :class:`VerificationFailed` naming the first keys of any chunk that differs, or when
    the namespace holds keys ``content`` does not explain."""
    checks: list[tuple[list[str], list[str], str]] = []
    for fields, items in content.hashes.items():
        for chunk in _chunks(items):
            lines = ["|".join(values) for _, values in chunk]
            checks.append(
                ([k for k, _ in chunk], ["hash", str(len(fields)), *fields], _sha1(lines))
            )
    for chunk in _chunks(content.sets):
        lines = ["|".join(sorted(members)) for _, members in chunk]
        checks.append(([k for k, _ in chunk], ["set"], _sha1(lines)))
    for chunk in _chunks(content.zsets):
        lines = ["|".join(f"{m}={s}" for s, m in members) for _, members in chunk]
        checks.append(([k for k, _ in chunk], ["zset"], _sha1(lines)))
    counting = asyncio.create_task(_count_keys(engine))  # overlaps the digests
    try:
        for start in range(0, len(checks), IN_FLIGHT):
            window = checks[start : start + IN_FLIGHT]
            digests = await asyncio.gather(
                *(engine.run_script("digest", k, a) for k, a, _ in window)
            )
            for (call_keys, _, expected), [got] in zip(window, digests, strict=True):
                if got != expected:
                    raise VerificationFailed(
                        f"Redis differs from the ledger after rehydrate, among keys "
                        f"{call_keys[:3]}…"
                    )
            if progress is not None:
                progress("verify", start + len(window), len(checks))
    finally:
        present = await counting
    expected_keys = sum(len(v) for v in content.hashes.values()) + len(content.sets)
    expected_keys += len(content.zsets)
    if present != expected_keys:
        raise VerificationFailed(
            f"Redis holds {present} keys after rehydrate, the ledger explains {expected_keys}"
        )


async def _count_keys(engine: RedisEngine) -> int:
    """Keys of the namespace other than ready markers and streams."""
    present = 0
    async for raw in engine.client.scan_iter(match=engine.keys.pattern(), count=10_000):
        key = raw if isinstance(raw, bytes) else raw.encode()
        if not key.endswith((b":ready", b":events")):
            present += 1
    return present


async def _position_streams(client: Redis, keys: Keys, store: LedgerStore, group: str) -> None:
    """Recreate each stream after the ledger's highest id, with the writer's group."""
    highest = await store.max_stream_ids()
    for p, mark in (await store.watermarks()).items():
        highest[p] = max(highest.get(p, (0, 0)), mark)
    for p in range(keys.partitions):
        stream = keys.stream(p)
        try:
            await client.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        if p in highest:
            ms, seq = highest[p]
            await client.execute_command("XSETID", stream, f"{ms}-{seq}")  # type: ignore[no-untyped-call]


async def rehydrate(
    engine: RedisEngine,
    store: LedgerStore,
    *,
    force: bool = False,
    drain: bool = True,
    group: str = "onhand-ledger",
    retention_ms: int = 24 * 60 * 60 * 1000,
    progress: Progress | None = None,
) -> RehydrateReport:
    """Rebuild the engine's namespace from the ledger (see the module docstring)."""
    started = time.perf_counter()
    client, keys = engine.client, engine.keys
    if not force and await _has_stock_data(client, keys):
        raise RedisNotEmpty(
            f"Redis holds data of namespace {keys.namespace!r}; use --force to replace it"
        )
    await engine.fence()
    drained = 0
    if drain:
        writer = StreamWriter(
            client, store, keys, group=group, burst=True, claim_idle_ms=1, block_ms=10
        )
        await writer.main()
        drained = writer.written
    await _delete_namespace(client, keys, keep_ready=False)
    seconds, micros = await client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    settled = await settle_levels(store, now_ms=now_ms)
    if settled:
        logger.warning(
            "rehydrate: %d records' held/committed re-derived from the ledger's reservations"
            " (holds lost with Redis before the writer committed them)",
            settled,
        )
    expected = await ledger_state(store, now_ms=now_ms, retention_ms=retention_ms)
    content = _content(keys, expected, retention_ms)
    counts = (
        len(expected.records),
        len(expected.skus),
        len(expected.reservations),
        len(expected.deadlines),
    )
    del expected  # the content holds everything still needed; halve the peak memory
    await write_state(engine, content, progress=progress)
    await _position_streams(client, keys, store, group)
    await verify_state(engine, content, progress=progress)
    run_id = str((await client.info("server"))["run_id"])
    epoch = await store.new_epoch(run_id, "rehydrate")
    await engine.mark_ready(epoch)
    return RehydrateReport(
        records=counts[0],
        skus=counts[1],
        reservations=counts[2],
        pending=counts[3],
        drained=drained,
        epoch=epoch,
        run_id=run_id,
        seconds=time.perf_counter() - started,
    )
