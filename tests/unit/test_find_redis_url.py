"""How the test session chooses its Redis (tests.servers.find_redis_url)."""

from __future__ import annotations

import pytest

from tests import servers
from tests.servers import DEFAULT_REDIS_URL, ENV_MODE, ENV_URL, find_redis_url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.delenv(ENV_MODE, raising=False)


def _ping_answers(answer: bool, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    probed: list[tuple[str, int]] = []

    def fake_ping(host: str, port: int, timeout: float = 0.5) -> bool:
        probed.append((host, port))
        return answer

    monkeypatch.setattr(servers, "ping", fake_ping)
    return probed


def test_env_url_wins_without_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    probed = _ping_answers(True, monkeypatch)
    monkeypatch.setenv(ENV_URL, "redis://127.0.0.1:6380/3")
    assert find_redis_url() == "redis://127.0.0.1:6380/3"
    assert probed == []


def test_empty_env_url_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    _ping_answers(True, monkeypatch)
    monkeypatch.setenv(ENV_URL, "")
    assert find_redis_url() == DEFAULT_REDIS_URL


@pytest.mark.parametrize(("answers", "expected"), [(True, DEFAULT_REDIS_URL), (False, None)])
def test_default_server_is_probed(
    monkeypatch: pytest.MonkeyPatch, answers: bool, expected: str | None
) -> None:
    probed = _ping_answers(answers, monkeypatch)
    assert find_redis_url() == expected
    assert probed == [("127.0.0.1", 6379)]


def test_private_mode_forces_a_private_server(monkeypatch: pytest.MonkeyPatch) -> None:
    probed = _ping_answers(True, monkeypatch)
    monkeypatch.setenv(ENV_MODE, "private")
    assert find_redis_url() is None
    assert probed == []


def test_private_mode_and_url_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_MODE, "private")
    monkeypatch.setenv(ENV_URL, "redis://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="contradicts"):
        find_redis_url()


def test_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_MODE, "shared")
    with pytest.raises(ValueError, match="'auto' or 'private'"):
        find_redis_url()
