"""The benchmark counts, per worker process, the connections it accepted on a port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from loadtests.connections import established_per_process, listening_processes

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="Linux /proc")

# A child that listens on a port of its own choosing, prints it, accepts ``n``
# connections and keeps them until its stdin closes.
_CHILD = """
import socket, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(16)
print(server.getsockname()[1], flush=True)
held = [server.accept()[0] for _ in range(int(sys.argv[1]))]
sys.stdin.read()
"""


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server
    server.close()


def _connect(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


def _wait_for(expected: list[int], port: int, pids: list[int]) -> list[int] | None:
    deadline = time.monotonic() + 5
    found = established_per_process(port, pids)
    while found != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        found = established_per_process(port, pids)
    return found


def test_accepted_connections_are_counted_for_the_process_that_holds_them(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    clients = _connect(port, 3)
    accepted = [listener.accept()[0] for _ in range(3)]
    try:
        # The client ends have the port as their remote port, not their local one: the
        # test process holds them too, and they are not counted.
        assert _wait_for([3], port, [os.getpid()]) == [3]
    finally:
        for s in clients + accepted:
            s.close()


def test_each_process_gets_its_own_count_in_the_order_asked(listener: socket.socket) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        child_port = int(child.stdout.readline())
        theirs = _connect(child_port, 2)
        port = listener.getsockname()[1]
        ours_clients = _connect(port, 1)
        ours = [listener.accept()[0]]
        pids = [child.pid, os.getpid()]
        assert _wait_for([2, 0], child_port, pids) == [2, 0]
        assert established_per_process(port, pids) == [0, 1]
    finally:
        child.stdin.close()
        child.wait(timeout=10)
        child.stdout.close()
        for s in theirs + ours_clients + ours:
            s.close()


def test_closed_connections_and_unknown_processes_count_nothing(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    client = _connect(port, 1)[0]
    accepted = listener.accept()[0]
    accepted.close()
    client.close()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert established_per_process(port, [os.getpid(), gone.pid]) == [0, 0]


def test_a_listening_socket_is_found_with_the_process_that_holds_it(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    owners = listening_processes(port)
    assert list(owners) == [os.getpid()] and len(owners[os.getpid()]) == 1
    clients = _connect(port, 2)  # connections on the port are not listeners
    try:
        assert listening_processes(port) == owners
    finally:
        for c in clients:
            c.close()
    listener.close()
    assert listening_processes(port) == {}
