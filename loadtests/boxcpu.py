"""Where the machine's CPU went during a run, read from ``/proc`` (Linux).

The benchmark's HTTP figures are whole-box figures: the API workers, Redis, Postgres,
the ledger writer and the load generator share the same cores. This module says how
much of the box each of them took in a window, so a missed target shows at once
whether a part was saturated or the box sat idle.

* A *group* is a name and the pids to count (the API workers, Redis, the writer).
  Postgres is found by itself: every process named ``postgres`` (the server and its
  backends, as long as the server runs on this machine).
* ``wrk`` has exited before the window is read: its CPU is what this process's reaped
  children used in the window (``cutime + cstime``), so only one tool should run in it.
* ``other`` is the rest of the box's busy time (``/proc/stat``): other processes,
  interrupts and the kernel's own work; ``idle`` includes I/O wait.

Shares are percentages of one core over the window: on two cores they add up to 200.
A process that existed at the start and exited before the end is not counted (no
long-lived process of a run does). On a system without ``/proc/stat`` :func:`snapshot`
returns None and nothing is reported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BoxCpu", "Snapshot", "process_stat", "snapshot"]

POSTGRES = "Postgres"
WRK = "wrk"


def process_stat(pid: int | str) -> tuple[str, list[str]] | None:
    """``(comm, fields from state on)`` of /proc/<pid>/stat; None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, tail = raw.rpartition(")")
    return head.partition("(")[2], tail.split()


def _process_cpu_s(fields: list[str], tick: int) -> float:
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime


def _postgres_pids() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = process_stat(entry)
            if stat is not None and stat[0] == "postgres":
                found.append(int(entry))
    return found


def _box_ticks() -> tuple[int, int]:
    """(busy, idle) jiffies of the whole box since boot: user, nice, system, irq and
    softirq (guest time is inside user); idle and iowait. Steal is neither."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq = (int(v) for v in f.readline().split()[1:8])
    return user + nice + system + irq + softirq, idle + iowait


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds so far: per group, per pid; this process's reaped children; the box."""

    groups: dict[str, dict[int, float]]
    reaped_s: float
    busy_s: float
    idle_s: float
    at: float

    def since(self, before: Snapshot) -> BoxCpu:
        """What happened between ``before`` and this snapshot (same groups)."""
        used = {
            name: sum(s - before.groups.get(name, {}).get(pid, 0.0) for pid, s in pids.items())
            for name, pids in self.groups.items()
        }
        used[WRK] = self.reaped_s - before.reaped_s
        return BoxCpu(
            used, self.busy_s - before.busy_s, self.idle_s - before.idle_s, self.at - before.at
        )


def snapshot(groups: Mapping[str, Sequence[int]]) -> Snapshot | None:
    """CPU used so far by each of ``groups`` and by Postgres, by the children this
    process reaped, and by the whole box; None where ``/proc/stat`` cannot be read."""
    if not os.path.exists("/proc/stat"):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    named = {name: list(pids) for name, pids in groups.items()}
    named[POSTGRES] = _postgres_pids()
    counted: dict[str, dict[int, float]] = {}
    for name, pids in named.items():
        counted[name] = {}
        for pid in pids:
            stat = process_stat(pid)
            if stat is not None:
                counted[name][pid] = _process_cpu_s(stat[1], tick)
    me = process_stat(os.getpid())
    assert me is not None
    reaped = (int(me[1][13]) + int(me[1][14])) / tick  # cutime + cstime
    busy, idle = _box_ticks()
    return Snapshot(counted, reaped, busy / tick, idle / tick, time.monotonic())


@dataclass(frozen=True)
class BoxCpu:
    """CPU seconds used in a window of ``seconds``: per group (including Postgres and
    wrk), by the whole box (``busy_s``), and left idle (``idle_s``)."""

    used_s: dict[str, float]
    busy_s: float
    idle_s: float
    seconds: float

    def share(self, seconds: float) -> float:
        """``seconds`` of CPU as a percentage of one core over the window."""
        return 100 * seconds / self.seconds if self.seconds > 0 else float("nan")

    @property
    def other_s(self) -> float:
        return max(0.0, self.busy_s - sum(self.used_s.values()))

    @property
    def busy(self) -> float:
        return self.share(self.busy_s)

    @property
    def idle(self) -> float:
        return self.share(self.idle_s)

    def describe(self) -> str:
        """``"API workers 75, Redis 52, …, other 6; idle 29 (% of one core)"``."""
        parts = [f"{name} {self.share(s):.0f}" for name, s in self.used_s.items()]
        parts.append(f"other {self.share(self.other_s):.0f}")
        return ", ".join(parts) + f"; idle {self.idle:.0f} (% of one core)"
