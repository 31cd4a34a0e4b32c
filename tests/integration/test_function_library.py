"""The scripts as one function library: nothing of one call leaks into the next.

``_lib.lua``'s definitions live as long as the library; its ``-- per call`` state is
reset before every call. These tests change Redis between two calls behind the
library's back and check that the second call sees Redis, not what the first call
loaded; and that the run_id the library keeps is this server's.
"""

from __future__ import annotations

import re

import redis.asyncio

from onhand.engine.scripts import Scripts, library_source, lua_dir
from tests.integration.support import new_id, open_engine


async def test_a_second_call_reads_the_record_again_instead_of_the_first_calls_copy(
    redis_url: str, namespace: str
) -> None:
    async with open_engine(redis_url, namespace) as engine:
        sku, wh = new_id("s"), new_id("w")
        await engine.receive(sku, wh, 5)
        key = engine.keys.stock(sku, wh)
        await engine.client.hset(key, "on", "40")  # behind the library's back
        level = await engine.receive(sku, wh, 1)
        assert level.on_hand == 41 and level.version == 2


async def test_each_call_reads_its_own_clock_and_emits_only_its_own_events(
    redis_url: str, namespace: str
) -> None:
    async with open_engine(redis_url, namespace) as engine:
        sku, wh = new_id("s"), new_id("w")
        args = [sku, wh, "1", "", ""]
        keys = [
            engine.keys.stock(sku, wh),
            engine.keys.sku(sku),
            engine.keys.warehouses(sku),
            engine.keys.sku_stream(sku),
            engine.keys.sku_ready(sku),
        ]
        first = await Scripts(engine.client)["receive"](keys=keys, args=["1000", *args])
        second = await Scripts(engine.client)["receive"](keys=keys, args=["2000", *args])
        assert first[:2] == [b"OK", b"1000"] and second[:2] == [b"OK", b"2000"]
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await engine.client.xrange(keys[3])  # type: ignore[assignment]
        mine = [f for _, f in entries if f[b"sku"] == sku.encode()]
        assert [f[b"ts"] for f in mine] == [b"1000", b"2000"]


async def test_the_kept_run_id_is_this_servers(redis_client: redis.asyncio.Redis) -> None:
    reply = await Scripts(redis_client)["mark_ready"](keys=[], args=["0", "0"])
    run_id = (await redis_client.info("server"))["run_id"]
    assert reply[2].decode() == run_id
    again = await Scripts(redis_client)["mark_ready"](keys=[], args=["0", "0"])
    assert again[2].decode() == run_id


def test_only_per_call_state_and_the_run_id_are_assigned_during_a_call():
    """Static check of _lib.lua and every script: an assignment to a library-level name
    (not a new local) must target state that is reset per call, or RUN_ID."""
    lib = (lua_dir() / "_lib.lua").read_text()
    top = set(re.findall(r"^local\s+(?:function\s+)?([A-Za-z_]\w*)", lib, re.MULTILINE))
    per_call = set(re.findall(r"^local\s+([A-Za-z_]\w*)\s*=.*--\s*per call\s*$", lib, re.M))
    assert per_call == {
        "NOW", "NOWS", "READY", "RECS", "SKUS", "EMITTED", "TYPED", "INTS", "IDS", "TEXTS", "FMTS",
        "FINGERPRINTS", "SLOTS", "DIRTY", "DEPTH",
    }  # fmt: skip
    allowed = per_call | {"RUN_ID"}
    source = library_source().source
    body = source.split("local function reset()", 1)[1].split("\nend\n", 1)[1]
    for code in (lib, body):
        code = re.sub(r"--\[(=*)\[.*?\]\1\]|--[^\n]*", "", code, flags=re.DOTALL)
        for line in code.split("\n"):
            stripped = line.strip()
            if stripped.startswith("local ") or not line.startswith((" ", "\t")):
                continue
            for target in re.findall(r"^([A-Za-z_]\w*)(?:\s*\[[^\]]*\])*\s*(?:,|=(?!=))", stripped):
                assert target not in top or target in allowed, line
