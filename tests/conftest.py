"""Shared fixtures: a real Redis for the session, per-test key namespaces, clients.

Fixtures:

* ``redis_url`` (session): URL of the Redis every test shares; see
  :func:`tests.servers.find_redis_url` for how it is chosen. When nothing answers,
  a private server is started for the session and stopped at its end.
* ``namespace``: a fresh key prefix per test, ``t`` + 8 hex digits (alphanumeric).
  Tests must put every key they write under ``f"{namespace}:"``. If the test uses
  ``redis_url`` (directly or through another fixture such as ``redis_client``), the
  keys matching ``f"{namespace}:*"`` on that server are deleted afterwards with
  SCAN + UNLINK, and nothing else is. Tests that do not use ``redis_url`` (e.g.
  fakeredis unit tests) get the name only and never start a server.
* ``redis_client``: ``redis.asyncio.Redis`` on ``redis_url`` with
  ``decode_responses=False``, closed after the test.
* ``private_redis``: a fresh private :class:`~tests.servers.RedisServer` per test,
  for fault tests (kill, restart, persistence). Extra server arguments can be given
  by indirect parametrization::

      @pytest.mark.parametrize("private_redis", [("--appendonly", "yes")], indirect=True)

Tests using ``redis_url`` or ``private_redis`` are marked ``redis`` automatically.
No test here ever flushes a database.

PostgreSQL (see :mod:`tests.pg`):

* ``pg_admin_url`` (session): admin URL of the PostgreSQL server every test shares
  (a role that may CREATE DATABASE and CREATE ROLE); see
  :func:`tests.pg.find_postgres_url`. When nothing answers, a private server is
  started for the session (initdb into a temporary directory) and stopped at its end.
* ``database_url``: a fresh database ``onhand_t<8 hex>`` per test, migrated to head
  with :func:`onhand.ledger.migrate.upgrade`; its plain ``postgresql://…`` URL is
  yielded and the database is dropped afterwards (``WITH (FORCE)``). Nothing else
  on the server is touched. Create + migrate takes about 0.15 s, so there is no
  template database.

Tests using ``pg_admin_url`` or ``database_url`` are marked ``postgres`` automatically.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from onhand.engine.scripts import library_source
from onhand.ledger.migrate import upgrade
from tests.pg import (
    PostgresServer,
    create_database,
    drop_database,
    find_postgres_bindir,
    find_postgres_url,
    new_database_name,
    run_async,
)
from tests.servers import RedisServer, find_redis_binary, find_redis_url

_SERVER_FIXTURES = frozenset({"redis_url", "private_redis"})
_POSTGRES_FIXTURES = frozenset({"pg_admin_url", "database_url"})


_SESSION_REDIS = pytest.StashKey[str | None]()
_SESSION_POSTGRES = pytest.StashKey[str | None]()


def pytest_configure(config: pytest.Config) -> None:
    """Choose the session's Redis and PostgreSQL once; a bad setting is a usage error."""
    try:
        config.stash[_SESSION_REDIS] = find_redis_url()
        config.stash[_SESSION_POSTGRES] = find_postgres_url()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say which Redis and which PostgreSQL the session will use."""
    redis_url = config.stash[_SESSION_REDIS]
    if redis_url is None:
        lines = [f"redis: private {find_redis_binary()} (started on first use)"]
    else:
        lines = [f"redis: {redis_url}"]
    pg_url = config.stash[_SESSION_POSTGRES]
    if pg_url is None:
        try:
            where = str(find_postgres_bindir())
        except Exception as exc:
            where = f"UNAVAILABLE ({exc})"
        lines.append(f"postgres: private {where} (started on first use)")
    else:
        lines.append(f"postgres: {pg_url}")
    return lines


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a real server with ``redis`` or ``postgres``."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if _SERVER_FIXTURES.intersection(names):
            item.add_marker(pytest.mark.redis)
        if _POSTGRES_FIXTURES.intersection(names):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def redis_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """URL of the Redis server shared by the whole test session."""
    url = pytestconfig.stash[_SESSION_REDIS]
    if url is not None:
        with _library_left_as_found(url):
            yield url
        return
    with RedisServer() as server:
        yield server.url


@contextlib.contextmanager
def _library_left_as_found(url: str) -> Iterator[None]:
    """On a Redis this session did not start: delete onhand's function library at the
    end if the session loaded it (functions are server-wide, not in a namespace). A
    concurrent user of the same library is unharmed: the engine loads it again."""
    name = library_source().name
    with redis.Redis.from_url(url, socket_timeout=10) as client:
        had = bool(client.function_list(library=name))
    yield
    if not had:
        with (
            redis.Redis.from_url(url, socket_timeout=10) as client,
            contextlib.suppress(redis.ResponseError),
        ):
            client.function_delete(name)


def delete_namespace(url: str, namespace: str) -> int:
    """Delete the keys matching ``f"{namespace}:*"`` at ``url`` with SCAN + UNLINK.

    Returns how many keys were unlinked. Touches no other key.
    """
    if not namespace.isalnum():
        raise ValueError(f"namespace must be alphanumeric, not {namespace!r}")
    unlinked = 0
    with redis.Redis.from_url(url, socket_timeout=10) as client:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                unlinked += client.unlink(*batch)
                batch.clear()
        if batch:
            unlinked += client.unlink(*batch)
    return unlinked


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique key namespace for one test; cleaned up on ``redis_url`` if the test uses it."""
    name = "t" + uuid.uuid4().hex[:8]
    yield name
    # Decided after the test, so fixtures it acquired with getfixturevalue count too.
    if "redis_url" in request.fixturenames:
        delete_namespace(request.getfixturevalue("redis_url"), name)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client on ``redis_url`` (bytes responses), closed after the test."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def private_redis(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A fresh private server for one test; stopped and its directory deleted afterwards."""
    extra_args: tuple[str, ...] = tuple(getattr(request, "param", ()))
    with RedisServer(*extra_args) as server:
        yield server


@pytest.fixture(scope="session")
def pg_admin_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """Admin URL of the PostgreSQL server shared by the whole test session."""
    url = pytestconfig.stash[_SESSION_POSTGRES]
    if url is not None:
        yield url
        return
    with PostgresServer() as server:
        yield server.admin_url


@pytest.fixture
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database migrated to head, as ``postgresql://…/onhand_t<8 hex>``; dropped after."""
    name = new_database_name()
    url = create_database(pg_admin_url, name)
    try:
        run_async(lambda: upgrade(url))
        yield url
    finally:
        drop_database(pg_admin_url, name)
