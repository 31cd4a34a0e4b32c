"""The benchmark names the external tools it lacks before it starts anything."""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path

import pytest
from loadtests import bench


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH and the interpreter's folder both point at an empty folder."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    return tmp_path


def _install(folder: Path, name: str) -> None:
    tool = folder / name
    tool.write_text("#!/bin/sh\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


def test_every_missing_tool_of_the_chosen_sections_is_named(bare_path: Path) -> None:
    assert [m.split(" ")[0] for m in bench.missing_tools({"a", "b", "c", "e"})] == [
        "redis-benchmark",
        "wrk",
        "py-spy",
    ]


def test_sections_that_need_no_tool_need_nothing(bare_path: Path) -> None:
    assert bench.missing_tools({"b", "e"}) == []


def test_installed_tools_are_not_reported(bare_path: Path) -> None:
    for name in ("redis-benchmark", "wrk", "py-spy"):
        _install(bare_path, name)
    assert bench.missing_tools({"a", "c"}) == []


def test_the_command_stops_with_a_clear_message_before_measuring(
    bare_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert asyncio.run(bench.main(["--only", "c"])) == 2
    err = capsys.readouterr().err
    assert "missing tools: wrk (Debian package wrk)" in err
