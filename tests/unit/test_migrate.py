"""onhand.ledger.migrate without a database: URLs, the in-code Alembic config, offline SQL."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory

from onhand.ledger import migrate
from onhand.ledger.migrate import (
    MIGRATIONS_DIR,
    alembic_config,
    asyncpg_dsn,
    head_revision,
    sqlalchemy_url,
)
from onhand.ledger.tables import metadata


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgresql+asyncpg://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("PostgreSQL://u@h/db?ssl=require", "postgresql+asyncpg://u@h/db?ssl=require"),
    ],
)
def test_sqlalchemy_url(url: str, expected: str) -> None:
    assert sqlalchemy_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+asyncpg://u:p%40x@h:5432/db", "postgresql://u:p%40x@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgres://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_asyncpg_dsn(url: str, expected: str) -> None:
    assert asyncpg_dsn(url) == expected


@pytest.mark.parametrize(
    "url", ["mysql://u@h/db", "postgresql+psycopg://u@h/db", "u@h/db", "redis://h/0", ""]
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        sqlalchemy_url(url)
    with pytest.raises(ValueError):
        asyncpg_dsn(url)


def test_the_config_is_built_in_code() -> None:
    config = alembic_config("postgresql://u:p%25w@h/db")
    assert config.config_file_name is None
    assert config.get_main_option("script_location") == str(MIGRATIONS_DIR)
    # % is escaped for ConfigParser and comes back as given.
    assert config.get_main_option("sqlalchemy.url") == "postgresql+asyncpg://u:p%25w@h/db"
    assert alembic_config().get_main_option("sqlalchemy.url") is None


def test_the_package_ships_the_migrations() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_initial.py").is_file()
    assert MIGRATIONS_DIR.parent == Path(migrate.__file__).resolve().parent


def test_one_linear_history_ending_at_the_newest_revision() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    assert scripts.get_heads() == ["0003"]
    assert head_revision() == "0003"
    assert [s.revision for s in scripts.walk_revisions()] == ["0003", "0002", "0001"]


def _offline_sql(revision: str, *, downgrade: bool = False) -> str:
    buffer = io.StringIO()
    config = alembic_config("postgresql://offline@localhost/offline")
    config.output_buffer = buffer
    if downgrade:
        command.downgrade(config, revision, sql=True)
    else:
        command.upgrade(config, revision, sql=True)
    return buffer.getvalue()


def test_offline_upgrade_renders_every_table_the_triggers_and_the_grants() -> None:
    sql = _offline_sql("head")
    for table in metadata.tables:
        assert re.search(rf"CREATE TABLE {table} \(", sql), table
    assert "CREATE FUNCTION movements_append_only()" in sql
    assert "BEFORE UPDATE OR DELETE ON movements FOR EACH STATEMENT" in sql
    assert "BEFORE TRUNCATE ON movements FOR EACH STATEMENT" in sql
    assert "CREATE ROLE onhand_app NOLOGIN" in sql
    assert "GRANT SELECT, INSERT ON movements TO onhand_app" in sql
    assert "GRANT USAGE ON SEQUENCE" in sql
    assert "ON movements TO onhand_app" in sql
    assert not re.search(r"GRANT [^;]*(UPDATE|DELETE)[^;]* ON movements\b", sql)


def test_offline_downgrade_drops_everything_but_the_role() -> None:
    sql = _offline_sql("0002:base", downgrade=True)
    for table in metadata.tables:
        assert f"DROP TABLE {table};" in sql, table
    assert "DROP FUNCTION movements_append_only()" in sql
    assert "DROP ROLE" not in sql
