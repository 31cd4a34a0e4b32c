"""The README's run command (`make run`) on a machine without configured servers.

Started as a subprocess in its own session with no ONHAND_REDIS_URL/DATABASE_URL, it
must start embedded Redis and PostgreSQL, come up, serve a reservation with the admin
key it prints, and on Ctrl-C (SIGINT to its process group, as a terminal sends it)
stop everything it started: no process that mentions its data directory survives.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.local_server import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


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


def _wait_for_token(proc: subprocess.Popen[str], log: list[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise AssertionError("make run exited early:\n" + "".join(log))
            time.sleep(0.05)
            continue
        log.append(line)
        m = re.search(r"\b(onh_[0-9a-f]{16}_[A-Za-z0-9_-]{43})\b", line)
        if m:
            return m.group(1)
    raise AssertionError("no admin key printed in time:\n" + "".join(log))


def test_make_run_comes_up_serves_a_reservation_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / f"data-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONHAND_")}
    env.update(ONHAND_DATA_DIR=str(data_dir), ONHAND_API_PORT=str(port), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    log: list[str] = []
    try:
        token = _wait_for_token(proc, log, timeout_s=120)
        headers = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers=headers, timeout=5) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "never ready:\n" + "".join(log)
                time.sleep(0.2)
            held = http.post(
                "/v1/reservations",
                json={"order_id": "readme-1", "lines": [{"sku": "MUG-WHITE", "qty": 2}]},
                headers={"Idempotency-Key": "readme-1"},
            )
            assert held.status_code == 201, held.text
            assert held.json()["status"] == "pending"
            confirmed = http.post(
                "/v1/reservations/admin.readme-1:confirm", headers={"Idempotency-Key": "c-1"}
            )
            assert confirmed.status_code == 200, confirmed.text
            assert confirmed.json()["status"] == "confirmed"
            # The reaper runs too: a 1 s hold is expired by it.
            short = http.post(
                "/v1/reservations",
                json={"order_id": "readme-2", "lines": [{"sku": "MUG-WHITE", "qty": 1}],
                      "ttl_ms": 1000},
                headers={"Idempotency-Key": "readme-2"},
            )  # fmt: skip
            assert short.status_code == 201, short.text
            deadline = time.monotonic() + 10
            while (status := http.get("/v1/reservations/admin.readme-2").json()["status"]) in (
                "pending",
            ) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert status == "expired", status
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        log.append(out or "")
    # make itself dies of the SIGINT it was sent (as in a terminal); onhand must have
    # stopped everything and said so.
    assert proc.returncode in (0, -signal.SIGINT), "".join(log)
    text = "".join(log)
    assert "onhand stopped" in text
    # With no URL configured it used its own servers, in the data directory it was given.
    assert "embedded Redis at redis://127.0.0.1:" in text and str(data_dir) in text, text
    assert "embedded PostgreSQL" in text, text
    deadline = time.monotonic() + 10
    while (left := _processes_mentioning(str(data_dir))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], left
