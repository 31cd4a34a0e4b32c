"""The API served by a real uvicorn (`onhand serve`, 2 workers) in a subprocess.

The in-process suites drive the ASGI app directly; this one goes through sockets,
httptools and uvloop, both ways into a reservation (the fast path and the regular
route), and across two worker processes that share one Redis and one Postgres, each
listening on a socket of its own under onhand's supervisor.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from loadtests.connections import established_per_process, listening_processes

from onhand.cli import WORKER_RESTART_AFTER_S
from onhand.settings import Settings
from tests.api.support import open_api
from tests.local_server import free_port
from tests.processes import gone

pytestmark = pytest.mark.slow


@contextmanager
def serving(api_settings: Settings, workers: int, **extra_env: str) -> Iterator[str]:
    """``onhand serve`` on a free port; yields its base URL, stops it with SIGTERM."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ONHAND_")},
        "ONHAND_REDIS_URL": str(api_settings.redis_url),
        "ONHAND_DATABASE_URL": str(api_settings.database_url),
        "ONHAND_NAMESPACE": api_settings.namespace,
        "ONHAND_PARTITIONS": str(api_settings.partitions),
        "ONHAND_KEY_CACHE_TTL_MS": "0",
        **extra_env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "onhand", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "uvicorn did not come up"
            time.sleep(0.1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        # One worker re-raises the SIGTERM after a clean shutdown (exit status -15);
        # the multi-worker supervisor exits 0.
        assert proc.returncode in (0, -signal.SIGTERM), err.decode()
        assert b"Application shutdown complete" in err, err.decode()


@pytest.fixture
def served(api_settings: Settings) -> Iterator[str]:
    with serving(api_settings, workers=2) as base:
        yield base


async def test_a_real_server_holds_confirms_and_refuses_as_documented(
    api_settings: Settings, served: str
) -> None:
    async with open_api(api_settings) as api:  # opens Redis for the namespace, makes keys
        token = await api.token("admin")
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=served, headers=headers, timeout=10) as http:
        made = await http.post(
            "/v1/warehouses",
            json={"warehouse_id": "BER", "latitude": 52.5, "longitude": 13.4},
            headers={"Idempotency-Key": "w-1"},
        )
        assert made.status_code == 201, made.text
        got = await http.post(
            "/v1/stock-receipts",
            json={"sku": "S-1", "warehouse": "BER", "qty": 10},
            headers={"Idempotency-Key": "r-1"},
        )
        assert got.status_code == 201, got.text
        holds = []
        for i in range(20):  # spread over both workers
            r = await http.post(
                "/v1/reservations",
                json={"order_id": f"o{i}", "lines": [{"sku": "S-1", "qty": 1}]},
                headers={"Idempotency-Key": f"k{i}"},
            )
            holds.append(r.status_code)
        assert holds.count(201) == 10 and holds.count(409) == 10, holds
        replay = await http.post(
            "/v1/reservations",
            json={"order_id": "o0", "lines": [{"sku": "S-1", "qty": 1}]},
            headers={"Idempotency-Key": "k0"},
        )
        assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
        bad = await http.post(
            "/v1/reservations",
            content=b'{"order_id": "x", "lines": [{"sku": "S-1", "qty": "1"}]}',
            headers={"Idempotency-Key": "k-bad", "Content-Type": "application/json"},
        )
        assert bad.status_code == 422
        assert bad.headers["content-type"] == "application/problem+json"
        confirmed = await http.post(
            f"/v1/reservations/{replay.json()['reservation_id']}:confirm",
            headers={"Idempotency-Key": "c0"},
        )
        assert confirmed.status_code == 200 and confirmed.json()["status"] == "confirmed"
        level = (await http.get("/v1/skus/S-1/availability")).json()
        assert (level["on_hand"], level["held"], level["committed"]) == (10, 9, 1)
        assert (await http.get("/openapi.json")).status_code == 200


def _closed_by_server(conn: socket.socket, within_s: float) -> bool:
    """True once the server closes ``conn`` (EOF) within ``within_s`` seconds."""
    readable, _, _ = select.select([conn], [], [], within_s)
    return bool(readable) and conn.recv(1) == b""


def test_an_idle_connection_stays_open_for_the_configured_keep_alive(
    api_settings: Settings,
) -> None:
    """Pooled clients reuse idle connections: the server must not close one under them
    sooner than ``ONHAND_API_KEEP_ALIVE_S`` (uvicorn's own default is 5 s, shorter than
    most pools and load balancers, and a request sent as it closes gets no answer)."""
    with serving(api_settings, workers=1, ONHAND_API_KEEP_ALIVE_S="2") as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            request = b"GET /livez HTTP/1.1\r\nHost: onhand\r\n\r\n"
            conn.sendall(request)
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
            assert not _closed_by_server(conn, within_s=1.0)  # idle 1 s: still open
            conn.sendall(request)
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
            assert _closed_by_server(conn, within_s=4.0)  # idle past 2 s: closed


def _listening_by(port: int, n: int, timeout_s: float = 30.0) -> dict[int, set[str]]:
    """:func:`listening_processes`, once ``n`` processes listen (a worker binds its socket after
    its imports, so the first answer can come before the last worker listens)."""
    deadline = time.monotonic() + timeout_s
    while len(owners := listening_processes(port)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return owners


def _livez_on_new_connections(port: int, n: int) -> list[socket.socket]:
    """``n`` new connections, each answered once (so each has been accepted)."""
    conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
    for conn in conns:
        conn.sendall(b"GET /livez HTTP/1.1\r\nHost: onhand\r\n\r\n")
    for conn in conns:
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")
    return conns


pytest_linux = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="Linux only")


@pytest_linux
def test_each_worker_listens_on_a_socket_of_its_own_and_gets_a_share_of_connections(
    api_settings: Settings, served: str
) -> None:
    """With one shared socket the worker that wins the accept race can take every
    connection opened at once; with a socket per worker the kernel spreads them."""
    port = int(served.rsplit(":", 1)[1])
    owners = _listening_by(port, 2)
    assert len(owners) == 2, owners  # two workers; the supervisor holds no socket
    first, second = owners.values()
    assert len(first) == len(second) == 1 and first != second
    conns = _livez_on_new_connections(port, 64)
    try:
        split = established_per_process(port, list(owners))
    finally:
        for conn in conns:
            conn.close()
    assert split is not None and sum(split) == 64 and min(split) >= 8, split


@pytest_linux
def test_a_worker_killed_after_serving_is_replaced_while_the_other_serves(
    api_settings: Settings,
) -> None:
    with serving(api_settings, workers=2) as base:
        port = int(base.rsplit(":", 1)[1])
        before = _listening_by(port, 2)
        assert len(before) == 2, before
        time.sleep(WORKER_RESTART_AFTER_S)  # a worker that dies sooner stops the server
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not gone(victim):  # its socket is closed: no new connection goes to it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while True:
            assert httpx.get(f"{base}/livez", timeout=5).status_code == 200
            now = listening_processes(port)
            if len(now) == 2 and victim not in now:
                break
            assert time.monotonic() < deadline, now
            time.sleep(0.1)
        assert set(now) & set(before) == set(before) - {victim}


@pytest_linux
def test_several_workers_on_a_port_already_in_use_exit_1_and_say_so(
    api_settings: Settings,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ONHAND_")},
            "ONHAND_REDIS_URL": str(api_settings.redis_url),
            "ONHAND_DATABASE_URL": str(api_settings.database_url),
        }
        done = subprocess.run(
            [sys.executable, "-m", "onhand", "serve", "--port", str(port), "--workers", "2"],
            env=env,
            capture_output=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr.decode()
    assert b"cannot listen on 127.0.0.1:" in done.stderr and b"in use" in done.stderr
