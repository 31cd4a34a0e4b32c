"""Reconciliation: Redis against the ledger, record by record, at the same version.

Every stock record carries a version that each change increments, and every ledger
movement carries the version it produced, so the two can be compared without
stopping traffic: at equal versions the levels must be identical (any difference is
drift); a Redis record ahead of the ledger is lag — wait until the writer commits
up to it (bounded by ``wait_ms``); a ledger ahead of Redis means Redis lost changes.
The ledger is read before Redis, so under traffic a record can only look ahead in
Redis (lag), never behind: a ``redis-behind`` or ``missing-in-redis`` is real.

``fix`` repairs Redis from the ledger: each drifted record is set to the ledger's
levels through ``repair.lua`` (guarded by the version compared) and the correction is
itself recorded as a ``reconciled`` movement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from onhand.engine.redis import RedisEngine
from onhand.errors import VersionConflict
from onhand.ledger.store import LedgerStore
from onhand.state import RecordState

__all__ = ["Drift", "fix", "reconcile", "redis_records"]

_FIELDS = ("on_hand", "held", "committed", "safety_stock")


@dataclass(frozen=True, slots=True)
class Drift:
    """One record that differs. ``kind``: ``values`` (same version, other levels),
    ``redis-behind`` (the ledger has a newer version), ``missing-in-redis``, or ``lag``
    (Redis ahead and the writer did not catch up within the wait)."""

    sku: str
    warehouse: str
    kind: str
    redis: RecordState | None
    ledger: RecordState | None

    def differences(self) -> dict[str, tuple[int, int]]:
        """field -> (redis, ledger) for every level that differs."""
        r, g = self.redis or RecordState(), self.ledger or RecordState()
        return {
            f: (getattr(r, f), getattr(g, f)) for f in _FIELDS if getattr(r, f) != getattr(g, f)
        }


ProgressFn = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: how far a long step is (the CLI draws bars)."""


def _quiet(phase: str, done: int, total: int) -> None:
    return None


async def redis_records(
    engine: RedisEngine, progress: ProgressFn = _quiet
) -> dict[tuple[str, str], RecordState]:
    """Every stock record of the namespace (SCAN + pipelined HMGET)."""
    keys = engine.keys
    prefix = f"{keys.namespace}:{{p"
    names: list[tuple[str, tuple[str, str]]] = []
    async for raw in engine.client.scan_iter(match=f"{keys.namespace}:*:stock:*", count=2000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        if key.startswith(prefix):
            sku, wh = key.split(":stock:", 1)[1].split(":")
            names.append((key, (sku, wh)))
    out: dict[tuple[str, str], RecordState] = {}
    for start in range(0, len(names), 1000):
        chunk = names[start : start + 1000]
        async with engine.client.pipeline(transaction=False) as pipe:
            for key, _ in chunk:
                pipe.hmget(key, ["on", "he", "co", "ss", "v", "low"])
            rows = await pipe.execute()
        for (_, ident), row in zip(chunk, rows, strict=True):
            on, he, co, ss, v = (int(x or 0) for x in row[:5])
            out[ident] = RecordState(on, he, co, ss, v, (row[5] or b"0") in (b"1", "1"))
        progress("reading Redis records", start + len(chunk), len(names))
    return out


async def _ledger_records(store: LedgerStore) -> dict[tuple[str, str], RecordState]:
    rows = await store.pool.fetch(
        "SELECT sku, warehouse, on_hand, held, committed, safety_stock, version, low"
        " FROM stock_levels"
    )
    return {(r[0], r[1]): RecordState(r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows}


def _compare(
    redis: dict[tuple[str, str], RecordState], ledger: dict[tuple[str, str], RecordState]
) -> tuple[list[Drift], list[Drift]]:
    drifts: list[Drift] = []
    lagging: list[Drift] = []
    for ident in sorted(redis.keys() | ledger.keys()):
        r, g = redis.get(ident), ledger.get(ident)
        if r is None:
            drifts.append(Drift(*ident, "missing-in-redis", None, g))
        elif g is None or r.version > g.version:
            lagging.append(Drift(*ident, "lag", r, g))
        elif r.version < g.version:
            drifts.append(Drift(*ident, "redis-behind", r, g))
        elif any(getattr(r, f) != getattr(g, f) for f in _FIELDS):
            drifts.append(Drift(*ident, "values", r, g))
    return drifts, lagging


async def reconcile(
    engine: RedisEngine,
    store: LedgerStore,
    *,
    wait_ms: int = 5_000,
    progress: ProgressFn = _quiet,
) -> list[Drift]:
    """Every drifted record (module docstring); records still lagging after ``wait_ms``
    are reported with kind ``lag``."""
    deadline = time.monotonic() + wait_ms / 1000
    while True:
        # The ledger first: it only ever follows Redis, so a change committed between
        # the two reads shows as lag (waited for) and never as Redis behind or missing.
        ledger = await _ledger_records(store)
        redis = await redis_records(engine, progress)
        drifts, lagging = _compare(redis, ledger)
        if not lagging or time.monotonic() >= deadline:
            return drifts + lagging
        await asyncio.sleep(0.1)


async def fix(engine: RedisEngine, drifts: list[Drift], progress: ProgressFn = _quiet) -> int:
    """Repair each drifted record from the ledger; returns how many were repaired.

    Lagging records are left alone; a record that changed since it was compared is
    skipped (run reconcile again).
    """
    fixed = 0
    for done, d in enumerate(drifts, 1):
        progress("repairing from the ledger", done, len(drifts))
        if d.kind == "lag" or d.ledger is None:
            continue
        g = d.ledger
        try:
            await engine.repair(
                d.sku,
                d.warehouse,
                expected_version=d.redis.version if d.redis else 0,
                levels=(g.on_hand, g.held, g.committed, g.safety_stock),
                version_floor=g.version,
            )
        except VersionConflict:
            continue
        fixed += 1
    return fixed
