"""Run the ledger's Alembic migrations from code: no ``alembic.ini``, no file with secrets.

The migration scripts ship inside the package (``onhand/ledger/migrations``); the
Alembic :class:`~alembic.config.Config` is built here, with ``script_location``
pointing at them and ``sqlalchemy.url`` set from the URL the caller passes.

URLs may be given as ``postgresql://…`` (also ``postgres://…``) or
``postgresql+asyncpg://…``. SQLAlchemy gets them as ``postgresql+asyncpg://…``
(:func:`sqlalchemy_url`); ``asyncpg.connect`` wants plain ``postgresql://…``
(:func:`asyncpg_dsn`).

Privileges: run migrations as the role that should own the tables. The first
migration creates the NOLOGIN role ``onhand_app`` if it does not exist (which takes
CREATEROLE, or a superuser, that one time) and grants it what the service needs:
SELECT and INSERT on ``movements``, SELECT/INSERT/UPDATE/DELETE on the other tables,
USAGE on their sequences. Operators make the service's login role a member of it
(``GRANT onhand_app TO my_service_login``) rather than letting the service log in
as the owner: ``movements`` is then append-only twice over, by its triggers and by
the missing privileges. Downgrades never drop ``onhand_app`` (a role belongs to the
whole cluster and may be shared with other databases).

Alembic keeps its per-run state in module globals, so one process runs one
migration at a time (a lock here serialises them); separate processes migrating the
same database are serialised by an advisory lock in ``env.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

__all__ = [
    "APP_ROLE",
    "MIGRATIONS_DIR",
    "alembic_config",
    "asyncpg_dsn",
    "current_revision",
    "downgrade",
    "downgrade_sync",
    "head_revision",
    "sqlalchemy_url",
    "upgrade",
    "upgrade_sync",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
"""The Alembic script directory shipped in the package (``env.py``, ``versions/``)."""

APP_ROLE = "onhand_app"
"""The NOLOGIN role the migrations grant the service's privileges to."""

_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")
_RUN_LOCK = threading.Lock()


def _split_scheme(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(
            "expected a postgresql://… or postgresql+asyncpg://… URL, "
            f"not one starting {url.partition('://')[0]!r}"
        )
    return scheme.lower(), rest


def sqlalchemy_url(url: str) -> str:
    """``url`` for SQLAlchemy: the same URL with the scheme ``postgresql+asyncpg``.

    Raises ValueError for any other scheme (``mysql://``, ``postgresql+psycopg://``…)
    or a URL SQLAlchemy cannot parse.
    """
    _, rest = _split_scheme(url)
    normalized = f"postgresql+asyncpg://{rest}"
    try:
        make_url(normalized)
    except ArgumentError as exc:
        raise ValueError(f"not a valid database URL: {exc}") from None
    return normalized


def asyncpg_dsn(url: str) -> str:
    """``url`` for ``asyncpg.connect``: the same URL with the scheme ``postgresql``.

    Everything after ``://`` is kept byte for byte. Raises ValueError for a scheme
    other than ``postgresql``, ``postgres`` or ``postgresql+asyncpg``.
    """
    _, rest = _split_scheme(url)
    return f"postgresql://{rest}"


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic Config built in code: the packaged scripts, and ``database_url`` if given.

    ``sqlalchemy.url`` is stored normalized (:func:`sqlalchemy_url`), with ``%``
    escaped for Alembic's ConfigParser interpolation; ``get_main_option`` returns it
    unescaped.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if database_url is not None:
        config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return config


def head_revision() -> str:
    """The revision the packaged migrations end at."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {MIGRATIONS_DIR}")
    return head


def _run(database_url: str, action: Callable[[Config], None]) -> None:
    config = alembic_config(database_url)
    with _RUN_LOCK:
        action(config)


def _check_no_running_loop(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{name}() cannot run inside a running event loop; await the async one")


def upgrade_sync(database_url: str, revision: str = "head") -> None:
    """Upgrade the database at ``database_url`` to ``revision`` (blocking).

    Must not be called from a thread whose event loop is running (use :func:`upgrade`).
    """
    _check_no_running_loop("upgrade_sync")
    _run(database_url, lambda config: command.upgrade(config, revision))


def downgrade_sync(database_url: str, revision: str) -> None:
    """Downgrade the database at ``database_url`` to ``revision`` (``"base"``: empty)."""
    _check_no_running_loop("downgrade_sync")
    _run(database_url, lambda config: command.downgrade(config, revision))


async def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the database at ``database_url`` to ``revision``.

    Alembic is synchronous and ``env.py`` drives its own event loop, so the run
    happens in a worker thread; the caller's loop stays free meanwhile.
    """
    await asyncio.to_thread(_run, database_url, lambda config: command.upgrade(config, revision))


async def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the database at ``database_url`` to ``revision`` (``"base"``: empty)."""
    await asyncio.to_thread(_run, database_url, lambda config: command.downgrade(config, revision))


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(database_url: str) -> str | None:
    """The revision the database at ``database_url`` is at; None if unmigrated."""
    engine = create_async_engine(sqlalchemy_url(database_url), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_current)
    finally:
        await engine.dispose()
