"""Differential, stateful: the Redis engine and the in-memory specification side by side.

Hypothesis drives both engines with the same operations over a small universe (3 SKUs,
3 warehouses, 12 reservation ids) and one shared ManualClock. Every operation must have
the same outcome on both (equal return value, or the same exception type with equal key
attributes); after every step both engines must hold equal states and equal events, and
the counters must add up to the reservations that hold them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ClassVar

import pytest
import redis.asyncio
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from onhand.domain import (
    ADJUST_REASONS,
    MAX_QTY,
    MAX_STOCK,
    Line,
    ReservationStatus,
    ReserveRequest,
    SkuPolicy,
)
from onhand.engine.base import ManualClock, StockEngine
from onhand.errors import OnhandError
from onhand.events import Event
from onhand.state import State
from tests.engines import make_engine, make_ready

# Generous timeout: after a failure, Hypothesis shrinks (re-running many examples).
pytestmark = [pytest.mark.redis, pytest.mark.timeout(900)]

SKUS = ("sku-a", "sku-b", "sku-c")  # partitions 2, 0, 6 of 8
WAREHOUSES = ("wh-1", "wh-2", "wh-3")
RESERVATIONS = tuple(f"res-{i}" for i in range(12))  # spread over the 8 partitions
# The attributes of onhand's exceptions that callers act on (compared across engines).
ERROR_ATTRS = (
    "at_ms",
    "field",
    "sku",
    "warehouse",
    "requested",
    "limit",
    "shortfalls",
    "reservation_id",
    "status",
    "action",
    "expected",
    "actual",
)

skus = st.sampled_from(SKUS)
warehouses = st.sampled_from(WAREHOUSES)
reservation_ids = st.sampled_from(RESERVATIONS)
small = st.integers(1, 12)
ttls = st.sampled_from([1, 1_000, 5_000, 60_000, 3 * 3_600_000])
candidates = st.lists(warehouses, min_size=1, max_size=3, unique=True).map(tuple)
lines = st.lists(
    st.builds(Line, skus, st.integers(1, 6), candidates, st.booleans()),
    min_size=1,
    max_size=3,
    unique_by=lambda ln: ln.sku,
).map(tuple)


@dataclasses.dataclass(frozen=True)
class Failed:
    """An exception as an outcome: its type and the attributes a caller acts on."""

    type: type[BaseException]
    attrs: tuple[tuple[str, object], ...]
    message: str = dataclasses.field(default="", compare=False)

    @classmethod
    def of(cls, exc: OnhandError) -> Failed:
        attrs = tuple((a, getattr(exc, a)) for a in ERROR_ATTRS if hasattr(exc, a))
        return cls(type(exc), attrs, str(exc))


async def outcome(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except OnhandError as exc:
        return Failed.of(exc)


def state_diff(got: State, want: State) -> str:
    """Which entries of two states differ (redis = got, memory = want)."""
    out = []
    for f in dataclasses.fields(State):
        a, b = getattr(got, f.name), getattr(want, f.name)
        for key in sorted(set(a) | set(b), key=repr):
            if a.get(key) != b.get(key):
                out.append(f"{f.name}[{key!r}]: redis={a.get(key)!r} memory={b.get(key)!r}")
    return "\n".join(out)


class EngineMachine(RuleBasedStateMachine):
    """RedisEngine vs MemoryEngine; see the module docstring."""

    redis_url: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        if self.redis_url is None:
            raise RuntimeError("the redis_url fixture did not run")
        self.loop = asyncio.new_event_loop()
        self.client = redis.asyncio.Redis.from_url(self.redis_url, decode_responses=False)
        self.namespace = "s" + uuid.uuid4().hex[:10]
        self.clock = ManualClock()
        self.memory = make_engine("memory", clock=self.clock, namespace=self.namespace)
        self.redis = make_engine(
            "redis", clock=self.clock, redis_client=self.client, namespace=self.namespace
        )
        try:
            self.loop.run_until_complete(make_ready(self.redis))
        except BaseException:
            self.teardown()
            raise
        self.requests: dict[str, ReserveRequest] = {}
        self._states: tuple[State, State] | None = None

    def teardown(self) -> None:
        async def close() -> None:
            try:
                batch = [k async for k in self.client.scan_iter(f"{self.namespace}:*", 1000)]
                for start in range(0, len(batch), 500):
                    await self.client.unlink(*batch[start : start + 500])
            finally:
                await self.client.aclose()

        try:
            self.loop.run_until_complete(close())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    # -- running both --------------------------------------------------------------------
    def run(self, call: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(call)

    def both(self, what: str, op: Callable[[StockEngine], Awaitable[Any]]) -> Any:
        """Run ``op`` on both engines at the same clock reading; outcomes must be equal."""
        self._states = None
        want = self.run(outcome(op(self.memory)))
        got = self.run(outcome(op(self.redis)))
        assert got == want, f"{what} @ {self.clock.now_ms}:\n redis:  {got!r}\n memory: {want!r}"
        kind = want.type.__name__ if isinstance(want, Failed) else "ok"
        event(f"{what.split('(')[0]} -> {kind}")  # see --hypothesis-show-statistics
        return want

    def states(self) -> tuple[State, State]:
        if self._states is None:
            self._states = (self.run(self.redis.state()), self.run(self.memory.state()))
        return self._states

    # -- stock operations ----------------------------------------------------------------
    @initialize(
        stock=st.lists(
            st.integers(0, 12),
            min_size=len(SKUS) * len(WAREHOUSES),
            max_size=len(SKUS) * len(WAREHOUSES),
        )
    )
    def stock_up(self, stock: list[int]) -> None:
        pairs = [(sku, wh) for sku in SKUS for wh in WAREHOUSES]
        for (sku, wh), qty in zip(pairs, stock, strict=True):
            if qty:
                self.receive(sku, wh, qty)

    @rule(sku=skus, wh=warehouses, qty=small)
    def receive(self, sku: str, wh: str, qty: int) -> None:
        self.both(f"receive({sku}, {wh}, {qty})", lambda e: e.receive(sku, wh, qty, actor="m"))

    @rule(
        sku=skus,
        wh=warehouses,
        reason=st.sampled_from(sorted(ADJUST_REASONS)),
        size=small,
        negative=st.booleans(),
    )
    def adjust(self, sku: str, wh: str, reason: str, size: int, negative: bool) -> None:
        delta = -size if negative else size
        self.both(
            f"adjust({sku}, {wh}, {delta}, {reason})",
            lambda e: e.adjust(sku, wh, delta, reason=reason, reference="adj"),
        )

    @rule(
        sku=skus,
        wh=warehouses,
        count=st.integers(0, 15) | st.just(MAX_STOCK - 3),
        stale=st.sampled_from([0, 0, 0, 1, -1, 7]),
    )
    def set_count(self, sku: str, wh: str, count: int, stale: int) -> None:
        version = max(0, self.memory_version(sku, wh) + stale)
        self.both(
            f"set_count({sku}, {wh}, {count}, expected_version={version})",
            lambda e: e.set_count(sku, wh, count, expected_version=version),
        )

    @rule(sku=skus, source=warehouses, destination=warehouses, qty=small)
    def transfer(self, sku: str, source: str, destination: str, qty: int) -> None:
        self.both(
            f"transfer({sku}, {source} -> {destination}, {qty})",
            lambda e: e.transfer(sku, source, destination, qty),
        )

    @rule(sku=skus, wh=warehouses, qty=st.integers(0, 6))
    def set_safety_stock(self, sku: str, wh: str, qty: int) -> None:
        self.both(
            f"set_safety_stock({sku}, {wh}, {qty})", lambda e: e.set_safety_stock(sku, wh, qty)
        )

    @rule(
        sku=skus,
        backorder=st.sampled_from([0, 2, 6]),
        preorder=st.sampled_from([0, 0, 3]),
        release_in=st.sampled_from([-5_000, 0, 1_000, 60_000]),
        reorder=st.sampled_from([0, 2, 5]),
        max_line=st.sampled_from([MAX_QTY, MAX_QTY, 3, 6]),
        reorder_qty=st.integers(0, 3),
    )
    def set_policy(
        self,
        sku: str,
        backorder: int,
        preorder: int,
        release_in: int,
        reorder: int,
        max_line: int,
        reorder_qty: int,
    ) -> None:
        policy = SkuPolicy(
            backorder_limit=backorder,
            preorder_limit=preorder,
            preorder_release_ms=max(0, self.clock.now_ms + release_in),
            reorder_point=reorder,
            reorder_qty=reorder_qty,
            lead_time_days=2,
            max_line_qty=max_line,
        )
        self.both(f"set_policy({sku}, {policy})", lambda e: e.set_policy(sku, policy, actor="p"))

    # -- reservations --------------------------------------------------------------------
    def reserve_both(self, request: ReserveRequest) -> None:
        self.requests[request.reservation_id] = request
        self.both(f"reserve({request})", lambda e: e.reserve(request))

    @rule(rid=reservation_ids, order_lines=lines, ttl=ttls, owner=st.sampled_from(["", "u1"]))
    def reserve(self, rid: str, order_lines: tuple[Line, ...], ttl: int, owner: str) -> None:
        self.reserve_both(ReserveRequest(rid, order_lines, ttl, owner=owner, actor="web"))

    @rule(rid=reservation_ids, sku=skus, qty=st.integers(1, 3), ttl=ttls)
    def reserve_a_little_anywhere(self, rid: str, sku: str, qty: int, ttl: int) -> None:
        line = Line(sku, qty, WAREHOUSES, allow_split=True)
        self.reserve_both(ReserveRequest(rid, (line,), ttl))

    @precondition(lambda self: bool(self.requests))
    @rule(data=st.data())
    def retry_the_same_reservation(self, data: st.DataObject) -> None:
        request = self.requests[data.draw(st.sampled_from(sorted(self.requests)))]
        actor = data.draw(st.sampled_from(["web", "retry"]))  # not part of the payload
        self.reserve_both(dataclasses.replace(request, actor=actor))

    @precondition(lambda self: bool(self.requests))
    @rule(data=st.data(), change=st.sampled_from(["qty", "ttl", "owner", "split", "candidates"]))
    def retry_with_another_payload(self, data: st.DataObject, change: str) -> None:
        request = self.requests[data.draw(st.sampled_from(sorted(self.requests)))]
        first = request.lines[0]
        if change == "qty":
            first = dataclasses.replace(first, qty=first.qty + 1)
        elif change == "split":
            first = dataclasses.replace(first, allow_split=not first.allow_split)
        elif change == "candidates":
            rest = tuple(w for w in WAREHOUSES if w not in first.warehouses)
            more = first.warehouses + rest[:1] if rest else first.warehouses[:-1]
            first = dataclasses.replace(first, warehouses=more or ("wh-1",))
        ttl = request.ttl_ms + 1 if change == "ttl" else request.ttl_ms
        owner = ("u2" if request.owner != "u2" else "") if change == "owner" else request.owner
        lines_ = (first, *request.lines[1:])
        self.reserve_both(dataclasses.replace(request, lines=lines_, ttl_ms=ttl, owner=owner))

    def pick_reservation(self, data: st.DataObject) -> str:
        """Mostly a reservation the engines know; sometimes any id (maybe unknown)."""
        known = sorted(self.memory_state().reservations)
        use_known: int = data.draw(st.integers(0, 4), label="known?")
        if known and use_known:
            return data.draw(st.sampled_from(known), label="reservation")
        return data.draw(reservation_ids, label="reservation")

    def transition(self, data: st.DataObject, action: str) -> None:
        rid = self.pick_reservation(data)
        self.both(f"{action}({rid})", lambda e: getattr(e, action)(rid, actor="ops"))

    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        self.transition(data, "confirm")

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        self.transition(data, "release")

    @rule(data=st.data())
    def fulfill(self, data: st.DataObject) -> None:
        self.transition(data, "fulfill")

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.transition(data, "cancel")

    @rule(data=st.data(), ttl=st.sampled_from([1, 1_000, 30_000, 3_600_000, 86_400_000]))
    def extend(self, data: st.DataObject, ttl: int) -> None:
        rid = self.pick_reservation(data)
        self.both(f"extend({rid}, {ttl})", lambda e: e.extend(rid, ttl, actor="ops"))

    # -- time ------------------------------------------------------------------------------
    @rule(data=st.data(), ms=st.sampled_from([1, 999, 1_000, 5_000, 60_000, 3_600_000]))
    def advance_clock(self, data: st.DataObject, ms: int) -> None:
        """By ``ms``, or (when there are pending holds) to one of their deadlines ±1."""
        deadlines = sorted(set(self.memory_state().deadlines.values()))
        to_a_deadline: bool = data.draw(st.booleans(), label="to a deadline?")
        if deadlines and to_a_deadline:
            deadline = data.draw(st.sampled_from(deadlines), label="deadline")
            offset = data.draw(st.sampled_from([-1, 0, 0, 1]), label="offset")
            self.clock.now_ms = max(self.clock.now_ms, deadline + offset)
        else:
            self.clock.advance(ms)

    @rule()
    def reap(self) -> None:
        self.both("expire_due()", lambda e: e.expire_due())

    # -- reads -----------------------------------------------------------------------------
    @rule(data=st.data(), sku=skus, wh=warehouses)
    def read(self, data: st.DataObject, sku: str, wh: str) -> None:
        self.both(f"availability({sku})", lambda e: e.availability(sku))
        self.both(f"stock_level({sku}, {wh})", lambda e: e.stock_level(sku, wh))
        rid = self.pick_reservation(data)
        self.both(f"get_reservation({rid})", lambda e: e.get_reservation(rid))

    # -- helpers and invariants ------------------------------------------------------------
    def memory_state(self) -> State:
        return self.run(self.memory.state())  # type: ignore[no-any-return]

    def memory_version(self, sku: str, wh: str) -> int:
        return self.memory_state().record(sku, wh).version

    @invariant()
    def both_engines_hold_the_same_state(self) -> None:
        got, want = self.states()
        assert got == want, f"states differ:\n{state_diff(got, want)}"

    @invariant()
    def both_engines_recorded_the_same_events(self) -> None:
        # A multiset: the order across partition streams is not comparable.
        got: Counter[Event] = Counter(self.run(self.redis.events()))
        want: Counter[Event] = Counter(self.run(self.memory.events()))
        assert got == want, f"only redis: {got - want}\nonly memory: {want - got}"

    @invariant()
    def counters_are_never_negative_and_add_up_to_the_reservations(self) -> None:
        for state in self.states():
            held: Counter[tuple[str, str]] = Counter()
            committed: Counter[tuple[str, str]] = Counter()
            for r in state.reservations.values():
                for a in r.allocations:
                    if r.status is ReservationStatus.PENDING:
                        held[(a.sku, a.warehouse)] += a.qty
                    elif r.status is ReservationStatus.CONFIRMED:
                        committed[(a.sku, a.warehouse)] += a.qty
            for key, rec in state.records.items():
                assert min(rec.on_hand, rec.held, rec.committed, rec.safety_stock) >= 0, (key, rec)
                assert (rec.held, rec.committed) == (held[key], committed[key]), (key, rec)


@pytest.fixture(autouse=True)
def _machine_redis_url(redis_url: str) -> Iterator[None]:
    """Hand the session's Redis to the machine (a unittest-style test takes no fixtures)."""
    EngineMachine.redis_url = redis_url
    yield
    EngineMachine.redis_url = None


EngineMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestEngines = EngineMachine.TestCase
