"""The PostgreSQL test infrastructure itself: private servers and the database fixture."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from onhand.ledger import migrate
from tests.pg import (
    PostgresServer,
    PostgresServerError,
    create_database,
    drop_database,
    new_database_name,
    pg_ping,
    run_async,
)

pytestmark = pytest.mark.postgres


def _alive(server: PostgresServer) -> bool:
    """Process running, pid known and the server answering (a call, so mypy does not narrow)."""
    return server.running and server.pid is not None and pg_ping(server.host, server.port)


async def _fetchval(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def test_private_server_starts_answers_keeps_data_and_stops() -> None:
    with PostgresServer() as server:
        assert _alive(server)
        assert server.admin_url == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        assert run_async(lambda: _fetchval(server.admin_url, "SHOW fsync")) == "off"
        assert run_async(lambda: _fetchval(server.admin_url, "SELECT current_user")) == "postgres"
        assert list(server.dir.glob(".s.PGSQL.*")), "the Unix socket lives in the server's dir"

        name = new_database_name()
        url = create_database(server.admin_url, name)
        migrate.upgrade_sync(url)
        server.kill()  # immediate shutdown: crash recovery at the next start
        assert not _alive(server)
        server.start()
        assert run_async(lambda: migrate.current_revision(url)) == migrate.head_revision()
        server.restart()
        assert _alive(server)
        drop_database(server.admin_url, name)

        workdir = server.dir
        server.stop()
        assert not _alive(server)
        assert server.pid is None
        assert not pg_ping(server.host, server.port)
    assert not workdir.exists()


def test_a_private_server_that_cannot_start_says_why() -> None:
    server = PostgresServer({"no_such_setting": "1"}, startup_timeout=20)
    with pytest.raises(PostgresServerError, match="no_such_setting"):
        server.start()
    server.close()


def test_database_url_is_a_fresh_migrated_database(database_url: str, pg_admin_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    assert re.fullmatch(r"onhand_t[0-9a-f]{8}", name)
    assert database_url.startswith("postgresql://")
    assert run_async(lambda: migrate.current_revision(database_url)) == migrate.head_revision()
    assert run_async(lambda: _fetchval(database_url, "SELECT count(*) FROM movements")) == 0


def test_drop_database_removes_only_the_named_database(pg_admin_url: str) -> None:
    keep, gone = new_database_name(), new_database_name()
    create_database(pg_admin_url, keep)
    try:
        create_database(pg_admin_url, gone)
        drop_database(pg_admin_url, gone)
        drop_database(pg_admin_url, gone)  # already gone: fine
        sql = "SELECT array_agg(datname::text) FROM pg_database WHERE datname LIKE 'onhand_t%'"
        names = run_async(lambda: _fetchval(pg_admin_url, sql))
        assert keep in names
        assert gone not in names
    finally:
        drop_database(pg_admin_url, keep)


async def test_database_url_works_from_async_tests(database_url: str) -> None:
    await migrate.upgrade(database_url)
    assert (
        await asyncio.wait_for(migrate.current_revision(database_url), 10)
        == migrate.head_revision()
    )
