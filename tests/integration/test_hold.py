"""``lua/hold.lua`` and ``hold_many``: the reservation route's one call does exactly what
its separate calls did (real Redis).

The separate calls are the Idempotency-Key record's ``begin``, the admission's ``add``,
``reserve`` and, for a new hold, the record's ``finish`` with the answer the API
renders in Python. Two namespaces get the same stock and clock; one takes an order
the one-call way, the other the separate way; replies, answer bodies, stored records,
hold slots, stock and events must be equal. The other outcomes (a record found, the
client at its limit, a verdict, a bad argument, a fenced partition) are held to the
script's contract: what it answers and what it leaves behind.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio

from onhand.api.idempotency import Idempotency, Stored, Ticket
from onhand.api.routes.reservations import hold_arguments, render
from onhand.domain import Line, ReserveRequest
from onhand.engine.base import ManualClock
from onhand.engine.redis import RedisEngine
from onhand.engine.scripts import Scripts
from tests.conftest import delete_namespace
from tests.integration.support import PARTITIONS, dump_namespace


def next_full_hour_ms() -> int:
    """A fixed clock near the server's, ahead of it: key expiries are absolute (Redis
    time), so each test takes it when it starts. (Taken once at import, it had passed
    when a suite that crossed the hour reached these tests: keys expired at once.)"""
    return (int(time.time()) // 3600 + 1) * 3_600_000


CLIENT = "shop"
FP = "fe" * 32


class World:
    """One namespace: stock of A (W1: 5, W2: 4) and B (W1: 9), an engine on a fixed clock."""

    def __init__(self, client: redis.asyncio.Redis, namespace: str, clock: ManualClock) -> None:
        self.client, self.namespace, self.clock = client, namespace, clock
        self.t0 = clock.now_ms
        self.engine = RedisEngine(client, namespace=namespace, partitions=PARTITIONS, clock=clock)
        self.idem = Idempotency(self.engine, ttl_ms=3_600_000, lock_ms=30_000)
        self.scripts = Scripts(client)

    async def seed(self) -> World:
        await self.engine.mark_ready(0)
        for sku, wh, qty in (("A", "W1", 5), ("A", "W2", 4), ("B", "W1", 9)):
            await self.engine.receive(sku, wh, qty)
        return self

    def ticket(self, key: str, token: str = "tok") -> Ticket:
        return Ticket(self.idem.record_key(CLIENT, key), FP, token)

    def hold_args(
        self, key: str, request: ReserveRequest, limit: int = 10
    ) -> tuple[list[str], list[str]]:
        keys, args = hold_arguments(self.engine, self.idem, self.ticket(key), limit, request)
        return keys, [str(self.clock.now_ms), *args]

    async def hold(self, key: str, request: ReserveRequest, limit: int = 10) -> list[Any]:
        keys, args = self.hold_args(key, request, limit)
        reply: list[Any] = await self.scripts["hold"](keys=keys, args=args)
        return reply

    async def separately(self, key: str, request: ReserveRequest, limit: int = 10) -> bytes:
        """begin, add, reserve and finish — the calls ``hold`` stands for — for an order
        that is admitted and held; returns the body the API answered with."""
        now = str(self.clock.now_ms)
        ticket = self.ticket(key)
        begun = await self.scripts["idempotency"](
            keys=[ticket.redis_key], args=[now, "begin", FP, ticket.token, "30000"]
        )
        assert begun[0] == b"NEW"
        holds = self.engine.keys.client_holds(CLIENT)
        rid = request.reservation_id
        admitted = await self.scripts["admit"](
            keys=[holds], args=[now, "add", rid, str(request.ttl_ms), str(limit)]
        )
        assert admitted[0] == b"OK"
        res = await self.engine.reserve(request)
        body = orjson.dumps(render(res))
        location = {"location": f"/v1/reservations/{rid}"}
        await self.idem.finish(ticket, Stored(201, body, "application/json", location))
        return body

    async def leftovers(self, keys: list[str]) -> list[object]:
        """The Idempotency-Key records of ``keys``, the client's slots and their expiry."""
        holds = self.engine.keys.client_holds(CLIENT)
        records = [await self.client.get(self.idem.record_key(CLIENT, k)) for k in keys]
        slots = await self.client.zrange(holds, 0, -1, withscores=True)
        return [records, slots, await self.client.pexpiretime(holds)]


def _order(rid: str, *lines: Line, ttl_ms: int = 60_000) -> ReserveRequest:
    return ReserveRequest(f"{CLIENT}.{rid}", lines, ttl_ms, owner=CLIENT, actor="key:k1")


@pytest.fixture
async def worlds(
    redis_client: redis.asyncio.Redis, redis_url: str, namespace: str
) -> AsyncIterator[tuple[World, World]]:
    clock = ManualClock(next_full_hour_ms())
    names = (f"{namespace}x", f"{namespace}y")
    try:
        yield tuple([await World(redis_client, n, clock).seed() for n in names])  # type: ignore[misc]
    finally:
        for name in names:
            delete_namespace(redis_url, name)


async def test_a_new_hold_answers_stores_and_changes_what_the_separate_calls_do(
    worlds: tuple[World, World],
) -> None:
    one, separate = worlds
    orders = [
        _order("o1", Line("A", 2, ("W1",))),
        # Split over candidates listed W2 first: the answer lists warehouses by id.
        _order("o2", Line("A", 6, ("W2", "W1"), allow_split=True), Line("B", 1, ("W1",))),
        _order("o3", Line("B", 3, ("W1",)), ttl_ms=5_000),
    ]
    for i, request in enumerate(orders):
        key = f"key-{i}"
        reply = await one.hold(key, request)
        body = await separate.separately(key, request)
        assert reply[0] == b"HELD"
        assert reply[2] == body
        one.clock.advance(10)
    keys = [f"key-{i}" for i in range(len(orders))]
    assert await one.leftovers(keys) == await separate.leftovers(keys)
    assert await one.engine.state() == await separate.engine.state()
    assert await one.engine.events() == await separate.engine.events()


async def test_a_key_with_a_record_answers_found_and_changes_nothing(
    worlds: tuple[World, World],
) -> None:
    world, _ = worlds
    first = await world.hold("k", _order("o1", Line("A", 1, ("W1",))))
    assert first[0] == b"HELD"
    stored = await world.client.get(world.idem.record_key(CLIENT, "k"))
    before = await dump_namespace(world.client, world.namespace)
    again = await world.hold("k", _order("o2", Line("A", 1, ("W1",))))
    assert again == [b"FOUND", str(world.t0).encode(), stored]
    assert await dump_namespace(world.client, world.namespace) == before


async def test_a_client_at_its_limit_gets_full_and_only_a_pending_record(
    worlds: tuple[World, World],
) -> None:
    world, _ = worlds
    assert (await world.hold("k1", _order("o1", Line("A", 1, ("W1",))), limit=1))[0] == b"HELD"
    world.clock.advance(1_000)
    level = await world.engine.stock_level("A", "W1")
    reply = await world.hold("k2", _order("o2", Line("A", 1, ("W1",))), limit=1)
    assert reply == [b"FULL", str(world.t0 + 1_000).encode(), b"59000"]  # o1's slot ends at t0+60s
    assert await world.client.get(world.idem.record_key(CLIENT, "k2")) == f"P|{FP}|tok".encode()
    assert await world.engine.stock_level("A", "W1") == level
    slots = await world.client.zrange(world.engine.keys.client_holds(CLIENT), 0, -1)
    assert slots == [b"shop.o1"]
    # Once o1's slot has passed, the next order is admitted.
    world.clock.advance(60_000)
    assert (await world.hold("k3", _order("o3", Line("A", 1, ("W1",))), limit=1))[0] == b"HELD"


async def test_a_verdict_is_passed_on_with_a_pending_record_and_no_slot(
    worlds: tuple[World, World],
) -> None:
    world, _ = worlds
    short = await world.hold("k1", _order("o1", Line("A", 100, ("W1", "W2"), allow_split=True)))
    assert short == [b"SHORT", str(world.t0).encode(), b"A", b"100", b"9"]
    assert await world.hold("k2", _order("o2", Line("A", 1, ("W1",)))) != []
    repeat = await world.hold("k3", _order("o2", Line("A", 1, ("W1",))))
    assert repeat[0] == b"REPLAY"
    for key in ("k1", "k3"):
        assert await world.client.get(world.idem.record_key(CLIENT, key)) == f"P|{FP}|tok".encode()
    slots = await world.client.zrange(world.engine.keys.client_holds(CLIENT), 0, -1)
    assert slots == [b"shop.o2"]  # the verdicts added none


async def test_a_bad_order_or_a_fenced_partition_changes_nothing(
    worlds: tuple[World, World],
) -> None:
    world, _ = worlds
    before = await dump_namespace(world.client, world.namespace)
    keys, args = world.hold_args("k1", _order("o1", Line("A", 1, ("W1",))))
    args[11] = "0"  # the order's ttl_ms (hold's ARGV[12])
    assert await world.scripts["hold"](keys=keys, args=args) == [
        b"BADARG",
        str(world.t0).encode(),
        b"12",
    ]
    keys, args = world.hold_args("k1", _order("o1", Line("A", 1, ("W1",))))
    args[6] = "/v1/reservations"  # the location prefix must end in '/'
    assert (await world.scripts["hold"](keys=keys, args=args))[:3] == [
        b"BADARG",
        str(world.t0).encode(),
        b"7",
    ]
    assert await dump_namespace(world.client, world.namespace) == before
    await world.client.delete(world.engine.keys.sku_ready("A"))
    before = await dump_namespace(world.client, world.namespace)
    fenced = await world.hold("k2", _order("o2", Line("A", 1, ("W1",))))
    assert fenced[0] == b"NOTREADY"
    assert await dump_namespace(world.client, world.namespace) == before


async def test_a_batch_of_holds_answers_and_changes_what_the_same_holds_one_by_one_do(
    redis_client: redis.asyncio.Redis, worlds: tuple[World, World]
) -> None:
    one, batch = worlds
    orders = [
        ("k1", _order("o1", Line("A", 2, ("W1",)))),
        ("k1", _order("o2", Line("A", 1, ("W1",)))),  # the key has a record: FOUND
        ("k2", _order("o1", Line("A", 2, ("W1",)))),  # the same order again: REPLAY
        ("k3", _order("o3", Line("A", 50, ("W1", "W2"), allow_split=True))),  # SHORT
        ("k4", _order("o4", Line("A", 6, ("W2", "W1"), allow_split=True))),  # sees o1
        ("k5", _order("o5", Line("B", 1, ("W1",)))),  # at the limit of 2: FULL
    ]
    one_by_one = [await one.hold(key, request, limit=2) for key, request in orders]
    calls = [batch.hold_args(key, request, limit=2) for key, request in orders]
    head = [str(len(calls))]
    for k, a in calls:
        head += (str(len(k)), str(len(a)))
    reply = await batch.scripts["hold_many"](
        keys=[key for k, _ in calls for key in k], args=[*head, *(x for _, a in calls for x in a)]
    )
    assert reply[:2] == [b"OK", b"0"]

    def same_namespace(value: object) -> object:
        if isinstance(value, bytes):
            return value.replace(batch.namespace.encode(), one.namespace.encode())
        if isinstance(value, list):
            return [same_namespace(v) for v in value]
        return value

    assert [same_namespace(r) for r in reply[2:]] == one_by_one
    assert [r[0] for r in one_by_one] == [
        b"HELD", b"FOUND", b"REPLAY", b"SHORT", b"HELD", b"FULL"
    ]  # fmt: skip
    keys = [key for key, _ in orders]
    assert await batch.leftovers(keys) == await one.leftovers(keys)
    assert await batch.engine.state() == await one.engine.state()
    assert await batch.engine.events() == await one.engine.events()


async def test_a_batch_whose_orders_read_later_clocks_sweeps_and_expires_slots_as_one_by_one(
    redis_client: redis.asyncio.Redis, worlds: tuple[World, World]
) -> None:
    """Within one call a client's slots are counted, swept and given an expiry once per
    clock reading; an order with a later clock (tests pass one per order) must see its
    own: earlier slots lapse, are swept (the last one deletes the key and its expiry)
    and the next slot sets the expiry again."""
    one, batch = worlds
    plan = [  # (ms to advance before the order, key, order)
        (0, "k1", _order("o1", Line("B", 1, ("W1",)), ttl_ms=1_000)),
        (0, "k2", _order("o2", Line("B", 1, ("W1",)), ttl_ms=2_000)),
        (0, "k3", _order("o3", Line("B", 1, ("W1",)), ttl_ms=500)),  # limit 3: FULL next
        (0, "k4", _order("o4", Line("B", 1, ("W1",)), ttl_ms=1_000)),
        (600, "k5", _order("o5", Line("B", 1, ("W1",)), ttl_ms=1_000)),  # o3's slot lapsed
        (5_000, "k6", _order("o6", Line("B", 1, ("W1",)), ttl_ms=700)),  # every slot lapsed
        (0, "k7", _order("o7", Line("B", 1, ("W1",)), ttl_ms=300)),  # expiry stays o6's
    ]
    start = one.clock.now_ms
    one_by_one, calls = [], []
    for ms, key, request in plan:
        one.clock.advance(ms)  # (one clock for both worlds)
        one_by_one.append(await one.hold(key, request, limit=3))
        calls.append(batch.hold_args(key, request, limit=3))
    one.clock.now_ms = start
    head = [str(len(calls))]
    for k, a in calls:
        head += (str(len(k)), str(len(a)))
    reply = await batch.scripts["hold_many"](
        keys=[key for k, _ in calls for key in k], args=[*head, *(x for _, a in calls for x in a)]
    )
    codes = [r[0] for r in one_by_one]
    assert codes == [b"HELD", b"HELD", b"HELD", b"FULL", b"HELD", b"HELD", b"HELD"]
    assert [r[0] for r in reply[2:]] == codes
    keys = [key for _, key, _ in plan]
    assert await batch.leftovers(keys) == await one.leftovers(keys)
    assert await batch.engine.state() == await one.engine.state()
