"""The benchmark says where the machine's CPU went during a run, and can pause the
ledger writer for a baseline run."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from loadtests.bench import paused
from loadtests.boxcpu import POSTGRES, WRK, BoxCpu, process_stat, snapshot

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc")

_BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"
_WAIT = "import sys\nsys.stdin.read()\n"


def _state(pid: int) -> str:
    stat = process_stat(pid)
    assert stat is not None
    return stat[1][0]


def _settles(pid: int, stopped: bool, timeout_s: float = 10.0) -> bool:
    """Whether ``pid`` is (or is not) stopped within ``timeout_s``: a signal takes
    effect when the kernel next schedules the process, not when ``kill`` returns."""
    deadline = time.monotonic() + timeout_s
    while (_state(pid) == "T") != stopped:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# Waits for a line, burns 0.4 s of CPU, says so, then waits for its stdin to close.
_ON_CUE = (
    "import sys, time\nsys.stdin.readline()\n"
    + _BURN.format(s=0.4)
    + "print('done', flush=True)\nsys.stdin.read()\n"
)


def test_a_group_that_worked_is_counted_and_an_idle_one_is_not() -> None:
    idle = subprocess.Popen([sys.executable, "-c", _WAIT], stdin=subprocess.PIPE)
    busy = subprocess.Popen(
        [sys.executable, "-c", _ON_CUE], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert busy.stdin is not None and busy.stdout is not None
    try:
        time.sleep(0.5)  # both past their start-up
        before = snapshot({"busy": [busy.pid], "idle": [idle.pid]})
        busy.stdin.write(b"go\n")
        busy.stdin.flush()
        assert busy.stdout.readline() == b"done\n"
        after = snapshot({"busy": [busy.pid], "idle": [idle.pid]})
    finally:
        idle.communicate(b"")
        busy.communicate(b"")
    assert before is not None and after is not None
    cpu = after.since(before)
    assert 0.35 <= cpu.used_s["busy"] <= 1.0, cpu
    assert cpu.used_s["idle"] < 0.05, cpu
    assert cpu.busy_s >= 0.35 and cpu.seconds >= 0.4, cpu  # the box was busy meanwhile
    assert POSTGRES in cpu.used_s


def test_a_child_that_ran_and_was_reaped_in_the_window_counts_as_wrk() -> None:
    before = snapshot({})
    subprocess.run([sys.executable, "-c", _BURN.format(s=0.3)], check=True)
    after = snapshot({})
    assert before is not None and after is not None
    assert 0.25 <= after.since(before).used_s[WRK] <= 1.0


def test_a_group_counts_what_its_processes_used_in_the_window_only() -> None:
    burner = subprocess.Popen(
        [sys.executable, "-c", _BURN.format(s=0.3) + "import sys\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)  # it burned 0.3 s before the window
        before = snapshot({"g": [burner.pid]})
        time.sleep(0.3)
        after = snapshot({"g": [burner.pid]})
    finally:
        burner.communicate(b"")
    assert before is not None and after is not None
    assert before.groups["g"][burner.pid] >= 0.25
    assert after.since(before).used_s["g"] < 0.05


def test_shares_are_of_one_core_and_the_rest_is_other() -> None:
    cpu = BoxCpu({"API workers": 7.5, "Redis": 5.0, WRK: 1.0}, busy_s=15.0, idle_s=5.0, seconds=10)
    assert cpu.share(7.5) == 75 and cpu.busy == 150 and cpu.idle == 50
    assert cpu.other_s == 1.5
    assert cpu.describe() == "API workers 75, Redis 50, wrk 10, other 15; idle 50 (% of one core)"


def test_a_paused_process_stops_and_continues_even_after_an_error() -> None:
    child = subprocess.Popen([sys.executable, "-c", _WAIT], stdin=subprocess.PIPE)
    try:
        with pytest.raises(RuntimeError), paused(child.pid):
            assert _settles(child.pid, stopped=True)
            raise RuntimeError("the run failed")
        assert _settles(child.pid, stopped=False)
    finally:
        child.communicate(b"")
    assert child.returncode == 0
