"""What the test suite's private servers (Redis, PostgreSQL) have in common.

A :class:`LocalServer` is one server process on a free loopback port, with its own
temporary directory holding its data and ``server.log``. The port and the directory
are chosen at the first :meth:`start` and kept across stop/kill/restart, so
persistence can be tested; :meth:`close` stops the server and deletes the directory.
Subclasses implement :meth:`start`, :meth:`stop` and :meth:`kill`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

DEFAULT_HOST = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((DEFAULT_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class LocalServer:
    """Common state and life cycle of a private test server (see the module docstring)."""

    error: type[RuntimeError] = RuntimeError
    """Raised for misuse and startup failures (each subclass names its own)."""

    def __init__(self) -> None:
        self._port: int | None = None
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- addresses -----------------------------------------------------------

    @property
    def host(self) -> str:
        """The loopback address the server listens on."""
        return DEFAULT_HOST

    @property
    def port(self) -> int:
        """The TCP port; fixed by the first :meth:`start`."""
        if self._port is None:
            raise self.error("server was never started: no port yet")
        return self._port

    @property
    def dir(self) -> Path:
        """The server's temporary directory: its data and ``server.log`` live here."""
        if self._dir is None:
            raise self.error("server was never started: no directory yet")
        return self._dir

    @property
    def log_path(self) -> Path:
        """The file that receives the server's stdout and stderr."""
        return self.dir / "server.log"

    @property
    def running(self) -> bool:
        """True iff the server process exists and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while running, else None."""
        return self._proc.pid if self._proc is not None and self.running else None

    # -- life cycle ----------------------------------------------------------

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop the server if it runs, then start it on the same port and directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its directory. Safe to call more than once."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------

    def _signal_and_reap(self, signum: int, timeout: float) -> None:
        """Send ``signum``, wait up to ``timeout`` seconds (then SIGKILL), and reap."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signum)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def _log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines the server wrote since its latest start."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])
