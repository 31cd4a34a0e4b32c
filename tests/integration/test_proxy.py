"""The fault-test TCP proxy (tests.proxy) relays, cuts, holds and restores real connections."""

from __future__ import annotations

import asyncio

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
import redis.asyncio
import redis.exceptions

from onhand.ledger.migrate import asyncpg_dsn
from tests.proxy import TcpProxy

# What a client may see when the proxy drops it: asyncpg's own errors or the OS's.
CUT_OFF = (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError)


def test_url_for_rewrites_only_host_and_port() -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    proxy._port = 40000  # as if started
    assert proxy.url_for("postgresql://u:p%40ss@db.example:5432/ledger?sslmode=disable") == (
        "postgresql://u:p%40ss@127.0.0.1:40000/ledger?sslmode=disable"
    )
    assert proxy.url_for("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:40000/0"
    assert proxy.url_for("postgresql://db/x") == "postgresql://127.0.0.1:40000/x"
    with pytest.raises(ValueError, match="query"):
        proxy.url_for("postgresql:///x?host=/run/postgresql")


def test_for_url_takes_the_target_from_the_url() -> None:
    proxy = TcpProxy.for_url("postgresql+asyncpg://u@10.1.2.3/x")
    assert (proxy.target_host, proxy.target_port) == ("10.1.2.3", 5432)
    proxy = TcpProxy.for_url("redis://localhost:6380/1")
    assert (proxy.target_host, proxy.target_port) == ("localhost", 6380)


async def test_postgres_connection_through_the_proxy_is_cut_and_restored(
    pg_admin_url: str,
) -> None:
    dsn = asyncpg_dsn(pg_admin_url)
    async with TcpProxy.for_url(dsn) as proxy:
        via_proxy = proxy.url_for(dsn)
        conn = await asyncpg.connect(via_proxy, timeout=10)
        try:
            assert await conn.fetchval("SELECT 41 + 1") == 42
            assert proxy.connections == 1

            await proxy.cut()
            assert proxy.connections == 0
            with pytest.raises(CUT_OFF):
                await conn.fetchval("SELECT 1")
            with pytest.raises(CUT_OFF):
                await asyncpg.connect(via_proxy, timeout=5)
        finally:
            conn.terminate()

        await proxy.restore()
        conn = await asyncpg.connect(via_proxy, timeout=10)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()


async def test_held_connections_go_through_once_restored(pg_admin_url: str) -> None:
    dsn = asyncpg_dsn(pg_admin_url)
    async with TcpProxy.for_url(dsn) as proxy:
        await proxy.cut(hold=True)
        connecting = asyncio.create_task(asyncpg.connect(proxy.url_for(dsn), timeout=30))
        await asyncio.sleep(0.3)
        assert not connecting.done()

        await proxy.restore()
        conn = await asyncio.wait_for(connecting, 10)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()


async def test_stop_closes_held_connections(pg_admin_url: str) -> None:
    dsn = asyncpg_dsn(pg_admin_url)
    proxy = TcpProxy.for_url(dsn)
    await proxy.start()
    await proxy.cut(hold=True)
    connecting = asyncio.create_task(asyncpg.connect(proxy.url_for(dsn), timeout=30))
    await asyncio.sleep(0.2)
    await proxy.stop()
    with pytest.raises(CUT_OFF):
        await asyncio.wait_for(connecting, 10)
    await proxy.stop()  # idempotent


async def test_redis_connection_through_the_proxy_is_cut_and_restored(redis_url: str) -> None:
    async with TcpProxy.for_url(redis_url) as proxy:
        client = redis.asyncio.Redis.from_url(proxy.url_for(redis_url), socket_timeout=5)
        try:
            assert await client.ping()
            await proxy.cut()
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.ping()
            await proxy.restore()
            assert await client.ping()  # the client reconnects by itself
        finally:
            await client.aclose()
