"""How the test session chooses its PostgreSQL (tests.pg.find_postgres_url) and names databases."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests import pg
from tests.pg import (
    DEFAULT_POSTGRES_URL,
    ENV_MODE,
    ENV_URL,
    database_url_for,
    drop_database,
    find_postgres_url,
    new_database_name,
    pg_ping,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.delenv(ENV_MODE, raising=False)


def _ping_answers(answer: bool, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    probed: list[tuple[str, int]] = []

    def fake_ping(host: str, port: int, *args: object, **kwargs: object) -> bool:
        probed.append((host, port))
        return answer

    monkeypatch.setattr(pg, "pg_ping", fake_ping)
    return probed


def test_env_url_wins_without_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    probed = _ping_answers(True, monkeypatch)
    monkeypatch.setenv(ENV_URL, "postgresql://admin:pw@db.test:6543/postgres")
    assert find_postgres_url() == "postgresql://admin:pw@db.test:6543/postgres"
    assert probed == []


def test_empty_env_url_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    _ping_answers(True, monkeypatch)
    monkeypatch.setenv(ENV_URL, " ")
    assert find_postgres_url() == DEFAULT_POSTGRES_URL


@pytest.mark.parametrize(("answers", "expected"), [(True, DEFAULT_POSTGRES_URL), (False, None)])
def test_default_server_is_probed(
    monkeypatch: pytest.MonkeyPatch, answers: bool, expected: str | None
) -> None:
    probed = _ping_answers(answers, monkeypatch)
    assert find_postgres_url() == expected
    assert probed == [("127.0.0.1", 5432)]


def test_private_mode_forces_a_private_server(monkeypatch: pytest.MonkeyPatch) -> None:
    probed = _ping_answers(True, monkeypatch)
    monkeypatch.setenv(ENV_MODE, "Private")
    assert find_postgres_url() is None
    assert probed == []


def test_private_mode_and_url_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_MODE, "private")
    monkeypatch.setenv(ENV_URL, DEFAULT_POSTGRES_URL)
    with pytest.raises(ValueError, match="contradicts"):
        find_postgres_url()


def test_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_MODE, "shared")
    with pytest.raises(ValueError, match="'auto' or 'private'"):
        find_postgres_url()


@pytest.fixture
def fake_server() -> Iterator[tuple[socket.socket, list[bytes]]]:
    """A listening socket that answers every connection with the bytes queued for it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    replies: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(2)
            with conn, contextlib.suppress(OSError):
                conn.recv(8)  # SSLRequest
                if replies:
                    conn.sendall(replies.pop(0))
                    conn.recv(1024)  # startup message
                    if replies:
                        conn.sendall(replies.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener, replies
    stop.set()
    thread.join(5)
    listener.close()


def _port(listener: socket.socket) -> int:
    port: int = listener.getsockname()[1]
    return port


def test_ping_accepts_trust_auth_and_ready_for_query(fake_server) -> None:
    listener, replies = fake_server
    auth_ok = b"R" + (8).to_bytes(4, "big") + (0).to_bytes(4, "big")
    ready = b"Z" + (5).to_bytes(4, "big") + b"I"
    replies += [b"N", auth_ok + ready]
    assert pg_ping("127.0.0.1", _port(listener), timeout=2)


def test_ping_refuses_a_password_request(fake_server) -> None:
    listener, replies = fake_server
    md5 = b"R" + (12).to_bytes(4, "big") + (5).to_bytes(4, "big") + b"salt"
    replies += [b"N", md5]
    assert not pg_ping("127.0.0.1", _port(listener), timeout=2)


def test_ping_refuses_what_is_not_postgres(fake_server) -> None:
    listener, replies = fake_server
    replies += [b"-ERR unknown command\r\n"]
    assert not pg_ping("127.0.0.1", _port(listener), timeout=2)


def test_ping_of_a_closed_port_is_false() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    assert not pg_ping("127.0.0.1", port, timeout=1)


def test_database_names_and_urls() -> None:
    name = new_database_name()
    assert len(name) == len("onhand_t") + 8
    assert name.startswith("onhand_t")
    assert new_database_name("onhand_tmpl_").startswith("onhand_tmpl_")
    assert (
        database_url_for("postgresql+asyncpg://u:p@h:1/postgres?sslmode=disable", name)
        == f"postgresql://u:p@h:1/{name}?sslmode=disable"
    )


@pytest.mark.parametrize("name", ["postgres", "test", "onhand_t1234", "onhand_tXXXXXXXX", "x"])
def test_only_test_databases_can_be_dropped(name: str) -> None:
    with pytest.raises(ValueError, match="refusing"):
        drop_database("postgresql://nobody@127.0.0.1:1/postgres", name)
