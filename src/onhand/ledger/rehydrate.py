"""Rebuild Redis from Postgres, the source of truth after Redis lost data.

Order of work (each step is safe to repeat if the process dies):

1. refuse a Redis that still holds stock data unless ``force`` (an operator decision);
2. fence: close every partition, so nothing is served from a half-built state;
3. drain whatever the streams still hold into the ledger (idempotent);
4. delete the namespace's keys, then write, in pipelined batches: stock records and
   warehouse sets, SKU policies with their beyond-stock exposure, reservations (open
   ones with their deadline and hold indexes; resolved ones still within retention, so
   repeats stay idempotent), and each stream positioned after the ledger's highest
   stream id with its consumer group;
5. verify: read Redis back and compare it with the ledger's state, exactly;
6. record a new epoch in Postgres and open the partitions stamped with it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from onhand.domain import Allocation, ReservationStatus, SkuPolicy
from onhand.engine.redis import RedisEngine
from onhand.engine.snapshot import read_state
from onhand.errors import OnhandError
from onhand.keys import Keys
from onhand.ledger.store import LedgerStore
from onhand.ledger.writer import StreamWriter
from onhand.state import RecordState, ReservationState, SkuState, State

__all__ = ["RedisNotEmpty", "RehydrateReport", "VerificationFailed", "ledger_state", "rehydrate"]

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


async def write_state(
    client: Redis,
    keys: Keys,
    state: State,
    *,
    retention_ms: int,
    batch: int = 5_000,
    progress: Progress | None = None,
) -> None:
    """Write ``state`` into an empty namespace, pipelined ``batch`` commands at a time."""
    commands: list[tuple[str, str, Any]] = []
    for (sku, wh), rec in state.records.items():
        level = {
            "on": rec.on_hand,
            "he": rec.held,
            "co": rec.committed,
            "ss": rec.safety_stock,
            "v": rec.version,
            "low": int(rec.low),
        }
        commands.append(("hset", keys.stock(sku, wh), level))
    for sku, whs in state.warehouses.items():
        commands.append(("sadd", keys.warehouses(sku), sorted(whs)))
    for sku, s in state.skus.items():
        pol = s.policy
        commands.append(
            (
                "hset",
                keys.sku(sku),
                {
                    "bo": pol.backorder_limit,
                    "po": pol.preorder_limit,
                    "prel": pol.preorder_release_ms,
                    "rp": pol.reorder_point,
                    "rq": pol.reorder_qty,
                    "lt": pol.lead_time_days,
                    "mlq": pol.max_line_qty,
                    "pv": s.policy_version,
                    "bey": s.beyond,
                },
            )
        )
    for rid, r in state.reservations.items():
        hk = keys.reservation(rid)
        commands.append(("hset", hk, _header(keys, rid, r)))
        if r.status not in (ReservationStatus.PENDING, ReservationStatus.CONFIRMED):
            commands.append(("pexpireat", hk, r.updated_ms + retention_ms))
    for rid, deadline in state.deadlines.items():
        commands.append(
            ("zadd", keys.reservation_deadlines(rid), {keys.reservation(rid): deadline})
        )
    for sku, holds in state.holds.items():
        commands.append(
            ("zadd", keys.holds(sku), {keys.reservation(r): d for r, d in holds.items()})
        )
    for start in range(0, len(commands), batch):
        async with client.pipeline(transaction=False) as pipe:
            for op, key, arg in commands[start : start + batch]:
                _queue(pipe, op, key, arg)
            await pipe.execute()
        if progress is not None:
            progress("write", min(start + batch, len(commands)), len(commands))


def _queue(pipe: Any, op: str, key: str, arg: Any) -> None:
    if op == "hset":
        pipe.hset(key, mapping=arg)
    elif op == "sadd":
        pipe.sadd(key, *arg)
    elif op == "zadd":
        pipe.zadd(key, arg)
    else:
        pipe.pexpireat(key, arg)


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
    batch: int = 5_000,
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
    expected = await ledger_state(store, now_ms=now_ms, retention_ms=retention_ms)
    await write_state(
        client, keys, expected, retention_ms=retention_ms, batch=batch, progress=progress
    )
    await _position_streams(client, keys, store, group)
    if progress is not None:
        progress("verify", 0, 1)
    actual = await read_state(client, keys)
    if actual != expected:
        raise VerificationFailed(_difference(expected, actual))
    run_id = str((await client.info("server"))["run_id"])
    epoch = await store.new_epoch(run_id, "rehydrate")
    await engine.mark_ready(epoch)
    return RehydrateReport(
        records=len(expected.records),
        skus=len(expected.skus),
        reservations=len(expected.reservations),
        pending=len(expected.deadlines),
        drained=drained,
        epoch=epoch,
        run_id=run_id,
        seconds=time.perf_counter() - started,
    )


def _difference(expected: State, actual: State) -> str:
    parts = []
    for name in ("records", "skus", "warehouses", "reservations", "deadlines", "holds"):
        want, got = getattr(expected, name), getattr(actual, name)
        if want != got:
            missing = [k for k in want if k not in got][:3]
            extra = [k for k in got if k not in want][:3]
            changed = [k for k in want if k in got and want[k] != got[k]][:3]
            parts.append(f"{name}: missing {missing} extra {extra} changed {changed}")
    return "Redis differs from the ledger after rehydrate: " + "; ".join(parts)
