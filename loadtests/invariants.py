"""After a load run: check onhand's invariants in Redis and the Postgres ledger directly.

    ONHAND_REDIS_URL=redis://… ONHAND_DATABASE_URL=postgresql://… \\
        python -m loadtests.invariants [--prefix LT<run>-] [--drain-timeout 60]

Exit status 0 when every invariant holds, 1 with the list of violations otherwise (2 on
a usage error). Settings: ``ONHAND_NAMESPACE`` (default ``onhand``),
``ONHAND_PARTITIONS`` (16), ``ONHAND_REAPER_INTERVAL_MS`` (100). With ``--prefix`` only
SKUs starting with it (and reservations holding them) are checked; ledger health
(dead letters, lost events) is always checked as a whole.

How: wait until a *quiet* snapshot of Redis can be taken (the partition streams' last
ids are the same before and after reading the whole state: nothing changed meanwhile),
wait until the writer's watermarks reach those stream positions (the ledger is drained
up to the snapshot), then compare the snapshot with the ledger movements *up to the
same positions* — an exact cut even while the reaper keeps expiring holds. Violations,
by kind:

* ``oversold`` — a SKU whose records promise more than its stock: the sum over its
  records of max(0, held + committed - (on_hand - safety_stock)) exceeds the SKU's
  allowance (backorder or pre-order) now; ``beyond-counter`` — the SKU's ``bey``
  counter (which the scripts enforce the allowance with) differs from that sum.
* ``oversold-ledger`` — across the whole ledger: units confirmed (less cancelled)
  exceed units supplied (received, adjusted, counted, transferred, reconciled) plus
  the allowance; or some movement recorded the SKU promised beyond its allowance.
  (A stocktake that counts fewer units than are committed trips this legitimately.)
* ``conservation`` — a record's on_hand/held/committed in Redis differs from the sum of
  its movements' deltas (d_on_hand/d_held/d_committed); ``version`` — its version
  differs from the number of its record-changing movements (a lost or duplicated
  event; not checked for records that were ever ``reconciled``).
* ``held-mismatch`` / ``committed-mismatch`` — a record's held (committed) differs from
  the units of its pending (confirmed) reservations' allocations.
* ``stale-hold`` — a pending reservation whose deadline passed more than the reaper
  interval plus ``--hold-slack-ms`` ago; ``deadline-index`` — a pending reservation
  missing from the deadline index, or a resolved one still in it.
* ``ledger-not-drained`` — the writer did not reach the snapshot within
  ``--drain-timeout`` (the checks that compare with the ledger are then skipped: they
  would only repeat it); ``no-quiet-snapshot`` — Redis never stood still long enough.
* ``ledger-drift`` — :func:`onhand.ledger.reconcile.reconcile` found a record whose
  ``stock_levels`` projection differs from Redis (or lags beyond the wait).
* ``reservation-projection`` — a reservation missing from the ledger's projection, or
  with another status than Redis.
* ``dead-letters`` / ``lost-events`` — the writer gave up on events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from onhand.domain import STATUS_RANK, ReservationStatus
from onhand.engine.redis import RedisEngine, connect
from onhand.errors import OnhandError
from onhand.ledger.fencing import stream_positions
from onhand.ledger.migrate import asyncpg_dsn
from onhand.ledger.reconcile import reconcile
from onhand.ledger.store import LedgerStore
from onhand.state import ReservationState, State

__all__ = ["Options", "Report", "Violation", "check", "check_urls", "main"]

Position = tuple[int, int]
SUPPLY = ("received", "adjusted", "counted", "transfer_in", "transfer_out", "reconciled")
SALES = ("confirmed", "cancelled")
NOT_RECORD_CHANGES = ("low_stock", "extended", "policy_set")

_SUMS = """
SELECT m.sku, m.warehouse, m.type, sum(m.d_on_hand)::bigint, sum(m.d_held)::bigint,
       sum(m.d_committed)::bigint, count(*)::bigint
FROM movements m
JOIN unnest($1::smallint[], $2::bigint[], $3::bigint[]) AS p(partition, ms, seq)
  ON p.partition = m.partition
WHERE (m.stream_ms, m.stream_seq) <= (p.ms, p.seq)
  AND m.warehouse IS NOT NULL
  AND ($4::text IS NULL OR starts_with(m.sku, $4))
GROUP BY 1, 2, 3
"""
_MAX_BEYOND = """
SELECT sku, max(beyond)::bigint, (array_agg(event_id ORDER BY beyond DESC))[1]
FROM movements
WHERE beyond IS NOT NULL AND ($1::text IS NULL OR starts_with(sku, $1))
GROUP BY sku
"""


@dataclass(frozen=True)
class Options:
    prefix: str | None = None
    """Check only SKUs starting with this (and the reservations holding them)."""
    drain_timeout_s: float = 60.0
    """How long the writer may take to reach the snapshot (and reconcile may wait)."""
    quiet_timeout_s: float = 120.0
    """How long to try for a snapshot during which Redis did not change."""
    reaper_interval_ms: int = 100
    hold_slack_ms: int = 2_000
    """A pending hold may outlive its deadline by the reaper interval plus this."""


@dataclass(frozen=True)
class Violation:
    kind: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.subject}: {self.detail}"


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def kinds(self) -> set[str]:
        return {v.kind for v in self.violations}

    def add(self, kind: str, subject: str, detail: str) -> None:
        self.violations.append(Violation(kind, subject, detail))

    def render(self, limit: int = 50) -> str:
        lines = [f"invariants: {'OK' if self.ok else 'VIOLATED'}"]
        lines += [f"  {k}: {v}" for k, v in self.facts.items()]
        if self.violations:
            counts: dict[str, int] = defaultdict(int)
            for v in self.violations:
                counts[v.kind] += 1
            lines.append(f"{len(self.violations)} violations: {dict(sorted(counts.items()))}")
            lines += [f"  {v}" for v in self.violations[:limit]]
            if len(self.violations) > limit:
                lines.append(f"  … and {len(self.violations) - limit} more")
        return "\n".join(lines)


@dataclass
class _Sums:
    """One record's movements up to the snapshot, summed."""

    on_hand: int = 0
    held: int = 0
    committed: int = 0
    changes: int = 0
    reconciled: bool = False


@dataclass
class _SkuLedger:
    supplied: int = 0
    sold: int = 0


def _mine(sku: str, prefix: str | None) -> bool:
    return prefix is None or sku.startswith(prefix)


def _reservation_mine(res: ReservationState, prefix: str | None) -> bool:
    return prefix is None or any(a.sku.startswith(prefix) for a in res.allocations)


async def _redis_now_ms(engine: RedisEngine) -> int:
    seconds, micros = await engine.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def quiet_snapshot(
    engine: RedisEngine, timeout_s: float
) -> tuple[dict[int, Position], State, int] | None:
    """(stream positions, state, Redis time) read while nothing changed; None on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        before = await stream_positions(engine)
        state = await engine.state()
        now_ms = await _redis_now_ms(engine)
        if await stream_positions(engine) == before:
            return before, state, now_ms
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.05)


async def wait_drained(
    engine: RedisEngine, store: LedgerStore, positions: dict[int, Position], timeout_s: float
) -> dict[int, tuple[Position, Position]]:
    """Wait until every partition's watermark reaches ``positions``; what still lags."""
    deadline = time.monotonic() + timeout_s
    while True:
        marks = await store.watermarks()
        behind = {
            p: (pos, marks.get(p, (0, 0)))
            for p, pos in positions.items()
            if pos > (0, 0) and marks.get(p, (0, 0)) < pos
        }
        if not behind or time.monotonic() >= deadline:
            return behind
        await asyncio.sleep(0.1)


async def _ledger_sums(
    store: LedgerStore, positions: dict[int, Position], prefix: str | None
) -> tuple[dict[tuple[str, str], _Sums], dict[str, _SkuLedger], int]:
    parts = sorted(positions)
    rows = await store.pool.fetch(
        _SUMS,
        parts,
        [positions[p][0] for p in parts],
        [positions[p][1] for p in parts],
        prefix,
    )
    records: dict[tuple[str, str], _Sums] = defaultdict(_Sums)
    skus: dict[str, _SkuLedger] = defaultdict(_SkuLedger)
    movements = 0
    for sku, wh, etype, d_on, d_he, d_co, n in rows:
        movements += n
        rec = records[(sku, wh)]
        rec.on_hand += d_on
        rec.held += d_he
        rec.committed += d_co
        if etype not in NOT_RECORD_CHANGES:
            rec.changes += n
        rec.reconciled = rec.reconciled or etype == "reconciled"
        if etype in SUPPLY:
            skus[sku].supplied += d_on
        elif etype in SALES:
            skus[sku].sold += d_co
    return records, skus, movements


def _check_conservation(
    report: Report, state: State, sums: dict[tuple[str, str], _Sums], prefix: str | None
) -> None:
    for ident in sorted(state.records.keys() | sums.keys()):
        if not _mine(ident[0], prefix):
            continue
        rec, got = state.records.get(ident), sums.get(ident)
        subject = f"{ident[0]}@{ident[1]}"
        if rec is None or got is None:
            where = "Redis" if rec is None else "the ledger"
            report.add("conservation", subject, f"record missing in {where}")
            continue
        redis_levels = (rec.on_hand, rec.held, rec.committed)
        ledger_levels = (got.on_hand, got.held, got.committed)
        if redis_levels != ledger_levels:
            report.add(
                "conservation",
                subject,
                f"Redis on_hand/held/committed {redis_levels} != sum of ledger deltas "
                f"{ledger_levels}",
            )
        if not got.reconciled and rec.version != got.changes:
            report.add(
                "version",
                subject,
                f"version {rec.version} but {got.changes} record-changing movements",
            )


def _check_oversell(report: Report, state: State, now_ms: int, prefix: str | None) -> None:
    by_sku: dict[str, int] = defaultdict(int)
    for (sku, _), rec in state.records.items():
        if _mine(sku, prefix):
            by_sku[sku] += rec.exposure
    for sku in sorted(by_sku.keys() | {s for s in state.skus if _mine(s, prefix)}):
        exposure = by_sku.get(sku, 0)
        sku_state = state.sku(sku)
        allowance = sku_state.policy.allowance(now_ms)
        if exposure > allowance:
            levels = {
                wh: (r.on_hand, r.held, r.committed, r.safety_stock)
                for (s, wh), r in state.records.items()
                if s == sku
            }
            report.add(
                "oversold",
                sku,
                f"{exposure} units promised beyond stock, allowance {allowance}; "
                f"on_hand/held/committed/safety per warehouse: {levels}",
            )
        if sku_state.beyond != exposure:
            report.add(
                "beyond-counter",
                sku,
                f"bey counter {sku_state.beyond} != sum of record exposures {exposure}",
            )


async def _check_oversell_ledger(
    report: Report,
    store: LedgerStore,
    state: State,
    skus: dict[str, _SkuLedger],
    prefix: str | None,
) -> dict[str, int]:
    def most(sku: str) -> int:
        policy = state.sku(sku).policy
        return max(policy.backorder_limit, policy.preorder_limit)

    for sku, led in sorted(skus.items()):
        if led.sold > led.supplied + most(sku):
            report.add(
                "oversold-ledger",
                sku,
                f"{led.sold} units confirmed (less cancelled) but {led.supplied} supplied "
                f"(allowance at most {most(sku)})",
            )
    for sku, beyond, event_id in await store.pool.fetch(_MAX_BEYOND, prefix):
        if beyond > most(sku):
            report.add(
                "oversold-ledger",
                sku,
                f"movement {event_id} recorded {beyond} units promised beyond stock "
                f"(allowance at most {most(sku)})",
            )
    return {
        "units_supplied": sum(s.supplied for s in skus.values()),
        "units_sold": sum(s.sold for s in skus.values()),
    }


def _check_holds(
    report: Report, state: State, now_ms: int, stale_after_ms: int, prefix: str | None
) -> dict[str, int]:
    held: dict[tuple[str, str], int] = defaultdict(int)
    committed: dict[tuple[str, str], int] = defaultdict(int)
    statuses: dict[str, int] = defaultdict(int)
    for rid, res in state.reservations.items():
        if not _reservation_mine(res, prefix):
            continue
        statuses[res.status.value] += 1
        pending = res.status is ReservationStatus.PENDING
        for a in res.allocations:
            if pending:
                held[(a.sku, a.warehouse)] += a.qty
            elif res.status is ReservationStatus.CONFIRMED:
                committed[(a.sku, a.warehouse)] += a.qty
        if pending and res.deadline_ms < now_ms - stale_after_ms:
            report.add(
                "stale-hold",
                rid,
                f"pending {now_ms - res.deadline_ms} ms past its deadline "
                f"(allowed {stale_after_ms} ms)",
            )
        if pending != (rid in state.deadlines):
            report.add(
                "deadline-index",
                rid,
                f"{res.status.value} but {'not ' if pending else ''}in the deadline index",
            )
    for ident, rec in sorted(state.records.items()):
        if not _mine(ident[0], prefix):
            continue
        subject = f"{ident[0]}@{ident[1]}"
        if rec.held != held.get(ident, 0):
            report.add(
                "held-mismatch",
                subject,
                f"held {rec.held} but pending reservations hold {held.get(ident, 0)}",
            )
        if rec.committed != committed.get(ident, 0):
            report.add(
                "committed-mismatch",
                subject,
                f"committed {rec.committed} but confirmed reservations hold "
                f"{committed.get(ident, 0)}",
            )
    return {f"reservations_{k}": v for k, v in sorted(statuses.items())}


async def _check_reservation_projection(
    report: Report, engine: RedisEngine, store: LedgerStore, state: State, prefix: str | None
) -> None:
    mine = {rid: r for rid, r in state.reservations.items() if _reservation_mine(r, prefix)}
    rows = await store.pool.fetch(
        "SELECT reservation_id, status FROM reservations WHERE reservation_id = ANY($1::text[])",
        list(mine),
    )
    ledger = {r[0]: r[1] for r in rows}
    for rid, res in sorted(mine.items()):
        status = ledger.get(rid)
        if status is None:
            report.add("reservation-projection", rid, "missing from the ledger's reservations")
            continue
        if status == res.status.value:
            continue
        # The ledger may have moved on since the snapshot; Redis must agree with it now.
        try:
            now = (await engine.get_reservation(rid)).status
        except OnhandError as exc:
            report.add("reservation-projection", rid, f"ledger {status}; Redis: {exc}")
            continue
        if now.value != status or STATUS_RANK[now] < STATUS_RANK[res.status]:
            report.add(
                "reservation-projection",
                rid,
                f"ledger {status}, Redis {res.status.value} at the snapshot and {now.value} now",
            )


async def check(engine: RedisEngine, store: LedgerStore, options: Options | None = None) -> Report:
    """Every invariant (module docstring) over ``engine``'s namespace and ``store``."""
    opts = options or Options()
    prefix = opts.prefix
    report = Report()
    started = time.monotonic()
    snap = await quiet_snapshot(engine, opts.quiet_timeout_s)
    if snap is None:
        report.add(
            "no-quiet-snapshot", "redis", f"streams kept moving for {opts.quiet_timeout_s} s"
        )
        return report
    positions, state, now_ms = snap
    report.facts.update(
        {
            "prefix": prefix or "(all)",
            "skus": len({s for s, _ in state.records if _mine(s, prefix)}),
            "records": sum(1 for s, _ in state.records if _mine(s, prefix)),
        }
    )
    behind = await wait_drained(engine, store, positions, opts.drain_timeout_s)
    for p, (pos, mark) in sorted(behind.items()):
        report.add("ledger-not-drained", f"partition {p}", f"stream at {pos}, watermark {mark}")
    _check_oversell(report, state, now_ms, prefix)
    statuses = _check_holds(
        report, state, now_ms, opts.reaper_interval_ms + opts.hold_slack_ms, prefix
    )
    if behind:  # comparing with a ledger that misses events would only repeat that
        report.facts["ledger_checks"] = "skipped: the ledger is not drained"
    else:
        report.facts.update(await _check_ledger(report, engine, store, state, positions, opts))
    counts = await store.counts()
    for kind, column in (("dead-letters", "dead_letters"), ("lost-events", "lost_events")):
        if n := counts[column]:
            report.add(kind, "ledger", f"{n} rows")
    report.facts.update(statuses)
    report.facts["check_seconds"] = round(time.monotonic() - started, 1)
    return report


async def _check_ledger(
    report: Report,
    engine: RedisEngine,
    store: LedgerStore,
    state: State,
    positions: dict[int, Position],
    opts: Options,
) -> dict[str, object]:
    """The checks that compare the snapshot with a ledger drained up to it."""
    prefix = opts.prefix
    sums, skus, movements = await _ledger_sums(store, positions, prefix)
    _check_conservation(report, state, sums, prefix)
    sales = await _check_oversell_ledger(report, store, state, skus, prefix)
    await _check_reservation_projection(report, engine, store, state, prefix)
    drifts = await reconcile(engine, store, wait_ms=int(opts.drain_timeout_s * 1000))
    for d in drifts:
        if _mine(d.sku, prefix):
            report.add("ledger-drift", f"{d.sku}@{d.warehouse}", f"{d.kind}: {d.differences()}")
    return {"movements_compared": movements, **sales}


async def check_urls(
    redis_url: str,
    database_url: str,
    *,
    namespace: str = "onhand",
    partitions: int = 16,
    options: Options | None = None,
) -> Report:
    """:func:`check` on its own clients (closed afterwards)."""
    client = connect(redis_url, max_connections=16)
    try:
        engine = RedisEngine(client, namespace=namespace, partitions=partitions)
        store = await LedgerStore.open(asyncpg_dsn(database_url))
        try:
            return await check(engine, store, options)
        finally:
            await store.close()
    finally:
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.invariants", description=__doc__)
    parser.add_argument("--prefix", help="check only SKUs starting with this")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="seconds (60)")
    parser.add_argument("--quiet-timeout", type=float, default=120.0, help="seconds (120)")
    parser.add_argument("--hold-slack-ms", type=int, default=2_000)
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args(argv)
    redis_url = os.environ.get("ONHAND_REDIS_URL")
    database_url = os.environ.get("ONHAND_DATABASE_URL")
    if not redis_url or not database_url:
        print("set ONHAND_REDIS_URL and ONHAND_DATABASE_URL", file=sys.stderr)
        return 2
    report = asyncio.run(
        check_urls(
            redis_url,
            database_url,
            namespace=os.environ.get("ONHAND_NAMESPACE", "onhand"),
            partitions=int(os.environ.get("ONHAND_PARTITIONS", "16")),
            options=Options(
                prefix=args.prefix,
                drain_timeout_s=args.drain_timeout,
                quiet_timeout_s=args.quiet_timeout,
                reaper_interval_ms=int(os.environ.get("ONHAND_REAPER_INTERVAL_MS", "100")),
                hold_slack_ms=args.hold_slack_ms,
            ),
        )
    )
    print(report.render())
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "ok": report.ok,
                    "facts": report.facts,
                    "violations": [v.__dict__ for v in report.violations],
                },
                out,
                indent=2,
                default=str,
            )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
