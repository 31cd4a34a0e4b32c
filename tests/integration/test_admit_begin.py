"""``lua/admit.lua`` mode ``begin``: the Idempotency-Key begin and the admission in one call.

Its contract (the script header): a key that has a record answers ``FOUND`` with the
record and admits nothing; otherwise the record becomes pending and the reply is the
``add`` reply (``OK`` admitted, ``FULL`` at the limit, nothing admitted). Every argument
is checked before the first write.
"""

from __future__ import annotations

import pytest
import redis.asyncio

from onhand.engine.scripts import script_source
from onhand.keys import Keys
from tests.integration.support import PARTITIONS, dump_namespace, new_id


def _keys(namespace: str) -> tuple[str, str]:
    k = Keys(namespace, PARTITIONS)
    return k.client_holds("c1"), k.idempotency("c1", "ab" * 32)


def _args(rid: str, *, limit: str = "2", token: str = "tok") -> list[str]:
    # clock (Redis TIME), mode, reservation id, ttl_ms, limit, fingerprint, token, lock_ms
    return ["0", "begin", rid, "60000", limit, "fp", token, "30000"]


async def _call(client: redis.asyncio.Redis, keys: list[str], args: list[str]) -> list[bytes]:
    reply = await client.eval(script_source("admit"), len(keys), *keys, *args)
    assert isinstance(reply, list)
    return reply


async def test_a_new_key_is_taken_pending_and_the_order_admitted(
    redis_client: redis.asyncio.Redis, namespace: str
) -> None:
    holds, idem = _keys(namespace)
    reply = await _call(redis_client, [holds, idem], _args("c1.o1"))
    assert (reply[0], reply[2]) == (b"OK", b"1")
    assert await redis_client.get(idem) == b"P|fp|tok"
    assert 0 < await redis_client.pttl(idem) <= 30_000
    assert await redis_client.zscore(holds, "c1.o1") == int(reply[1]) + 60_000


async def test_a_key_with_a_record_answers_found_and_admits_nothing(
    redis_client: redis.asyncio.Redis, namespace: str
) -> None:
    holds, idem = _keys(namespace)
    await redis_client.set(idem, b'D|fp|{"s":201}', px=60_000)
    before = await dump_namespace(redis_client, namespace)
    reply = await _call(redis_client, [holds, idem], _args("c1.o1", token="other"))
    assert (reply[0], reply[2]) == (b"FOUND", b'D|fp|{"s":201}')
    assert await dump_namespace(redis_client, namespace) == before
    # A pending record (the first request still running) is found the same way.
    await redis_client.set(idem, b"P|fp|tok", px=60_000)
    reply = await _call(redis_client, [holds, idem], _args("c1.o2", token="other"))
    assert (reply[0], reply[2]) == (b"FOUND", b"P|fp|tok")
    assert await redis_client.zcard(holds) == 0


async def test_at_the_limit_the_key_is_pending_and_the_reply_is_full(
    redis_client: redis.asyncio.Redis, namespace: str
) -> None:
    holds, idem = _keys(namespace)
    now_ms = int((await redis_client.time())[0]) * 1000
    await redis_client.zadd(holds, {"c1.a": now_ms + 50_000, "c1.b": now_ms + 90_000})
    reply = await _call(redis_client, [holds, idem], _args("c1.o1"))
    assert reply[0] == b"FULL"
    assert int(reply[2]) == now_ms + 50_000 - int(reply[1])  # the earliest hold's deadline
    assert await redis_client.get(idem) == b"P|fp|tok"  # the 429 is stored under it
    assert await redis_client.zscore(holds, "c1.o1") is None


ARG_CASES = [
    (3, "a b"), (3, ""), (4, "0"), (4, "86400001"), (4, "1.5"), (5, "0"), (5, "1000000001"),
    (6, "a\nb"), (6, "x" * 129), (7, "é"), (8, "0"), (8, "86400001"), (8, "-1"), (2, "bogus"),
]  # fmt: skip


@pytest.mark.parametrize(("index", "value"), ARG_CASES)
async def test_a_malformed_argument_is_rejected_and_changes_nothing(
    redis_client: redis.asyncio.Redis, namespace: str, index: int, value: str
) -> None:
    holds, idem = _keys(namespace)
    await redis_client.zadd(holds, {"c1.a": 2**40})
    before = await dump_namespace(redis_client, namespace)
    args = _args(new_id("r"))
    args[index - 1] = value
    reply = await _call(redis_client, [holds, idem], args)
    assert reply[0] == b"BADARG" and reply[2] == str(index).encode(), reply
    assert await dump_namespace(redis_client, namespace) == before


async def test_begin_without_the_record_key_or_over_a_foreign_type_changes_nothing(
    redis_client: redis.asyncio.Redis, namespace: str
) -> None:
    holds, idem = _keys(namespace)
    before = await dump_namespace(redis_client, namespace)
    reply = await _call(redis_client, [holds], _args("c1.o1"))
    assert reply[0] == b"BADARG" and reply[2] == b"2", reply
    await redis_client.rpush(idem, b"x")
    before = await dump_namespace(redis_client, namespace)
    reply = await _call(redis_client, [holds, idem], _args("c1.o1"))
    assert reply[0] == b"WRONGTYPE", reply
    assert await dump_namespace(redis_client, namespace) == before
