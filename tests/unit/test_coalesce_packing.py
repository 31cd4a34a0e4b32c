"""The coalescer writes EVALSHA in RESP itself: byte for byte what redis-py sends."""

from __future__ import annotations

from redis.asyncio.connection import Connection

from onhand.engine.coalesce import pack_evalsha

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_pack_evalsha_matches_redis_py_for_keys_args_empty_and_non_ascii_values():
    conn = Connection()
    cases = [
        ([], []),
        (["k1"], ["0"]),
        (["ns:{p3}:res:a.1", "ns:{p3}:deadlines"], ["0", "", "é ü", "x" * 300, "-7"]),
        ([f"k{i}" for i in range(12)], [str(i) for i in range(15)]),
    ]
    for keys, args in cases:
        expected = b"".join(conn.pack_command("EVALSHA", SHA, len(keys), *keys, *args))
        assert pack_evalsha(SHA, keys, args) == expected, (keys, args)
