"""Recovery against real Redis and Postgres: emptied Redis, restarts, rollbacks, drift."""

from __future__ import annotations

import asyncio
import logging
import shutil

import pytest

from onhand.domain import Line, ReservationStatus, ReserveRequest, SkuPolicy
from onhand.engine.redis import RedisEngine
from onhand.errors import EngineNotReady, EngineUnavailable, InsufficientStock
from onhand.ledger import reconcile as reconcile_module
from onhand.ledger.barrier import DurableConfirms
from onhand.ledger.fencing import Verdict, verify_and_reopen
from onhand.ledger.reconcile import fix, reconcile
from onhand.ledger.rehydrate import RedisNotEmpty, ledger_state, rehydrate
from onhand.state import RecordState
from tests.integration.ledger_support import Stack, open_stack
from tests.integration.support import new_id
from tests.servers import RedisServer

pytestmark = pytest.mark.postgres

DAY_MS = 24 * 60 * 60 * 1000


def _order(rid: str, sku: str, whs: tuple[str, ...], qty: int) -> ReserveRequest:
    return ReserveRequest(rid, (Line(sku, qty, whs, allow_split=True),), ttl_ms=600_000)


async def _workload(stack: Stack) -> tuple[str, tuple[str, str], list[str]]:
    e = stack.engine
    sku, whs = new_id("s"), (new_id("w"), new_id("w"))
    await e.set_policy(sku, SkuPolicy(reorder_point=3, backorder_limit=2))
    await e.receive(sku, whs[0], 10)
    await e.receive(sku, whs[1], 5)
    await e.set_safety_stock(sku, whs[1], 1)
    rids = [new_id("r") for _ in range(6)]
    for rid in rids:
        await e.reserve(_order(rid, sku, whs, 2))
    await e.confirm(rids[0])
    await e.confirm(rids[1])
    await e.fulfill(rids[1])
    await e.release(rids[2])
    await e.extend(rids[3], 900_000)
    return sku, whs, rids


async def _forget_everything(stack: Stack) -> None:
    """What a restart without persistence does to our namespace (only our keys)."""
    keys = [k async for k in stack.client.scan_iter(match=f"{stack.engine.keys.namespace}:*")]
    await stack.client.unlink(*keys)


async def test_rehydrate_rebuilds_exactly_the_state_redis_had(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace) as stack:
        await _workload(stack)
        before = await stack.engine.state()
        await stack.drain()
        with pytest.raises(RedisNotEmpty):
            await rehydrate(stack.engine, stack.store)
        report = await rehydrate(stack.engine, stack.store, force=True)
        assert await stack.engine.state() == before
        assert (report.records, report.reservations, report.pending) == (
            len(before.records), len(before.reservations), len(before.deadlines),
        )  # fmt: skip
        assert report.epoch >= 1
        # the rebuilt Redis works and its new events reach the ledger after the old ones
        sku = next(iter(before.warehouses))
        await stack.engine.receive(sku, next(iter(before.warehouses[sku])), 1)
        writer = await stack.drain()
        assert writer.written == 1 and writer.lost == 0


async def test_rehydrate_rebuilds_thousands_of_open_holds_in_one_partition(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace, partitions=1) as stack:
        sku, wh = new_id("s"), new_id("w")
        await stack.engine.receive(sku, wh, 5_000)
        for _ in range(50):
            await asyncio.gather(
                *(stack.engine.reserve(_order(new_id("r"), sku, (wh,), 1)) for _ in range(50))
            )
        before = await stack.engine.state()
        await stack.drain()
        await rehydrate(stack.engine, stack.store, force=True)
        assert await stack.engine.state() == before
        assert len(before.deadlines) == 2_500


async def test_an_emptied_redis_is_fenced_then_rebuilt_and_a_durable_confirm_survives(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace) as stack:
        sku, whs, rids = await _workload(stack)
        await stack.drain()
        # a confirm acknowledged through the barrier, never drained by the writer
        late = new_id("r")
        await stack.engine.reserve(_order(late, sku, whs, 1))
        confirms = DurableConfirms(stack.engine, stack.store)
        assert (await confirms.confirm(late)).status is ReservationStatus.CONFIRMED
        await _forget_everything(stack)  # Redis loses everything

        with pytest.raises(EngineNotReady):  # never "out of stock", never a success
            await stack.engine.reserve(_order(new_id("r"), sku, whs, 1))
        with pytest.raises(EngineNotReady):
            await stack.engine.availability(sku)
        assert await verify_and_reopen(stack.engine, stack.store) is Verdict.NEEDS_REHYDRATE

        await rehydrate(stack.engine, stack.store)
        now = (await stack.client.time())[0] * 1000
        assert await stack.engine.state() == await ledger_state(
            stack.store, now_ms=now, retention_ms=DAY_MS
        )
        assert (await stack.engine.get_reservation(late)).status is ReservationStatus.CONFIRMED
        assert (await stack.engine.get_reservation(rids[0])).status is ReservationStatus.CONFIRMED
        # the late confirm still holds its unit: the rebuilt stock counts it as committed
        committed = sum(lvl.committed for lvl in (await stack.engine.availability(sku)).levels)
        assert committed == 2 + 1


@pytest.mark.parametrize(
    "private_redis", [("--appendonly", "yes", "--appendfsync", "always")], indirect=True
)
async def test_a_restart_that_lost_nothing_is_verified_and_reopened(
    private_redis: RedisServer, database_url: str, namespace: str
):
    async with open_stack(private_redis.url, database_url, namespace) as stack:
        sku, whs, _ = await _workload(stack)
        await stack.drain()
    private_redis.kill()
    private_redis.restart()
    async with open_stack(private_redis.url, database_url, namespace, stamp=False) as stack:
        with pytest.raises(EngineNotReady):
            await stack.engine.reserve(_order(new_id("r"), sku, whs, 1))
        assert await verify_and_reopen(stack.engine, stack.store) is Verdict.REOPENED
        assert (await stack.engine.reserve(_order(new_id("r"), sku, whs, 1))).allocations


async def test_a_redis_restored_from_an_older_snapshot_is_detected_and_rebuilt(
    private_redis: RedisServer, database_url: str, namespace: str
):
    """Postgres is ahead of the snapshot: the restore must not sell confirmed units again."""
    snapshot = private_redis.dir / "snapshot.rdb"
    async with open_stack(private_redis.url, database_url, namespace) as stack:
        sku, whs, _ = await _workload(stack)
        await stack.drain()
        await stack.client.save()  # the older snapshot
        shutil.copy(private_redis.dir / "dump.rdb", snapshot)
        # after it: the last 12 units are reserved and confirmed (money), and drained
        confirms = DurableConfirms(stack.engine, stack.store)
        sold = []
        while True:
            rid = new_id("r")
            try:
                await stack.engine.reserve(_order(rid, sku, whs, 1))
            except InsufficientStock:
                break
            await confirms.confirm(rid)
            sold.append(rid)
        await stack.drain()
    private_redis.kill()
    shutil.copy(snapshot, private_redis.dir / "dump.rdb")
    private_redis.restart()  # comes back with the older data
    async with open_stack(private_redis.url, database_url, namespace, stamp=False) as stack:
        assert await verify_and_reopen(stack.engine, stack.store) is Verdict.NEEDS_REHYDRATE
        with pytest.raises(EngineNotReady):  # the stale stock is never sold
            await stack.engine.reserve(_order(new_id("r"), sku, whs, 1))
        await rehydrate(stack.engine, stack.store, force=True)
        for rid in sold:
            assert (await stack.engine.get_reservation(rid)).status is ReservationStatus.CONFIRMED
        with pytest.raises(InsufficientStock):  # no confirmed unit is sold twice
            await stack.engine.reserve(_order(new_id("r"), sku, whs, 1))


async def test_reconcile_reports_injected_drift_exactly_and_fix_repairs_it(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace) as stack:
        sku, whs, _ = await _workload(stack)
        await stack.drain()
        assert await reconcile(stack.engine, stack.store, wait_ms=2_000) == []
        await stack.client.hincrby(stack.engine.keys.stock(sku, whs[0]), "on", -3)  # drift
        [drift] = await reconcile(stack.engine, stack.store, wait_ms=2_000)
        level = (await stack.pg_levels())[(sku, whs[0])]
        assert (drift.sku, drift.warehouse, drift.kind) == (sku, whs[0], "values")
        assert drift.differences() == {"on_hand": (level.on_hand - 3, level.on_hand)}
        assert await fix(stack.engine, [drift]) == 1
        await stack.drain()  # the correction is a movement too
        assert await reconcile(stack.engine, stack.store, wait_ms=2_000) == []
        assert await stack.fetchval("SELECT count(*) FROM movements WHERE type = 'reconciled'") == 1


@pytest.mark.parametrize("change", ["release", "receive-new-record"])
@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_change_committed_while_reconcile_reads_is_not_reported_as_drift(
    redis_url: str,
    database_url: str,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    change: str,
    when: str,
):
    # Live traffic (the reaper, checkouts) moves a record and the writer commits it
    # just before or just after reconcile reads Redis, so between its read of Redis and
    # its read of the ledger: that is lag at most, never Redis behind or missing.
    async with open_stack(redis_url, database_url, namespace) as stack:
        sku, _, rids = await _workload(stack)
        await stack.drain()
        read_redis = reconcile_module.redis_records
        pending = [True]

        async def commit_a_change() -> None:
            if change == "release":
                await stack.engine.release(rids[4])
            else:
                await stack.engine.receive(sku, new_id("w"), 4)
            await stack.drain()

        async def read_with_a_change_beside(
            engine: RedisEngine, progress: reconcile_module.ProgressFn
        ) -> dict[tuple[str, str], RecordState]:
            if pending and when == "before":
                pending.clear()
                await commit_a_change()
            records = await read_redis(engine, progress)
            if pending:
                pending.clear()
                await commit_a_change()
            return records

        monkeypatch.setattr(reconcile_module, "redis_records", read_with_a_change_beside)
        assert await reconcile(stack.engine, stack.store, wait_ms=2_000) == []
        assert not pending  # the change did happen during the reconcile


async def test_a_confirm_that_postgres_did_not_take_is_not_acknowledged(
    redis_url: str, database_url: str, namespace: str
):
    async with open_stack(redis_url, database_url, namespace) as stack:
        sku, whs, _ = await _workload(stack)
        rid = new_id("r")
        await stack.engine.reserve(_order(rid, sku, whs, 1))
        await stack.store.close()  # Postgres is unreachable for the barrier
        confirms = DurableConfirms(stack.engine, stack.store, timeout_ms=200)
        with pytest.raises(EngineUnavailable, match="not yet durable"):
            await confirms.confirm(rid)


async def test_a_new_deployment_is_opened_without_a_restart_warning(
    redis_url: str, database_url: str, namespace: str, caplog: pytest.LogCaptureFixture
):
    """An empty ledger and an unstamped namespace: the first start, not a lost Redis."""
    async with open_stack(redis_url, database_url, namespace, stamp=False) as stack:
        with caplog.at_level(logging.INFO, logger="onhand.ledger.fencing"):
            assert await verify_and_reopen(stack.engine, stack.store) is Verdict.REOPENED
        assert [r.levelno for r in caplog.records] == [logging.INFO]
        assert "new deployment" in caplog.text
        assert await stack.fetchval("SELECT reason FROM redis_epochs") == "first start"
        sku, wh = new_id("s"), new_id("w")
        await stack.engine.receive(sku, wh, 1)  # open for business
        await stack.drain()
    async with open_stack(redis_url, database_url, namespace, stamp=False) as stack:
        keys = stack.engine.keys
        await stack.client.unlink(*(keys.ready(p) for p in range(keys.partitions)))  # fenced
        with caplog.at_level(logging.INFO, logger="onhand.ledger.fencing"):
            caplog.clear()
            assert await verify_and_reopen(stack.engine, stack.store) is Verdict.REOPENED
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
