"""Loading the Lua scripts: one ``.lua`` file per operation, plus ``_lib.lua``.

The files live in the top-level ``lua/`` directory of the repository, which the wheel
ships as ``onhand/lua``. Each script is ``_lib.lua`` spliced in after the script's own
first line (its ``#!lua`` shebang, which must stay first) and registered once with
redis-py's ``register_script``: calls go out as EVALSHA, and a NOSCRIPT (script cache
flushed, server restarted, failover) is answered by loading the script and running it
again, which is safe because NOSCRIPT means it did not run.
"""

from __future__ import annotations

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


def script_source(name: str) -> str:
    """The full text sent to Redis for script ``name`` (shebang, library, body)."""
    if name not in SCRIPT_NAMES:
        raise KeyError(name)
    directory = lua_dir()
    body = (directory / f"{name}.lua").read_text(encoding="utf-8")
    lib = (directory / "_lib.lua").read_text(encoding="utf-8")
    first, _, rest = body.partition("\n")
    if not first.startswith("#!lua"):
        raise ValueError(f"{name}.lua must start with a #!lua line")
    return f"{first}\n{lib}\n{rest}"


class Scripts:
    """Every script registered on one client; ``scripts["reserve"](keys=…, args=…)``."""

    def __init__(self, client: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(script_source(name)) for name in SCRIPT_NAMES
        }

    def __getitem__(self, name: str) -> AsyncScript:
        return self._scripts[name]
