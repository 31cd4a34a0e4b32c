"""The wheel ships the Lua scripts, and the loader finds every script it registers."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from onhand.engine.scripts import (
    SCRIPT_NAMES,
    _definitions,
    _names,
    library_for,
    library_source,
    lua_dir,
    script_source,
)

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


def test_each_script_gets_the_library_definitions_it_uses_and_no_others():
    lib = (ROOT / "lua" / "_lib.lua").read_text()
    defs = _definitions(lib)
    defined = set().union(*(d.defines for d in defs))
    assert {"reject", "run", "start_clock", "require_ready", "rec_change"} <= defined
    for name in SCRIPT_NAMES:
        source = script_source(name)
        kept = [d for d in defs if d.text in source]
        provided = set().union(*(d.defines for d in kept))
        # Closed: every library name the assembled script mentions is defined in it.
        assert _names(source) & defined <= provided, name
        # Minimal: every kept definition is used by the body or by another kept one.
        body = (ROOT / "lua" / f"{name}.lua").read_text()
        users = _names(body).union(*(d.uses for d in kept))
        for d in kept:
            assert d.defines & users, (name, d.defines)
    mark_ready = script_source("mark_ready")
    assert "local function server_run_id" in mark_ready
    assert "local function header_load" not in mark_ready


def test_library_selection_follows_uses_through_definitions_and_ignores_comments():
    lib = """--[[ header ]]
local A = 1
-- b doubles A
local function b() return A * 2 end
local function c()
  return 'b'  -- b
end
local D, E = {}, {}
"""
    assert (
        library_for("return b()", lib)
        == "local A = 1\n-- b doubles A\nlocal function b() return A * 2 end"
    )
    assert "local A" not in library_for("-- b()\nreturn c()", lib)
    assert library_for("return E", lib).strip() == "local D, E = {}, {}"
    with pytest.raises(ValueError, match="not a definition"):
        library_for("", lib + "return 1\n")


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


def test_the_function_library_registers_every_script_with_its_shebang_flags():
    library = library_source()
    source = library.source
    assert source.startswith(f"#!lua name={library.name}\n")
    assert re.fullmatch(r"onhand_[0-9a-f]{12}", library.name)
    assert set(library.functions) == set(SCRIPT_NAMES)
    for name, function in library.functions.items():
        flags = "{'no-writes'}" if name in ("read", "digest") else "{}"
        assert f"function_name = '{function}', flags = {flags}," in source, name
        assert f"local function script_{name}()" in source
    # Each callback sets KEYS/ARGV and resets the per-call state before the body runs.
    reset = source.split("local function reset()\n", 1)[1].split("\nend\n", 1)[0]
    assert reset.split("\n") == [
        "  NOW = 0",
        "  NOWS = '0'",
        "  FMTS = {}",
        "  INTS = {}",
        "  IDS = {}",
        "  TEXTS = {}",
        "  TYPED = {}",
        "  READY = {}",
        "  RECS = {}",
        "  DIRTY = {}",
        "  SKUS = {}",
        "  EMITTED = {}",
        "  DEPTH = 0",
        "  FINGERPRINTS = {}",
        "  SLOTS = {}",
    ]
    assert source.count("KEYS, ARGV = keys, args; reset(); return script_") == len(SCRIPT_NAMES)
