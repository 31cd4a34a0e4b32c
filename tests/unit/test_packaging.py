"""The wheel ships the Lua scripts, and the loader finds every script it registers."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from onhand.engine.scripts import SCRIPT_NAMES, lua_dir, script_source

ROOT = Path(__file__).resolve().parents[2]


def test_every_script_starts_with_its_shebang_and_documents_keys_argv_and_returns():
    for name in SCRIPT_NAMES:
        text = (ROOT / "lua" / f"{name}.lua").read_text()
        assert text.startswith("#!lua"), name
        header = text.split("]]", 1)[0]
        for word in ("KEYS[1]", "ARGV[1]", "Returns"):
            assert word in header, (name, word)


def test_the_loader_splices_the_library_after_the_shebang():
    source = script_source("reserve")
    assert source.startswith("#!lua\n")
    assert "local function rec_change" in source
    assert (lua_dir() / "_lib.lua").is_file()


@pytest.mark.slow
def test_the_wheel_contains_every_lua_script(tmp_path: Path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("onhand-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (*SCRIPT_NAMES, "_lib"):
        assert f"onhand/lua/{name}.lua" in names
