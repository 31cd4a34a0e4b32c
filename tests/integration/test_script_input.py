"""Bad input at the script level: every Lua script checks its own ARGV and KEYS.

Each case calls one script directly (FCALL of its library function) with arguments that
are valid except for one, and expects ``{'BADARG', now_ms, index}`` and a namespace
that is byte-for-byte unchanged (TYPE and DUMP of every key).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio

from onhand.domain import Line, ReserveRequest
from onhand.engine.redis import RedisEngine
from onhand.engine.scripts import SCRIPT_NAMES, Scripts
from onhand.keys import Keys
from tests.integration.support import PARTITIONS, dump_namespace, new_id

MAX_QTY, MAX_STOCK, MAX_TTL_MS = 10**9, 2**53 - 1, 86_400_000

NUMBERS = [
    ("zero", "0"), ("minus-one", "-1"), ("fraction", "1.5"), ("nan", "nan"), ("inf", "inf"),
    ("hex", "0x10"), ("exponent", "1e3"), ("leading-space", " 7"), ("trailing-space", "7 "),
    ("2^53", "9007199254740992"), ("huge", "1" + "0" * 31), ("empty", ""), ("minus-zero", "-0"),
    ("leading-zero", "007"),
]  # fmt: skip
IDS = [
    ("empty", ""), ("65-chars", "a" * 65), ("colon", "a:b"), ("braces", "a{b}"),
    ("hash-tag", "{p1}"), ("space", "a b"), ("newline", "a\nb"), ("non-ascii", "é"),
    ("10KB", "x" * 10240),
]  # fmt: skip
TEXTS = [("newline", "a\nb"), ("non-ascii", "é"), ("129-chars", "x" * 129), ("nul", "a\x00b"),
         ("del", "\x7f")]  # fmt: skip
FLAGS = [("two", "2"), ("empty", ""), ("true", "true"), ("padded", " 1"), ("leading-zero", "01")]
PATHS = [("no-slash", "/v1/reservations"), ("quote", 'a"/'), ("space", "a b/"),
         ("non-ascii", "é/"), ("65-chars", "x" * 64 + "/"), ("empty", "")]  # fmt: skip
FINGERPRINTS = [("empty", ""), ("upper", "AB" * 32), ("non-hex", "g" * 64), ("63", "a" * 63),
                ("65", "a" * 65), ("newline", "a" * 63 + "\n")]  # fmt: skip


@dataclass(frozen=True)
class World:
    """The seeded namespace: records of two SKUs, a pending and a confirmed reservation."""

    k: Keys
    a: str = field(default_factory=lambda: new_id("a"))
    b: str = field(default_factory=lambda: new_id("b"))
    w1: str = field(default_factory=lambda: new_id("w"))
    w2: str = field(default_factory=lambda: new_id("w"))
    pending: str = field(default_factory=lambda: new_id("p"))
    confirmed: str = field(default_factory=lambda: new_id("c"))
    fresh: str = field(default_factory=lambda: new_id("r"))

    def record(self) -> list[str]:
        k, a = self.k, self.a
        return [k.stock(a, self.w1), k.sku(a), k.warehouses(a), k.sku_stream(a), k.sku_ready(a)]

    def reserve(self) -> list[str]:
        k, a, b, w1, w2, rid = self.k, self.a, self.b, self.w1, self.w2, self.fresh
        keys = [k.reservation(rid), k.reservation_deadlines(rid), k.reservation_ready(rid)]
        keys += [k.sku(a), k.warehouses(a), k.holds(a), k.sku_stream(a), k.sku_ready(a)]
        keys += [k.stock(a, w1), k.stock(a, w2)]
        keys += [k.sku(b), k.warehouses(b), k.holds(b), k.sku_stream(b), k.sku_ready(b)]
        return [*keys, k.stock(b, w1)]

    def header(self, rid: str) -> list[str]:
        return [self.k.reservation(rid), self.k.reservation_ready(rid)]


# Valid calls: script -> (KEYS, ARGV); ARGV[1] is the clock ('0' = server time).
BASE: dict[str, Callable[[World], tuple[list[str], list[str]]]] = {
    "receive": lambda w: (w.record(), ["0", w.a, w.w1, "5", "po-1", "tester"]),
    "adjust": lambda w: (w.record(), ["0", w.a, w.w1, "2", "found", "ref", "tester"]),
    "set_count": lambda w: (w.record(), ["0", w.a, w.w1, "40", "1", "ref", "tester"]),
    "transfer": lambda w: (
        [w.k.stock(w.a, w.w1), w.k.stock(w.a, w.w2), *w.record()[1:]],
        ["0", w.a, w.w1, w.w2, "1", "ref", "tester"]),
    "set_safety_stock": lambda w: (w.record(), ["0", w.a, w.w1, "1", "tester"]),
    "set_policy": lambda w: (
        [w.k.sku(w.a), w.k.sku_stream(w.a), w.k.sku_ready(w.a)],
        ["0", w.a, *"000000", "1000", "tester"]),
    "reserve": lambda w: (w.reserve(), [
        "0", "86400000", w.fresh, "ab" * 32, "60000", "7200000", "own-1", "tester", "2",
        w.a, "1", "0", "2", w.w1, w.w2, w.b, "1", "1", "1", w.w1]),
    "reserve_many": lambda w: _one_order_batch(*BASE["reserve"](w)),
    "hold": lambda w: _hold(*BASE["reserve"](w), w),
    "hold_many": lambda w: _one_order_batch(*BASE["hold"](w)),
    "confirm": lambda w: (w.header(w.pending), ["0", "86400000", "tester"]),
    "release": lambda w: (w.header(w.pending), ["0", "86400000", "tester"]),
    "extend": lambda w: (w.header(w.pending), ["0", "86400000", "1000", "tester"]),
    "fulfill": lambda w: (w.header(w.confirmed), ["0", "86400000", "tester"]),
    "cancel": lambda w: (w.header(w.confirmed), ["0", "86400000", "tester"]),
    "expire": lambda w: (
        [w.k.reservation_deadlines(w.pending), w.k.reservation_ready(w.pending)],
        ["0", "86400000", "100"]),
    "mark_ready": lambda w: (w.k.all_ready(), ["0", "0"]),
    "repair": lambda w: (w.record(), ["0", w.a, w.w1, "4", "20", "2", "2", "0", "4", "t"]),
    "load": lambda w: ([w.k.prefix(0) + "scratch"], ["0", "hash", "1", "f", "v"]),
    "digest": lambda w: ([w.k.stock(w.a, w.w1)], ["0", "hash", "2", "on", "he"]),
    "admit": lambda w: ([w.k.client_holds("c1")], ["0", "add", w.fresh, "60000", "10"]),
    "idempotency": lambda w: (
        [w.k.idempotency("c1", "ab" * 32)], ["0", "begin", "fp", "token", "60000"]),
    "read": lambda w: (
        [w.k.sku_ready(w.a), w.k.sku(w.a), w.k.warehouses(w.a)],
        ["0", "1", "hs", "2", "bo", "po", "0"]),
}  # fmt: skip


def _hold(keys: list[str], args: list[str], w: World) -> tuple[list[str], list[str]]:
    """hold's KEYS and ARGV for the reserve call ``keys``, ``args`` (the order's owner
    own-1's slots, a record of its own)."""
    record = w.k.idempotency("own-1", "cd" * 32)
    head = ["fe" * 32, "tok", "60000", "86400000", "10", "/v1/reservations/"]
    return [w.k.client_holds("own-1"), record, *keys], [args[0], *head, *args[1:]]


def _one_order_batch(keys: list[str], args: list[str]) -> tuple[list[str], list[str]]:
    """reserve_many's (hold_many's) KEYS and ARGV for the one call ``keys``, ``args``."""
    return keys, ["1", str(len(keys)), str(len(args)), *args]


# script -> {ARGV index: kind}; kinds are ("int", lo, hi), "id", "opt_id", "text", "flag", "fp",
# "path".
Kind = tuple[str, int, int] | str
QTY, STOCK, TTL = ("int", 1, MAX_QTY), ("int", 0, MAX_STOCK), ("int", 1, MAX_TTL_MS)
RETENTION = ("int", 1, MAX_STOCK)
RESERVE_SLOTS: dict[int, Kind] = {
    2: RETENTION, 3: "id", 4: "fp", 5: TTL, 6: RETENTION, 7: "opt_id", 8: "text",
    9: ("int", 1, 100), 10: "id", 11: QTY, 12: "flag", 13: ("int", 1, 32),
    14: "id", 15: "id", 16: "id", 17: QTY, 18: "flag", 19: ("int", 1, 32), 20: "id",
}  # fmt: skip
SLOTS: dict[str, dict[int, Kind]] = {
    "receive": {2: "id", 3: "id", 4: QTY, 5: "text", 6: "text"},
    "adjust": {2: "id", 3: "id", 4: QTY, 6: "text", 7: "text"},
    "set_count": {2: "id", 3: "id", 4: STOCK, 5: STOCK, 6: "text", 7: "text"},
    "transfer": {2: "id", 3: "id", 4: "id", 5: QTY, 6: "text", 7: "text"},
    "set_safety_stock": {2: "id", 3: "id", 4: STOCK, 5: "text"},
    "set_policy": {2: "id", 3: STOCK, 4: STOCK, 5: STOCK, 6: STOCK, 7: STOCK,
                   8: ("int", 0, 3650), 9: QTY, 10: "text"},
    "reserve": RESERVE_SLOTS,
    "reserve_many": {2: ("int", 1, 10), 3: ("int", 1, 21)},
    "hold": {2: "fp", 3: "text", 4: TTL, 5: RETENTION, 6: QTY, 7: "path",
             **{i + 6: kind for i, kind in RESERVE_SLOTS.items()}},
    "hold_many": {2: ("int", 1, 18), 3: ("int", 1, 26)},
    "confirm": {2: RETENTION, 3: "text"},
    "release": {2: RETENTION, 3: "text"},
    "extend": {2: RETENTION, 3: TTL, 4: "text"},
    "fulfill": {2: RETENTION, 3: "text"},
    "cancel": {2: RETENTION, 3: "text"},
    "expire": {2: RETENTION, 3: ("int", 1, 10_000)},
    "mark_ready": {2: STOCK},
    "repair": {2: "id", 3: "id", 4: STOCK, 5: STOCK, 6: STOCK, 7: STOCK, 8: STOCK,
               9: ("int", 0, MAX_STOCK - 1), 10: "text"},
    "load": {3: ("int", 1, 64)},
    "digest": {3: ("int", 1, 64)},
    "admit": {3: "id", 4: TTL, 5: QTY},
    "idempotency": {3: "text", 4: "text", 5: TTL},
    "read": {2: ("int", 0, 16384), 4: ("int", 0, 64), 7: ("int", 0, 64)},
}  # fmt: skip


def _valid_int(value: str, lo: int, hi: int) -> bool:
    return re.fullmatch(r"0|-?[1-9][0-9]*", value) is not None and lo <= int(value) <= hi


def _bad_values(kind: Kind) -> list[tuple[str, str]]:
    if isinstance(kind, tuple):
        return [(label, v) for label, v in NUMBERS if not _valid_int(v, kind[1], kind[2])]
    if kind == "opt_id":
        return [(label, v) for label, v in IDS if v]
    lists = {"id": IDS, "text": TEXTS, "flag": FLAGS, "fp": FINGERPRINTS, "path": PATHS}
    return lists[kind]


@dataclass(frozen=True)
class Case:
    """One call: BASE[script] with ``argv`` replaced (1-based), KEYS grown or shrunk."""

    script: str
    argv: tuple[tuple[int, str], ...]
    index: str  # the ARGV index the script must name
    keys_delta: int = 0
    argv_extra: tuple[str, ...] = ()


def _cases() -> Iterator[object]:
    for script in SCRIPT_NAMES:
        clock = [(label, v) for label, v in NUMBERS if v != "0" and not _valid_int(v, 1, MAX_STOCK)]
        for label, value in clock:
            yield pytest.param(Case(script, ((1, value),), "1"), id=f"{script}-clock-{label}")
        for i, kind in SLOTS[script].items():
            for label, value in _bad_values(kind):
                yield pytest.param(Case(script, ((i, value),), str(i)), id=f"{script}-{i}-{label}")
    special = {
        "adjust-reason-bogus": Case("adjust", ((5, "bogus"),), "5"),
        "adjust-reason-empty": Case("adjust", ((5, ""),), "5"),
        "adjust-delta-zero-for-correction": Case("adjust", ((4, "0"), (5, "correction")), "4"),
        "adjust-negative-delta-for-found": Case("adjust", ((4, "-2"),), "4"),
        "adjust-positive-delta-for-damaged": Case("adjust", ((5, "damaged"),), "4"),
        "transfer-same-source-and-destination": Case("transfer", ((4, "<w1>"),), "4"),
        "reserve-one-line-for-two": Case("reserve", ((9, "1"),), "9"),
        "reserve-a-key-missing": Case("reserve", (), "9", keys_delta=-1),
        "reserve-a-key-too-many": Case("reserve", (), "9", keys_delta=1),
        "reserve-an-argument-too-many": Case("reserve", (), "9", argv_extra=("x",)),
        "reserve-duplicate-sku": Case("reserve", ((16, "<a>"),), "16"),
        "reserve-duplicate-candidate": Case("reserve", ((15, "<w1>"),), "15"),
        "reserve-33-candidates": Case("reserve", ((13, "33"),), "13"),
        "read-unknown-plan-letter": Case("read", ((3, "hx"),), "3"),
        "read-plan-longer-than-the-keys": Case("read", ((3, "hsh"),), "3"),
        "read-field-list-b-used-but-empty": Case("read", ((3, "Hs"),), "7"),
    }
    for name, case in special.items():
        yield pytest.param(case, id=name)


@pytest.fixture
async def world(redis_client: redis.asyncio.Redis, namespace: str) -> World:
    """Stock, a pending and a confirmed two-line reservation, all in ``namespace``."""
    engine = RedisEngine(redis_client, namespace=namespace, partitions=PARTITIONS)
    await engine.mark_ready(0)
    w = World(engine.keys)
    for sku in (w.a, w.b):
        for wh in (w.w1, w.w2):
            await engine.receive(sku, wh, 20)
    lines = (Line(w.a, 2, (w.w1, w.w2)), Line(w.b, 1, (w.w1,)))
    for rid in (w.pending, w.confirmed):
        await engine.reserve(ReserveRequest(rid, lines, 600_000))
    await engine.confirm(w.confirmed)
    return w


async def _call(
    client: redis.asyncio.Redis, script: str, keys: list[str], args: list[str]
) -> list[bytes]:
    reply = await Scripts(client)[script](keys=keys, args=args)
    assert isinstance(reply, list)
    return reply


@pytest.mark.parametrize("case", list(_cases()))
async def test_a_malformed_argument_is_rejected_by_the_script_and_changes_nothing(
    redis_client: redis.asyncio.Redis, namespace: str, world: World, case: Case
) -> None:
    keys, args = BASE[case.script](world)
    names = {"<a>": world.a, "<w1>": world.w1}
    for i, value in case.argv:
        args[i - 1] = names.get(value, value)
    if case.keys_delta < 0:
        keys = keys[: case.keys_delta]
    keys += [f"{namespace}:{{p0}}:extra"] * max(0, case.keys_delta)
    before = await dump_namespace(redis_client, namespace)
    reply = await _call(redis_client, case.script, keys, [*args, *case.argv_extra])
    assert reply[0] == b"BADARG" and reply[2] == case.index.encode(), reply
    assert await dump_namespace(redis_client, namespace) == before


@pytest.mark.parametrize("script", SCRIPT_NAMES)
async def test_the_unaltered_arguments_of_each_case_are_accepted_by_the_script(
    redis_client: redis.asyncio.Redis, world: World, script: str
) -> None:
    keys, args = BASE[script](world)
    reply = await _call(redis_client, script, keys, args)
    assert reply[0] in (b"OK", b"REPLAY", b"VERSION", b"NEW", b"HELD"), reply  # not BADARG
