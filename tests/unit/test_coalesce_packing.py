"""The coalescer writes FCALL in RESP itself: byte for byte what redis-py sends."""

from __future__ import annotations

from redis.asyncio.connection import Connection

from onhand.engine.coalesce import pack_fcall

FUNCTION = "onhand_0123456789ab_reserve"


def test_pack_fcall_matches_redis_py_for_keys_args_empty_and_non_ascii_values():
    conn = Connection()
    cases = [
        ([], []),
        (["k1"], ["0"]),
        (["ns:{p3}:res:a.1", "ns:{p3}:deadlines"], ["0", "", "é ü", "x" * 300, "-7"]),
        ([f"k{i}" for i in range(12)], [str(i) for i in range(15)]),
    ]
    for keys, args in cases:
        expected = b"".join(conn.pack_command("FCALL", FUNCTION, len(keys), *keys, *args))
        assert pack_fcall(FUNCTION, keys, args) == expected, (keys, args)
