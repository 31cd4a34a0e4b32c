"""The load smoke (issue #5) and negative controls for its invariant checker.

* ``test_load_smoke_passes`` (slow): ``python -m loadtests.smoke --seconds 30`` as a
  subprocess: a fresh ``onhand up`` with embedded servers, ~30 s of locust with every
  user class, ``onhand_oversell_total`` 0, every invariant of :mod:`loadtests.invariants`
  holds, the service stops on SIGINT and leaves no process behind.
* The checker on a small real Redis + Postgres ledger: silent on a clean namespace,
  and it reports each injected violation — a counter changed behind the engine's back,
  a fake over-commit in the ledger, a hold the reaper never expired, a ledger the
  writer never caught up with.

Locust is never imported here: it monkey-patches the process with gevent. It only runs
in the smoke's own subprocess.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from loadtests.invariants import Options, Report, check

from onhand.domain import Line, ReserveRequest
from tests.integration.ledger_support import Stack, open_stack

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "LTtest-"
SKU = f"{PREFIX}A"
OTHER = f"{PREFIX}B"
OPTIONS = Options(
    prefix=PREFIX, drain_timeout_s=2, quiet_timeout_s=5, reaper_interval_ms=100, hold_slack_ms=200
)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if state != "Z" and (text in cmdline or text in environ):
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


@pytest.mark.slow
def test_load_smoke_passes(tmp_path: Path) -> None:
    # locust is in the test extra; find it without importing it (gevent patches).
    assert importlib.util.find_spec("locust") is not None, "install the test extra"
    workdir = tmp_path / f"smoke-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONHAND_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtests.smoke", "--seconds", "30", "--workdir", str(workdir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # the smoke stops the service on the way out
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail("the smoke did not finish in 240 s:\n" + out)
    up_log = workdir / "report" / "up.log"
    tail = up_log.read_text()[-5000:] if up_log.exists() else "(no up.log)"
    assert proc.returncode == 0, f"{out}\n--- onhand up (tail) ---\n{tail}"
    assert "SMOKE PASSED" in out
    assert "invariants: OK" in out
    assert "onhand_oversell_total 0" in out
    deadline = time.monotonic() + 10
    while (left := _processes_mentioning(str(workdir))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], left


# -- negative controls: the checker must bite ----------------------------------------------
async def _scene(stack: Stack) -> None:
    """Stock in two warehouses, a confirmed order, a pending hold, a released one; drained."""
    engine = stack.engine
    await engine.receive(SKU, "W1", 10, reference="t")
    await engine.receive(SKU, "W2", 5, reference="t")
    await engine.receive(OTHER, "W1", 4, reference="t")
    await engine.reserve(ReserveRequest("c.o1", (Line(SKU, 3, ("W1",)),), ttl_ms=60_000))
    await engine.confirm("c.o1")
    lines = (Line(SKU, 2, ("W1", "W2")), Line(OTHER, 1, ("W1",)))
    await engine.reserve(ReserveRequest("c.o2", lines, ttl_ms=60_000))
    await engine.reserve(ReserveRequest("c.o3", (Line(OTHER, 2, ("W1",)),), ttl_ms=60_000))
    await engine.release("c.o3")
    await _drain(stack)


async def _drain(stack: Stack) -> None:
    """Run the writer until the streams are drained (bounded: a stuck writer fails here)."""
    await asyncio.wait_for(stack.drain(), timeout=30)


async def test_checker_is_silent_on_a_clean_namespace(
    redis_url: str, database_url: str, namespace: str
) -> None:
    async with open_stack(redis_url, database_url, namespace) as stack:
        await _scene(stack)
        report = await check(stack.engine, stack.store, OPTIONS)
    assert report.ok, report.render()
    assert report.facts["units_sold"] == 3
    assert report.facts["units_supplied"] == 19
    assert report.facts["reservations_pending"] == 1


async def _violations(redis_url: str, database_url: str, namespace: str, inject: str) -> Report:
    async with open_stack(redis_url, database_url, namespace) as stack:
        await _scene(stack)
        engine, keys = stack.engine, stack.engine.keys
        if inject == "counter":  # committed raised behind the engine's back: no event
            await stack.client.hincrby(keys.stock(SKU, "W1"), "co", 9)
        elif inject == "ledger":  # a fake over-commit written straight into the ledger
            await stack.store.pool.execute(
                "INSERT INTO movements (event_id, partition, stream_ms, stream_seq, type,"
                " at_ms, sku, warehouse, d_held, d_committed, version, beyond)"
                " VALUES ('fake-1', $1, 1, 0, 'confirmed', 1, $2, 'W1', 0, 50, 99, 40)",
                keys.partition(SKU),
                SKU,
            )
        elif inject == "stale-hold":  # a hold past its deadline, and no reaper runs
            await engine.reserve(ReserveRequest("c.o4", (Line(OTHER, 1, ("W1",)),), ttl_ms=1_000))
            await _drain(stack)
            await asyncio.sleep(1.0 + (OPTIONS.reaper_interval_ms + OPTIONS.hold_slack_ms) / 1e3)
        elif inject == "undrained":  # a change the writer never wrote
            await engine.receive(OTHER, "W2", 7, reference="t")
        return await check(engine, stack.store, OPTIONS)


@pytest.mark.parametrize(
    ("inject", "expected"),
    [
        (
            "counter",
            {"conservation", "oversold", "beyond-counter", "committed-mismatch", "ledger-drift"},
        ),
        ("ledger", {"conservation", "version", "oversold-ledger"}),
        ("stale-hold", {"stale-hold"}),
        ("undrained", {"ledger-not-drained"}),
    ],
)
async def test_checker_reports_injected_violations(
    redis_url: str, database_url: str, namespace: str, inject: str, expected: set[str]
) -> None:
    report = await _violations(redis_url, database_url, namespace, inject)
    assert report.kinds == expected, report.render()
    assert "VIOLATED" in report.render()
