"""Run several child processes as one service: started together, stopped together.

Contract:

* Each child is ``(name, argv, env)``. It runs with the supervisor's environment
  updated by ``env``, stdin from ``/dev/null``, and the supervisor's stdout and
  stderr (nothing is prefixed or captured).
* Each child leads its own process group. A terminal's Ctrl-C (SIGINT to the
  foreground group) therefore reaches only the supervisor, which then stops every
  child in order; signals go to each child's whole group, so processes a child
  spawned in its group are stopped with it.
* :meth:`Supervisor.wait` returns when any child exits (children are expected to run
  until told to stop, so any exit is a failure) or when a stop was requested. With
  ``restart_after_s`` set, a child that exits after running at least that long is
  started again instead (what it left in its process group is killed first); one that
  exits sooner is failing at start-up, which another start would repeat, so ``wait``
  returns.
* :meth:`Supervisor.stop` sends SIGTERM to every group, waits up to ``timeout_s``,
  SIGKILLs what is left, and reaps every child: no process is left behind.
* :meth:`Supervisor.run` does start, wait and stop with SIGINT, SIGTERM and SIGHUP
  handled (main thread only); a second signal during the stop kills at once.

Exit status (from :meth:`wait` and :meth:`run`): 0 if a stop was requested before any
child exited; otherwise the first child's exit code, ``128 + N`` if signal N killed
it, or 1 if it exited with 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from types import FrameType

__all__ = ["ChildSpec", "Supervisor"]

ChildSpec = tuple[str, Sequence[str], Mapping[str, str]]
"""``(name, argv, env)``: ``env`` is added to (overrides) the supervisor's environment."""

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_POLL_S = 0.05
log = logging.getLogger(__name__)


class Supervisor:
    """Start, watch and stop a fixed set of child processes (see the module docstring)."""

    def __init__(
        self, children: Sequence[ChildSpec], *, restart_after_s: float | None = None
    ) -> None:
        names = [name for name, _, _ in children]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self._specs = list(children)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._started_at: dict[str, float] = {}
        self._stop_requests = 0
        self._restart_after_s = restart_after_s
        self.restarts = 0

    @property
    def pids(self) -> dict[str, int]:
        """Process id of every child started, by name."""
        return {name: proc.pid for name, proc in self._procs.items()}

    @property
    def returncodes(self) -> dict[str, int | None]:
        """Exit code of every child started, by name (None while running; -N: signal N)."""
        return {name: proc.poll() for name, proc in self._procs.items()}

    def start(self) -> None:
        """Spawn every child, in order. If one cannot be spawned, stop the others and raise."""
        if self._procs:
            raise RuntimeError("supervisor already started")
        try:
            for name, argv, env in self._specs:
                self._spawn(name, argv, env)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self._procs[name] = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, env={**os.environ, **env}, process_group=0
        )
        self._started_at[name] = time.monotonic()
        log.info("started %s (pid %d)", name, self._procs[name].pid)

    def request_stop(self) -> None:
        """Make :meth:`wait` return (async-signal safe: only sets a counter)."""
        self._stop_requests += 1

    def wait(self) -> int:
        """Block until a child exits or a stop is requested; return the exit status."""
        while True:
            for name, argv, env in self._specs:
                proc = self._procs[name]
                code = proc.poll()
                if code is None:
                    continue
                ran_s = time.monotonic() - self._started_at[name]
                after_s = self._restart_after_s
                if after_s is not None and ran_s >= after_s and not self._stop_requests:
                    log.error(
                        "%s exited with %d after %.0f s; starting it again", name, code, ran_s
                    )
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    self._spawn(name, argv, env)
                    self.restarts += 1
                    continue
                log.error("%s exited with %d; stopping the others", name, code)
                return code if code > 0 else 128 - code if code < 0 else 1
            if self._stop_requests:
                return 0
            time.sleep(_POLL_S)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every child's group, wait up to ``timeout_s``, SIGKILL the rest. Idempotent."""
        self._signal_groups(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        requests = self._stop_requests  # one more request while stopping: kill now
        while any(p.poll() is None for p in self._procs.values()):
            if time.monotonic() >= deadline or self._stop_requests > requests:
                stragglers = [n for n, p in self._procs.items() if p.poll() is None]
                log.warning("killing %s", ", ".join(stragglers))
                break
            time.sleep(_POLL_S)
        # Also kills what a child left behind in its group (after a clean exit too).
        self._signal_groups(signal.SIGKILL)
        for proc in self._procs.values():
            proc.wait()

    def run(self, timeout_s: float = 10.0) -> int:
        """Start, wait, stop (SIGINT/SIGTERM/SIGHUP request the stop); return the exit status."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in _SIGNALS}
        try:
            self.start()
            return self.wait()
        finally:
            try:
                self.stop(timeout_s)
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop()

    def _signal_groups(self, signum: int) -> None:
        for proc in self._procs.values():
            # A group outlives its leader while members remain; ESRCH: nothing left.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signum)
