"""Concurrency on a real Redis: oversell races, mixed lifecycles, confirm against expiry."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import pytest

from onhand.domain import Line, ReservationStatus, ReserveRequest
from onhand.engine.redis import RedisEngine
from onhand.errors import InsufficientStock, InvalidTransition, OnhandError
from onhand.events import EventType
from tests.integration.support import (
    events_by_reservation,
    new_id,
    open_engine,
    redis_clock_offset_ms,
    replayed_state,
)

WORKERS = 4
CONNECTIONS_PER_WORKER = 32


# -- 1,000 single-unit reserves from several processes -------------------------------------
def _reserve_in_child(
    url: str, namespace: str, sku: str, wh: str, ids: list[str], coalesce: bool
) -> tuple[list[str], int, list[str]]:
    """Child-process entry point (spawn): returns (held ids, short count, other errors)."""
    return asyncio.run(_reserve_many(url, namespace, sku, wh, ids, coalesce))


async def _reserve_many(
    url: str, namespace: str, sku: str, wh: str, ids: list[str], coalesce: bool
) -> tuple[list[str], int, list[str]]:
    held: list[str] = []
    errors: list[str] = []
    short = 0
    async with open_engine(
        url, namespace, max_connections=CONNECTIONS_PER_WORKER, coalesce=coalesce
    ) as engine:
        client = engine.client
        # Open the whole pool now, then wait at the barrier so every process fires at once.
        await asyncio.gather(*(client.ping() for _ in range(CONNECTIONS_PER_WORKER)))
        await client.rpush(f"{namespace}:ready", b"1")
        assert await client.blpop([f"{namespace}:go"], timeout=120) is not None
        gate = asyncio.Semaphore(CONNECTIONS_PER_WORKER)

        async def one(rid: str) -> None:
            nonlocal short
            async with gate:
                try:
                    await engine.reserve(ReserveRequest(rid, (Line(sku, 1, (wh,)),), 60_000))
                except InsufficientStock:
                    short += 1
                except OnhandError as exc:
                    errors.append(repr(exc))
                else:
                    held.append(rid)

        await asyncio.gather(*(one(rid) for rid in ids))
    return held, short, errors


@pytest.mark.parametrize("coalesce", [False, True], ids=["separate-calls", "coalesced"])
async def test_a_thousand_reserves_from_four_processes_hold_exactly_the_hundred_in_stock(
    redis_url: str, namespace: str, coalesce: bool
) -> None:
    sku, wh = new_id("sku"), new_id("wh")
    ids = [new_id("r") for _ in range(1000)]
    async with open_engine(redis_url, namespace) as engine:
        await engine.receive(sku, wh, 100)
        client = engine.client
        loop = asyncio.get_running_loop()
        samples: list[tuple[int, int, int]] = []
        with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [
                loop.run_in_executor(
                    pool,
                    _reserve_in_child,
                    redis_url,
                    namespace,
                    sku,
                    wh,
                    ids[i::WORKERS],
                    coalesce,
                )
                for i in range(WORKERS)
            ]
            deadline = time.monotonic() + 120
            for _ in range(WORKERS):  # the barrier: every child has its pool open
                while not await client.blpop([f"{namespace}:ready"], timeout=0.5):
                    for future in futures:
                        if future.done():
                            future.result()  # a child that died raises here
                    assert time.monotonic() < deadline, "worker processes did not start"
            await client.rpush(f"{namespace}:go", *[b"1"] * WORKERS)
            gathered = asyncio.gather(*futures)
            while not gathered.done():
                level = await engine.stock_level(sku, wh)
                samples.append((level.on_hand, level.held, level.available))
                await asyncio.sleep(0)
            results = await gathered
        held = [rid for ok, _, _ in results for rid in ok]
        assert [err for _, _, errs in results for err in errs] == []
        assert len(held) == 100
        assert sum(short for _, short, _ in results) == 900
        assert len(samples) >= 3
        assert all(h <= on and avail >= 0 for on, h, avail in samples), samples
        level = await engine.stock_level(sku, wh)
        assert (level.on_hand, level.held, level.available) == (100, 100, 0)
        reserved = [e for e in await engine.events() if e.type is EventType.RESERVED]
        assert len(reserved) == 100
        assert {e.reservation_id for e in reserved} == set(held)


# -- mixed orders racing releases, confirms and expiry --------------------------------------
async def _reap_until(engine: RedisEngine, stop: asyncio.Event, pause: float) -> int:
    total = 0
    while not stop.is_set():
        total += await engine.expire_due()
        await asyncio.sleep(pause)
    return total


@dataclass
class _Mix:
    """Mixed orders against one engine: what happened, and every invariant breach seen."""

    engine: RedisEngine
    skus: list[str]
    whs: list[str]
    on_hand: dict[tuple[str, str], int]
    rng: random.Random = field(default_factory=random.Random)
    confirmed: set[str] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: list[object] = field(default_factory=list)
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(48))

    async def order(self) -> None:
        """Reserve 2-3 lines, then release, confirm or abandon it (to expiry)."""
        rng, engine = self.rng, self.engine
        await asyncio.sleep(rng.uniform(0, 1.5))
        lines = tuple(
            Line(
                sku,
                rng.randint(1, 5),
                tuple(rng.sample(self.whs, rng.randint(1, 3))),
                allow_split=rng.random() < 0.5,
            )
            for sku in rng.sample(self.skus, rng.randint(2, 3))
        )
        rid = new_id("r")
        async with self.gate:
            try:
                await engine.reserve(ReserveRequest(rid, lines, rng.randint(50, 200)))
            except InsufficientStock:
                self.outcomes["short"] += 1
                return
        action = rng.choice(("release", "confirm", "idle"))
        await asyncio.sleep(rng.uniform(0, 0.25))
        async with self.gate:
            try:
                if action == "release":
                    await engine.release(rid)
                elif action == "confirm":
                    await engine.confirm(rid)
                    self.confirmed.add(rid)
                self.outcomes[action] += 1
            except InvalidTransition as exc:
                assert exc.status == "expired"
                self.outcomes[f"{action}-lost"] += 1

    async def sample(self, stop: asyncio.Event) -> None:
        """Read every record (each HMGET is atomic) until told to stop."""
        keys = {rec: self.engine.keys.stock(*rec) for rec in self.on_hand}
        while not stop.is_set():
            async with self.engine.client.pipeline(transaction=False) as pipe:
                for key in keys.values():
                    pipe.hmget(key, ["on", "he", "co"])
                replies = await pipe.execute()
            for rec, raw in zip(keys, replies, strict=True):
                on, he, co = (int(v) for v in raw)
                if min(he, co) < 0 or he + co > on or on != self.on_hand[rec]:
                    self.violations.append((rec, on, he, co))
            self.outcomes["samples"] += 1
            await asyncio.sleep(0.005)


async def test_mixed_orders_racing_releases_and_expiry_never_overcommit_and_replay_exactly(
    redis_url: str, namespace: str
) -> None:
    rng = random.Random()
    skus, whs = [new_id("sku") for _ in range(4)], [new_id("wh") for _ in range(4)]
    async with open_engine(redis_url, namespace) as engine:
        on_hand = {(sku, wh): rng.randint(8, 30) for sku in skus for wh in whs}
        for (sku, wh), qty in on_hand.items():
            await engine.receive(sku, wh, qty)
        mix = _Mix(engine, skus, whs, on_hand, rng)
        stop = asyncio.Event()
        reapers = [asyncio.create_task(_reap_until(engine, stop, 0.005)) for _ in range(2)]
        sampler = asyncio.create_task(mix.sample(stop))
        await asyncio.gather(*(mix.order() for _ in range(400)))
        await asyncio.sleep(0.25)  # longer than any TTL: every hold is now due
        stop.set()
        await asyncio.gather(*reapers, sampler)
        await engine.expire_due()

        assert mix.violations == []
        assert mix.outcomes["samples"] > 10 and mix.outcomes["confirm"] > 0, mix.outcomes
        state = await engine.state()
        committed: Counter[tuple[str, str]] = Counter()
        for rid in mix.confirmed:
            for alloc in state.reservations[rid].allocations:
                committed[(alloc.sku, alloc.warehouse)] += alloc.qty
        assert {rec: (r.on_hand, r.held, r.committed) for rec, r in state.records.items()} == {
            rec: (qty, 0, committed[rec]) for rec, qty in on_hand.items()
        }
        ended = {ReservationStatus.RELEASED, ReservationStatus.EXPIRED}
        for rid, res in state.reservations.items():
            if rid in mix.confirmed:
                assert res.status is ReservationStatus.CONFIRMED, rid
            else:
                assert res.status in ended, (rid, res.status)
        assert state.deadlines == {} and state.holds == {}
        assert await replayed_state(engine) == state
        print(f"\nmixed orders: {dict(mix.outcomes)}")


# -- confirm racing expiry at the deadline --------------------------------------------------
@pytest.mark.timeout(120)
async def test_confirm_racing_two_reapers_at_the_deadline_resolves_each_hold_exactly_once(
    redis_url: str, namespace: str
) -> None:
    rng = random.Random()
    skus = [new_id("sku") for _ in range(5)]
    wh = new_id("wh")
    async with open_engine(redis_url, namespace) as engine:
        for sku in skus:
            await engine.receive(sku, wh, 5_000)
        offset = await redis_clock_offset_ms(engine.client)
        won: dict[str, int] = {}  # rid -> at_ms of the successful confirm
        lost: dict[str, int] = {}  # rid -> at_ms of the InvalidTransition
        deadlines: dict[str, int] = {}
        gate = asyncio.Semaphore(48)

        async def race(i: int) -> None:
            await asyncio.sleep(i * 0.002)
            lines = tuple(
                Line(sku, rng.randint(1, 3), (wh,)) for sku in rng.sample(skus, rng.randint(1, 2))
            )
            rid = new_id("r")
            async with gate:
                res = await engine.reserve(ReserveRequest(rid, lines, rng.randint(100, 300)))
            deadlines[rid] = res.deadline_ms
            fire_at = (res.deadline_ms - offset + rng.uniform(-25, 25)) / 1000
            await asyncio.sleep(max(0.0, fire_at - time.time()))
            try:
                won[rid] = (await engine.confirm(rid)).at_ms
            except InvalidTransition as exc:
                assert exc.status == "expired" and exc.at_ms is not None
                lost[rid] = exc.at_ms

        stop = asyncio.Event()
        reapers = [asyncio.create_task(_reap_until(engine, stop, 0)) for _ in range(2)]
        await asyncio.gather(*(race(i) for i in range(500)))
        stop.set()
        reaped = sum(await asyncio.gather(*reapers))
        await engine.expire_due()

        assert len(won) + len(lost) == 500 and not won.keys() & lost.keys()
        assert won and lost and reaped > 0, (len(won), len(lost), reaped)
        assert all(at < deadlines[rid] for rid, at in won.items())
        assert all(at >= deadlines[rid] for rid, at in lost.items())
        state = await engine.state()
        events = events_by_reservation(await engine.events())
        committed: Counter[str] = Counter()
        for rid in deadlines:
            res = state.reservations[rid]
            kinds = events[rid]
            n = len(res.allocations)
            if rid in won:
                assert res.status is ReservationStatus.CONFIRMED
                assert (len(kinds.get(EventType.CONFIRMED, [])), EventType.EXPIRED in kinds) == (
                    n,
                    False,
                )
                for alloc in res.allocations:
                    committed[alloc.sku] += alloc.qty
            else:
                assert res.status is ReservationStatus.EXPIRED
                assert (len(kinds.get(EventType.EXPIRED, [])), EventType.CONFIRMED in kinds) == (
                    n,
                    False,
                )
                assert all(e.at_ms >= deadlines[rid] for e in kinds[EventType.EXPIRED])
        for sku in skus:
            level = state.record(sku, wh)
            assert (level.on_hand, level.held, level.committed) == (5_000, 0, committed[sku])
        assert state.deadlines == {} and state.holds == {}
        print(f"\nconfirm vs expiry: {len(won)} confirmed, {len(lost)} expired, {reaped} reaped")
