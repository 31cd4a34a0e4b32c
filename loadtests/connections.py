"""TCP sockets per process on a port, read from ``/proc`` (Linux): established
connections (:func:`established_per_process`) and listeners (:func:`listening_processes`).

The benchmark uses it to show how uvicorn's workers share the load generator's
connections. With ``--workers N`` uvicorn's supervisor binds one listening socket and
every worker accepts from it, so which worker takes a new connection is a race the
kernel decides; a closed-loop load generator keeps its connections for the whole run,
so the split it got at the start is the split of the run.

No tool is called: a process's sockets are the ``socket:[inode]`` links in
``/proc/<pid>/fd``, and ``/proc/net/tcp`` and ``/proc/net/tcp6`` give each socket's
local port and state.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

__all__ = ["established_per_process", "listening_processes"]

# the ``st`` column of /proc/net/tcp (include/net/tcp_states.h)
ESTABLISHED = "01"
LISTEN = "0A"
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of ``pid``'s sockets (empty if the process is gone or not ours)."""
    fd_dir = f"/proc/{pid}/fd"
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                target = os.readlink(f"{fd_dir}/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _sockets_on(port: int, state: str) -> list[str]:
    """Inodes of the sockets in ``state`` whose local port is ``port``."""
    found: list[str] = []
    for table in TABLES:
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows, None)  # the header
            for row in rows:
                fields = row.split()
                if len(fields) < 10 or fields[3] != state:
                    continue
                if int(fields[1].rpartition(":")[2], 16) == port:
                    found.append(fields[9])
    return found


def established_per_process(port: int, pids: Sequence[int]) -> list[int] | None:
    """For each of ``pids`` (in order), how many established TCP connections it holds
    whose local port is ``port`` (the server side of a listener's accepted
    connections). ``None`` where ``/proc/net/tcp`` is not readable (not Linux)."""
    if not os.path.exists(TABLES[0]):
        return None
    owner = {inode: i for i, pid in enumerate(pids) for inode in _socket_inodes(pid)}
    counts = [0] * len(pids)
    for inode in _sockets_on(port, ESTABLISHED):
        i = owner.get(inode)
        if i is not None:
            counts[i] += 1
    return counts


def listening_processes(port: int) -> dict[int, set[str]]:
    """Every process (of those whose ``/proc/<pid>/fd`` this one can read) holding a
    listening TCP socket on ``port``: pid → the inodes of those sockets. Processes
    sharing one socket (uvicorn's workers) all show its inode."""
    listeners = set(_sockets_on(port, LISTEN))
    owners: dict[int, set[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (held := _socket_inodes(int(entry)) & listeners):
            owners[int(entry)] = held
    return owners
