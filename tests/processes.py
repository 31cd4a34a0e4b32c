"""Process checks the tests share (Linux ``/proc`` where signals cannot tell)."""

from __future__ import annotations

import os
from pathlib import Path


def gone(pid: int) -> bool:
    """True iff ``pid`` has exited (a zombie waiting to be reaped counts as gone: its
    sockets and files are closed already, and a process that is not our child, such
    as a postmaster pg_ctl daemonized, may stay one until the machine's init reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True
