"""Alembic environment for the onhand ledger (async: SQLAlchemy's async engine on asyncpg).

There is no ``alembic.ini``: :mod:`onhand.ledger.migrate` builds the Alembic
:class:`~alembic.config.Config` in code and sets ``sqlalchemy.url`` on it. This file
reads the URL from there and nowhere else (no file, no environment variable).

Two ways in:

* ``config.attributes["connection"]`` holds a (sync-facing) SQLAlchemy
  :class:`~sqlalchemy.engine.Connection`: the migrations run on it, inside the
  caller's transaction (Alembic's "connection sharing" recipe; from async code use
  ``await async_conn.run_sync(...)``).
* Otherwise an async engine is made from ``sqlalchemy.url`` (with ``NullPool``) and
  driven with :func:`asyncio.run`, so this path must not be entered from a thread
  whose event loop is running; :func:`onhand.ledger.migrate.upgrade` runs it in a
  worker thread.

Offline mode (``--sql``) renders the SQL script for the URL's dialect.

Every online run first takes a transaction-scoped advisory lock, so processes that
migrate the same database at the same time run one after the other.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from onhand.ledger.tables import metadata

config = context.config
target_metadata = metadata

MIGRATION_LOCK_KEY = 0x6F6E68616E64  # "onhand": pg_advisory_xact_lock key for migrations


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "sqlalchemy.url is not set on the Alembic config; "
            "run migrations through onhand.ledger.migrate (or set it in code)"
        )
    return url


def run_migrations_offline() -> None:
    """Render the migrations as SQL for the URL's dialect, without connecting."""
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    """Run the migrations on ``connection`` (sync-facing; inside ``run_sync`` for async)."""
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def run_async_migrations() -> None:
    """Make an async engine from ``sqlalchemy.url`` and run the migrations on it."""
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    shared = config.attributes.get("connection")
    if shared is not None:
        do_run_migrations(shared)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
