"""Loading the Lua scripts: one ``.lua`` file per operation, plus ``_lib.lua``.

The files live in the top-level ``lua/`` directory of the repository, which the wheel
ships as ``onhand/lua``. The engine runs them as one Redis function library
(:func:`library_source`, ``FUNCTION LOAD``; calls are ``FCALL``): ``_lib.lua``'s
definitions are then created once per library load instead of on every call, and the
server's run_id is read once per library instance (see the fencing note in
``_lib.lua``). A call that finds its function missing (new or flushed server,
failover) loads the library and runs again, which is safe because the call did not
run. :func:`script_source` still assembles a script as a standalone EVAL script.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import ResponseError

__all__ = [
    "SCRIPT_NAMES",
    "Library",
    "ScriptFunction",
    "Scripts",
    "function_missing",
    "library_source",
    "lua_dir",
    "script_source",
]

SCRIPT_NAMES = (
    "receive",
    "adjust",
    "set_count",
    "transfer",
    "set_safety_stock",
    "set_policy",
    "reserve",
    "reserve_many",
    "hold",
    "hold_many",
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
    """Script ``name`` as a standalone EVAL script (shebang, the library definitions it
    uses, body): for ``redis-cli --eval`` and for comparing with revisions before the
    function library. The engine runs :func:`library_source` instead."""
    if name not in SCRIPT_NAMES:
        raise KeyError(name)
    directory = lua_dir()
    body = (directory / f"{name}.lua").read_text(encoding="utf-8")
    lib = (directory / "_lib.lua").read_text(encoding="utf-8")
    first, _, rest = body.partition("\n")
    if not first.startswith("#!lua"):
        raise ValueError(f"{name}.lua must start with a #!lua line")
    return f"{first}\n{library_for(rest, lib)}\n{rest}"


_PER_CALL = re.compile(r"local\s+([A-Za-z_]\w*)\s*=\s*(.+?)\s*--\s*per call\s*$")
_FLAGS = re.compile(r"#!lua(?:\s+flags=([\w,-]+))?\s*$")


def _per_call_resets(lib: str) -> list[str]:
    """``NAME = value`` for every definition of ``lib`` marked ``-- per call``."""
    resets = []
    for d in _definitions(lib):
        first = d.text.split("\n")[
            [line.startswith("local") for line in d.text.split("\n")].index(True)
        ]
        match = _PER_CALL.match(first)
        if match:
            resets.append(f"{match.group(1)} = {match.group(2)}")
    return resets


class Library(NamedTuple):
    """The function library: its Lua source, its name and each script's function name."""

    source: str
    name: str
    functions: dict[str, str]


def library_source() -> Library:
    """Every script as one Redis function library (``FUNCTION LOAD``).

    Layout: ``local KEYS, ARGV``; all of ``_lib.lua`` (its definitions are created once,
    when the library is loaded, instead of on every call); each script's body as a
    local function; one ``redis.register_function`` per script whose callback sets
    ``KEYS`` and ``ARGV``, resets the ``-- per call`` state of ``_lib.lua`` and runs the
    body — so a call sees exactly what an EVAL of the same script saw. Only what
    ``_lib.lua`` deliberately keeps (``RUN_ID``, the server's run_id, which cannot
    change while this library's Lua state lives: see the fencing note there) outlives
    a call. A script's ``#!lua flags=…`` become the function's flags.

    The library and function names carry a hash of the source, so two versions of
    onhand sharing a Redis never replace each other's functions.
    """
    directory = lua_dir()
    lib = (directory / "_lib.lua").read_text(encoding="utf-8")
    resets = _per_call_resets(lib)
    parts = ["local KEYS, ARGV", lib, "local function reset()", *(f"  {r}" for r in resets), "end"]
    registrations = []
    for name in SCRIPT_NAMES:
        first, _, body = (directory / f"{name}.lua").read_text(encoding="utf-8").partition("\n")
        match = _FLAGS.match(first)
        if match is None:
            raise ValueError(f"{name}.lua must start with a #!lua line")
        flags = ", ".join(f"'{f}'" for f in (match.group(1) or "").split(",") if f)
        parts += [f"local function script_{name}()", body, "end"]
        registrations.append((name, flags))
    code = "\n".join(parts)
    digest = hashlib.sha1(code.encode()).hexdigest()[:12]
    lib_name = f"onhand_{digest}"
    functions = {name: f"{lib_name}_{name}" for name in SCRIPT_NAMES}
    for name, flags in registrations:
        code += (
            f"\nredis.register_function{{function_name = '{functions[name]}', flags = {{{flags}}},"
            f"\n  callback = function(keys, args) KEYS, ARGV = keys, args; reset();"
            f" return script_{name}() end}}"
        )
    return Library(f"#!lua name={lib_name}\n{code}\n", lib_name, functions)


LOAD_ATTEMPTS = 3
"""Loads of the library (each followed by the call again) after "function not found"."""


class ScriptFunction:
    """One script as a function of the library; ``await f(keys=…, args=…)`` runs FCALL.

    ``ERR Function not found`` (the library is not on this server: a new or flushed
    Redis, a failover to a server that never had it) means the call did not run; the
    library is loaded and the call sent again — up to ``LOAD_ATTEMPTS`` times, since
    the library may be flushed again between the load and the call.
    """

    def __init__(self, scripts: Scripts, name: str) -> None:
        self._scripts = scripts
        self.name = name
        self.function = scripts.library.functions[name]

    def sibling(self, name: str) -> ScriptFunction:
        """Script ``name`` of the same library and client."""
        return self._scripts[name]

    async def __call__(self, *, keys: Sequence[str], args: Sequence[str]) -> Any:
        client = self._scripts.client
        for _ in range(LOAD_ATTEMPTS):
            try:
                return await client.execute_command(  # type: ignore[no-untyped-call]
                    "FCALL", self.function, len(keys), *keys, *args
                )
            except ResponseError as exc:
                if not function_missing(exc):
                    raise
            await self._scripts.load()
        return await client.execute_command(  # type: ignore[no-untyped-call]
            "FCALL", self.function, len(keys), *keys, *args
        )


def function_missing(exc: BaseException) -> bool:
    """Is ``exc`` Redis's answer to an FCALL of a function it does not have?"""
    return isinstance(exc, ResponseError) and str(exc).startswith("Function not found")


class Scripts:
    """Every script of the library for one client; ``scripts["reserve"](keys=…, args=…)``.

    No I/O at construction: the library is loaded on first need (a call that finds its
    function missing), or ahead of time with :meth:`load`."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.library = library_source()
        self._functions = {name: ScriptFunction(self, name) for name in SCRIPT_NAMES}

    async def load(self) -> None:
        """``FUNCTION LOAD`` the library; one that is already there is left as it is
        (same name, same source)."""
        try:
            await self.client.execute_command(  # type: ignore[no-untyped-call]
                "FUNCTION", "LOAD", self.library.source
            )
        except ResponseError as exc:
            if "already exists" not in str(exc):
                raise

    def __getitem__(self, name: str) -> ScriptFunction:
        return self._functions[name]
