"""Loading the Lua scripts: one ``.lua`` file per operation, plus ``_lib.lua``.

The files live in the top-level ``lua/`` directory of the repository, which the wheel
ships as ``onhand/lua``. Each script is the part of ``_lib.lua`` it uses spliced in
after the script's own first line (its ``#!lua`` shebang, which must stay first) and
registered once with
redis-py's ``register_script``: calls go out as EVALSHA, and a NOSCRIPT (script cache
flushed, server restarted, failover) is answered by loading the script and running it
again, which is safe because NOSCRIPT means it did not run.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ["SCRIPT_NAMES", "Scripts", "lua_dir", "script_source"]

SCRIPT_NAMES = (
    "receive",
    "adjust",
    "set_count",
    "transfer",
    "set_safety_stock",
    "set_policy",
    "reserve",
    "confirm",
    "release",
    "extend",
    "fulfill",
    "cancel",
    "expire",
    "mark_ready",
    "repair",
    "load",
    "digest",
    "admit",
    "idempotency",
    "read",
)


def lua_dir() -> Traversable:
    """The directory holding the ``.lua`` files.

    In a source checkout (including an editable install) that is the repository's
    top-level ``lua/``, so an edited script is used at once; in an installed wheel it
    is the packaged copy ``onhand/lua``.
    """
    checkout = Path(__file__).resolve().parents[3] / "lua"
    if (checkout / "_lib.lua").is_file():
        return checkout
    return resources.files("onhand") / "lua"


_LONG_COMMENT = re.compile(r"--\[(=*)\[.*?\]\1\]", re.DOTALL)
_LINE_COMMENT = re.compile(r"--[^\n]*")
_STRING = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEFINES = re.compile(r"local\s+function\s+([A-Za-z_]\w*)|local\s+([A-Za-z_][\w,\s]*?)\s*(?:=|$)")


def _names(code: str) -> set[str]:
    """Identifiers used in Lua ``code``, comments and string literals left out."""
    code = _LINE_COMMENT.sub("", _LONG_COMMENT.sub("", code))
    return set(_NAME.findall(_STRING.sub("''", code)))


class _Definition:
    """One top-level statement of ``_lib.lua`` (``local function f`` / ``local X = …``)
    with the comment lines right above it."""

    def __init__(self, text: str, statement: str) -> None:
        self.text = text
        match = _DEFINES.match(statement)
        if match is None:
            raise ValueError(f"_lib.lua: cannot read the definition {statement!r}")
        if match.group(1):
            self.defines = {match.group(1)}
        else:
            self.defines = {n.strip() for n in match.group(2).split(",")}
        self.uses = _names(text) - self.defines


def _definitions(lib: str) -> list[_Definition]:
    """Split ``_lib.lua`` into its top-level definitions.

    A definition starts at a line that begins (in column 0) with ``local``; the comment
    lines directly above it belong to it; every other line (indented, ``end``, ``}``,
    blank) continues the definition above. The file's leading comment block and a line
    at column 0 that is neither are not definitions and are rejected, so that nothing
    in the file can be silently dropped.
    """
    head = _LONG_COMMENT.match(lib)
    lines = lib[head.end() if head else 0 :].split("\n")
    out: list[_Definition] = []
    pending: list[str] = []
    current: list[str] | None = None
    statement = ""

    def close() -> None:
        if current is not None:
            out.append(_Definition("\n".join(current), statement))

    for line in lines:
        if line.startswith("--"):
            pending.append(line)
        elif line.startswith("local"):
            close()
            current, statement = [*pending, line], line
            pending = []
        elif line.strip() == "" or line[:1] in (" ", "\t") or line in ("end", "}"):
            if current is None:
                if line.strip():
                    raise ValueError(f"_lib.lua: code outside a definition: {line!r}")
                continue
            current += [*pending, line]
            pending = []
        else:
            raise ValueError(f"_lib.lua: a top-level line that is not a definition: {line!r}")
    close()
    return out


def library_for(body: str, lib: str) -> str:
    """The definitions of ``lib`` that ``body`` uses, directly or through other
    definitions, in their order in ``lib``.

    Every definition runs anew on each script call (a script's locals do not outlive the
    call), so leaving out what a script never uses saves that work on every call. A
    name mentioned only in a comment or a string does not count; a definition kept for
    a name that is not really used (a local of the same name) costs time, never
    correctness.
    """
    defs = _definitions(lib)
    wanted = _names(body)
    keep = [False] * len(defs)
    changed = True
    while changed:
        changed = False
        for i in range(len(defs) - 1, -1, -1):
            if not keep[i] and defs[i].defines & wanted:
                keep[i] = changed = True
                wanted |= defs[i].uses
    return "\n".join(d.text for d, k in zip(defs, keep, strict=True) if k)


def script_source(name: str) -> str:
    """The full text sent to Redis for script ``name`` (shebang, the library
    definitions it uses, body)."""
    if name not in SCRIPT_NAMES:
        raise KeyError(name)
    directory = lua_dir()
    body = (directory / f"{name}.lua").read_text(encoding="utf-8")
    lib = (directory / "_lib.lua").read_text(encoding="utf-8")
    first, _, rest = body.partition("\n")
    if not first.startswith("#!lua"):
        raise ValueError(f"{name}.lua must start with a #!lua line")
    return f"{first}\n{library_for(rest, lib)}\n{rest}"


class Scripts:
    """Every script registered on one client; ``scripts["reserve"](keys=…, args=…)``."""

    def __init__(self, client: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(script_source(name)) for name in SCRIPT_NAMES
        }

    def __getitem__(self, name: str) -> AsyncScript:
        return self._scripts[name]
