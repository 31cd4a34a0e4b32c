"""The supervisor with small Python children: start, stop, failures, stubborn children, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from onhand.supervisor import Supervisor
from tests.processes import gone

pytestmark = pytest.mark.timeout(60)

# A child that records its pid in $MARK (so the test knows it runs) and sleeps.
SLEEPER = "import os, pathlib, time; pathlib.Path(os.environ['MARK']).write_text(str(os.getpid()))"
SLEEPER += "; time.sleep(120)"
# The same, after ignoring SIGTERM (the pid is written only once SIGTERM is ignored).
STUBBORN = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + SLEEPER
# A child that starts a grandchild in its process group, records both pids, sleeps.
PARENT = textwrap.dedent("""
    import os, pathlib, subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    pathlib.Path(os.environ["MARK"]).write_text(f"{os.getpid()} {grandchild.pid}")
    time.sleep(120)
""")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_for_pids(mark: Path, timeout_s: float = 20.0) -> list[int]:
    """The pids a child wrote to ``mark``, once it has written them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if mark.exists() and (text := mark.read_text()):
            return [int(pid) for pid in text.split()]
        time.sleep(0.02)
    raise AssertionError(f"no child wrote {mark} within {timeout_s} s")


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(gone(pid) for pid in pids):
            return True
        time.sleep(0.02)
    return False


def test_start_runs_every_child_with_its_environment(tmp_path: Path) -> None:
    supervisor = Supervisor(
        [(name, python(SLEEPER), {"MARK": str(tmp_path / name)}) for name in ("api", "writer")]
    )
    try:
        supervisor.start()
        for name, pid in supervisor.pids.items():
            assert wait_for_pids(tmp_path / name) == [pid]
        assert supervisor.returncodes == {"api": None, "writer": None}
    finally:
        supervisor.stop()


def test_stop_terminates_every_child_and_what_they_spawned(tmp_path: Path) -> None:
    supervisor = Supervisor(
        [
            ("sleeper", python(SLEEPER), {"MARK": str(tmp_path / "sleeper")}),
            ("parent", python(PARENT), {"MARK": str(tmp_path / "parent")}),
        ]
    )
    try:
        supervisor.start()
        pids = wait_for_pids(tmp_path / "sleeper") + wait_for_pids(tmp_path / "parent")
    finally:
        supervisor.stop(timeout_s=10.0)
    assert supervisor.returncodes == {"sleeper": -signal.SIGTERM, "parent": -signal.SIGTERM}
    assert wait_gone(pids), "a child or grandchild survived stop()"
    supervisor.stop()  # idempotent


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("raise SystemExit(3)", 3),
        ("pass", 1),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + signal.SIGKILL),
    ],
    ids=["exit-3", "clean-exit", "killed"],
)
def test_a_child_that_exits_makes_wait_return_non_zero_and_the_others_get_stopped(
    tmp_path: Path, code: str, status: int
) -> None:
    mark = tmp_path / "survivor"
    supervisor = Supervisor(
        [
            ("survivor", python(SLEEPER), {"MARK": str(mark)}),
            ("failing", python(f"import time; time.sleep(0.3); {code}"), {}),
        ]
    )
    try:
        supervisor.start()
        [survivor] = wait_for_pids(mark)
        assert supervisor.wait() == status
    finally:
        supervisor.stop()
    assert supervisor.returncodes["survivor"] == -signal.SIGTERM
    assert wait_gone([survivor])


def test_a_child_ignoring_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    supervisor = Supervisor([("stubborn", python(STUBBORN), {"MARK": str(tmp_path / "m")})])
    try:
        supervisor.start()
        [pid] = wait_for_pids(tmp_path / "m")
        started = time.monotonic()
        supervisor.stop(timeout_s=0.5)
        elapsed = time.monotonic() - started
    finally:
        supervisor.stop()
    assert 0.5 <= elapsed < 5.0
    assert supervisor.returncodes == {"stubborn": -signal.SIGKILL}
    assert wait_gone([pid])


def test_a_child_that_cannot_be_spawned_stops_the_ones_already_started(tmp_path: Path) -> None:
    supervisor = Supervisor(
        [
            ("sleeper", python(SLEEPER), {"MARK": str(tmp_path / "m")}),
            ("missing", [str(tmp_path / "no-such-program")], {}),
        ]
    )
    with pytest.raises(FileNotFoundError):
        supervisor.start()
    assert supervisor.returncodes["sleeper"] is not None


def test_child_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Supervisor([("a", python("pass"), {}), ("a", python("pass"), {})])


RUNNER = textwrap.dedent("""
    import os, sys
    from onhand.supervisor import Supervisor
    child = [sys.executable, "-c", sys.argv[1]]
    marks = sys.argv[2:]
    supervisor = Supervisor([(m, child, {"MARK": m}) for m in marks])
    raise SystemExit(supervisor.run(timeout_s=float(os.environ["STOP_TIMEOUT_S"])))
""")


def run_supervisor_as_a_terminal_job(
    tmp_path: Path, child_code: str, *, signals: int, stop_timeout_s: float
) -> tuple[int, float, list[int]]:
    """Run :meth:`Supervisor.run` in its own process group, as a shell runs a job, with
    two children; once both run, send ``signals`` SIGINTs to the whole group (what
    Ctrl-C at a terminal does). Returns the exit status, the seconds from the first
    SIGINT to the exit, and the children's pids.
    """
    marks = [str(tmp_path / "one"), str(tmp_path / "two")]
    env = {**os.environ, "STOP_TIMEOUT_S": str(stop_timeout_s)}
    with subprocess.Popen(
        [sys.executable, "-c", RUNNER, child_code, *marks], env=env, process_group=0
    ) as proc:
        try:
            pids = [pid for mark in marks for pid in wait_for_pids(Path(mark))]
            started = time.monotonic()
            for _ in range(signals):
                os.killpg(proc.pid, signal.SIGINT)
                time.sleep(0.2)
            status = proc.wait(timeout=30)
            return status, time.monotonic() - started, pids
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_ctrl_c_stops_every_child_and_exits_zero(tmp_path: Path) -> None:
    status, _, pids = run_supervisor_as_a_terminal_job(
        tmp_path, SLEEPER, signals=1, stop_timeout_s=10.0
    )
    assert status == 0
    assert wait_gone(pids)


def test_a_second_ctrl_c_kills_stubborn_children_without_waiting_for_the_timeout(
    tmp_path: Path,
) -> None:
    status, seconds, pids = run_supervisor_as_a_terminal_job(
        tmp_path, STUBBORN, signals=2, stop_timeout_s=60.0
    )
    assert status == 0
    assert seconds < 10.0
    assert wait_gone(pids)


# Runs for $RUN_S seconds, appends its pid to $MARK, then exits with 3.
CRASHER = (
    "import os, pathlib, time; time.sleep(float(os.environ['RUN_S']))"
    "; f = open(os.environ['MARK'], 'a'); f.write(f'{os.getpid()} '); f.close()"
    "; raise SystemExit(3)"
)


def test_a_child_that_crashes_after_serving_is_started_again_and_the_others_keep_running(
    tmp_path: Path,
) -> None:
    mark, crashes = tmp_path / "survivor", tmp_path / "crashes"
    supervisor = Supervisor(
        [
            ("survivor", python(SLEEPER), {"MARK": str(mark)}),
            ("crasher", python(CRASHER), {"MARK": str(crashes), "RUN_S": "0.4"}),
        ],
        restart_after_s=0.2,
    )
    statuses: list[int] = []
    waiter = threading.Thread(target=lambda: statuses.append(supervisor.wait()))
    try:
        supervisor.start()
        [survivor] = wait_for_pids(mark)
        waiter.start()
        deadline = time.monotonic() + 20
        while supervisor.restarts < 2 and time.monotonic() < deadline and not statuses:
            time.sleep(0.05)
        assert supervisor.restarts >= 2 and not statuses, statuses
        assert not gone(survivor)
        assert len(set(crashes.read_text().split())) >= 2  # each crash was a new process
        supervisor.request_stop()
        waiter.join(10)
        assert statuses == [0]  # a stop was asked for: no failure
    finally:
        supervisor.stop()
    assert wait_gone([survivor])


def test_a_child_that_fails_at_start_up_is_not_started_again(tmp_path: Path) -> None:
    crashes = tmp_path / "crashes"
    supervisor = Supervisor(
        [("crasher", python(CRASHER), {"MARK": str(crashes), "RUN_S": "0"})],
        restart_after_s=5.0,
    )
    try:
        supervisor.start()
        assert supervisor.wait() == 3
    finally:
        supervisor.stop()
    assert supervisor.restarts == 0 and len(crashes.read_text().split()) == 1
