"""The ledger's Alembic migrations on a real PostgreSQL: schema, append-only movements, roles.

Every test gets its own database (``database_url``: created, migrated to head,
dropped afterwards). The role tests also create a throwaway login role
``onhand_t<8 hex>_app``, a member of ``onhand_app``, and drop it afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, inspect
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from onhand.ledger import migrate
from onhand.ledger.migrate import APP_ROLE, asyncpg_dsn, sqlalchemy_url
from onhand.ledger.tables import metadata, movements

pytestmark = pytest.mark.postgres

APPEND_ONLY = "movements is append-only"
DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call, unused-ignore]


# -- helpers --------------------------------------------------------------------


def movement(event_id: str = "e-1", **overrides: Any) -> dict[str, Any]:
    """A valid ``movements`` row with the required columns (and ``overrides``)."""
    row: dict[str, Any] = {
        "event_id": event_id,
        "partition": 0,
        "stream_ms": 1_700_000_000_000,
        "stream_seq": 0,
        "type": "received",
        "at_ms": 1_700_000_000_000,
        "sku": "SKU-1",
        "warehouse": "WH-1",
        "d_on_hand": 5,
        "on_hand": 5,
        "held": 0,
        "committed": 0,
        "version": 1,
    }
    row.update(overrides)
    return row


async def insert_row(conn: Any, table: str, row: dict[str, Any]) -> str:
    """INSERT ``row`` into ``table`` with asyncpg; returns the command status."""
    names = ", ".join(row)
    params = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    status: str = await conn.execute(
        f"INSERT INTO {table} ({names}) VALUES ({params})", *row.values()
    )
    return status


def url_as(url: str, user: str, password: str) -> str:
    """``url`` with its credentials replaced by ``user``/``password``."""
    parts = urlsplit(url)
    hostport = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


def snapshot(connection: Connection) -> dict[str, Any]:
    """Everything the inspector knows about the public tables (not alembic_version)."""
    inspector = inspect(connection)
    tables: dict[str, Any] = {}
    for name in sorted(inspector.get_table_names()):
        if name == "alembic_version":
            continue
        tables[name] = {
            "columns": [
                (
                    c["name"],
                    c["type"].compile(dialect=DIALECT),
                    c["nullable"],
                    c.get("default"),
                )
                for c in inspector.get_columns(name)
            ],
            "pk": inspector.get_pk_constraint(name),
            "fks": sorted(inspector.get_foreign_keys(name), key=lambda fk: str(fk["name"])),
            "indexes": sorted(inspector.get_indexes(name), key=lambda ix: str(ix["name"])),
            "checks": sorted(inspector.get_check_constraints(name), key=lambda ck: str(ck["name"])),
            "uniques": inspector.get_unique_constraints(name),
        }
    return tables


def schema_diff(connection: Connection) -> list[Any]:
    """Alembic's autogenerate comparison of the database with ``tables.metadata``."""
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


async def catalog(conn: Any) -> dict[str, Any]:
    """Triggers, functions and table privileges: what the inspector does not show."""
    triggers = await conn.fetch(
        "SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal ORDER BY 1, 2"
    )
    functions = await conn.fetch(
        "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1"
    )
    grants = await conn.fetch(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
        "WHERE grantee = $1 ORDER BY 1, 2",
        APP_ROLE,
    )
    sequences = await conn.fetch(
        "SELECT relname, has_sequence_privilege($1, c.oid, 'USAGE') AS usage "
        "FROM pg_class c WHERE relkind = 'S' AND relnamespace = 'public'::regnamespace "
        "ORDER BY 1",
        APP_ROLE,
    )
    return {
        "triggers": [tuple(r) for r in triggers],
        "functions": [r[0] for r in functions],
        "grants": [tuple(r) for r in grants],
        "sequences": [tuple(r) for r in sequences],
    }


# -- fixtures -------------------------------------------------------------------


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(database_url), poolclass=NullPool)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def owner(database_url: str) -> AsyncIterator[Any]:
    """asyncpg connection to the test database as the role that ran the migrations."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def app_conn(database_url: str, pg_admin_url: str) -> AsyncIterator[Any]:
    """asyncpg connection as a throwaway login role ``onhand_t<hex>_app`` in onhand_app."""
    role = f"onhand_t{os.urandom(4).hex()}_app"
    password = secrets.token_hex(16)
    admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url), timeout=10)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE {APP_ROLE}")
        try:
            conn = await asyncpg.connect(url_as(database_url, role, password), timeout=10)
            try:
                assert await conn.fetchval("SELECT current_user") == role
                yield conn
            finally:
                await conn.close()
        finally:
            await admin.execute(f"DROP ROLE {role}")
    finally:
        await admin.close()


# -- migrations -----------------------------------------------------------------


async def test_upgrade_downgrade_and_upgrade_again(
    database_url: str, engine: AsyncEngine, owner: Any
) -> None:
    assert migrate.head_revision() == "0003"
    assert await migrate.current_revision(database_url) == migrate.head_revision()
    async with engine.connect() as conn:
        at_head = await conn.run_sync(snapshot)
    assert set(at_head) == set(metadata.tables)
    catalog_at_head = await catalog(owner)

    await migrate.downgrade(database_url, "base")
    assert await migrate.current_revision(database_url) is None
    async with engine.connect() as conn:
        assert await conn.run_sync(snapshot) == {}
    assert await catalog(owner) == {"triggers": [], "functions": [], "grants": [], "sequences": []}
    # The role outlives the downgrade: it is cluster-wide and may serve other databases.
    assert await owner.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", APP_ROLE) == 1

    await migrate.upgrade(database_url)
    assert await migrate.current_revision(database_url) == migrate.head_revision()
    async with engine.connect() as conn:
        assert await conn.run_sync(snapshot) == at_head
    assert await catalog(owner) == catalog_at_head


def test_sync_wrappers_upgrade_and_downgrade(database_url: str) -> None:
    migrate.downgrade_sync(database_url, "base")
    migrate.upgrade_sync(database_url, "head")
    migrate.upgrade_sync(database_url)  # already at head: nothing to do


async def test_sync_wrapper_refuses_a_running_loop(database_url: str) -> None:
    with pytest.raises(RuntimeError, match="running event loop"):
        migrate.upgrade_sync(database_url)


async def test_env_py_runs_on_a_connection_the_caller_shares(
    database_url: str, engine: AsyncEngine
) -> None:
    """Alembic's connection-sharing recipe: config.attributes["connection"], caller's txn."""

    def run(connection: Connection, revision: str, *, down: bool) -> None:
        config = migrate.alembic_config()  # no URL: env.py must use the connection
        config.attributes["connection"] = connection
        if down:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run, "base", down=True)
        await conn.rollback()  # transactional DDL: the downgrade never happened
    assert await migrate.current_revision(database_url) == migrate.head_revision()
    async with engine.begin() as conn:
        await conn.run_sync(run, "base", down=True)
    assert await migrate.current_revision(database_url) is None
    async with engine.begin() as conn:
        await conn.run_sync(run, "head", down=False)
    assert await migrate.current_revision(database_url) == migrate.head_revision()


async def test_urls_with_the_asyncpg_scheme_work_too(database_url: str) -> None:
    url = sqlalchemy_url(database_url)
    assert url.startswith("postgresql+asyncpg://")
    assert await migrate.current_revision(url) == migrate.head_revision()
    await migrate.upgrade(url)


# -- the schema -----------------------------------------------------------------


async def test_the_migrated_schema_is_tables_py(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(schema_diff) == []
        tables = await conn.run_sync(snapshot)

    assert set(tables) == set(metadata.tables)
    for table in metadata.sorted_tables:
        got = tables[table.name]
        assert [c[:3] for c in got["columns"]] == [
            (c.name, c.type.compile(dialect=DIALECT), c.nullable) for c in table.columns
        ], table.name
        for (name, _, _, default), column in zip(got["columns"], table.columns, strict=True):
            serial = default is not None and default.startswith("nextval(")
            assert (default is not None and not serial) == (column.server_default is not None), (
                table.name,
                name,
                default,
            )
        assert got["pk"]["name"] == table.primary_key.name
        assert got["pk"]["constrained_columns"] == [c.name for c in table.primary_key.columns]
        assert {ix["name"]: ix["column_names"] for ix in got["indexes"]} == {
            ix.name: [c.name for c in ix.columns] for ix in table.indexes
        }
        expected_checks = {c.name for c in table.constraints if isinstance(c, CheckConstraint)}
        assert {ck["name"] for ck in got["checks"]} == expected_checks
        assert {fk["name"] for fk in got["fks"]} == {
            fk.name for fk in table.foreign_key_constraints
        }


async def test_movements_is_append_only_for_its_owner(owner: Any) -> None:
    assert await insert_row(owner, "movements", movement()) == "INSERT 0 1"
    statements = [
        "UPDATE movements SET reason = 'rewritten'",
        "UPDATE movements SET reason = 'x' WHERE false",  # statement-level: even no rows
        "DELETE FROM movements",
        "DELETE FROM movements WHERE event_id = 'no such event'",
        "TRUNCATE movements",
        "INSERT INTO movements (event_id, partition, stream_ms, stream_seq, type, at_ms, sku,"
        " version) VALUES ('e-1', 0, 1, 0, 'received', 1, 'SKU-1', 1)"
        " ON CONFLICT (event_id) DO UPDATE SET reason = 'upserted'",
    ]
    for sql in statements:
        with pytest.raises(asyncpg.RaiseError, match=APPEND_ONLY):
            await owner.execute(sql)
    row = await owner.fetchrow("SELECT event_id, reason FROM movements")
    assert tuple(row) == ("e-1", None)
    assert await owner.fetchval("SELECT count(*) FROM movements") == 1


async def test_movements_is_append_only_for_members_of_onhand_app(
    owner: Any, app_conn: Any
) -> None:
    # What the service needs works...
    assert await insert_row(app_conn, "movements", movement()) == "INSERT 0 1"
    assert await app_conn.fetchval("SELECT count(*) FROM movements") == 1
    # ...rewriting history does not, by privilege (and by trigger behind it).
    refused = [
        "UPDATE movements SET reason = 'rewritten'",
        "DELETE FROM movements",
        "TRUNCATE movements",
        "ALTER TABLE movements DISABLE TRIGGER movements_no_update_delete",
        "DROP TRIGGER movements_no_update_delete ON movements",
        "DROP TABLE movements",
        "SET session_replication_role = replica",
    ]
    for sql in refused:
        with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.RaiseError)):
            await app_conn.execute(sql)
    assert await owner.fetchval("SELECT count(*) FROM movements") == 1


async def test_members_of_onhand_app_may_change_the_other_tables(app_conn: Any) -> None:
    level = {
        "sku": "SKU-1",
        "warehouse": "WH-1",
        "on_hand": 5,
        "held": 0,
        "committed": 0,
        "safety_stock": 0,
        "version": 1,
        "low": False,
        "updated_ms": 1,
    }
    await insert_row(app_conn, "stock_levels", level)
    assert await app_conn.execute("UPDATE stock_levels SET held = 1") == "UPDATE 1"
    assert await app_conn.execute("DELETE FROM stock_levels") == "DELETE 1"
    # Serial columns need USAGE on their sequences.
    dead = {"partition": 0, "stream_id": "1-0", "fields": "{}", "error": "boom", "attempts": 3}
    await insert_row(app_conn, "dead_letters", dead)
    await insert_row(app_conn, "lost_events", {"partition": 0, "stream_id": "1-1", "cause": "x"})
    await insert_row(app_conn, "redis_epochs", {"run_id": "r", "reason": "start"})
    await insert_row(
        app_conn, "stream_watermarks", {"partition": 3, "stream_ms": 1, "stream_seq": 0}
    )
    assert await app_conn.fetchval("SELECT max(epoch) FROM redis_epochs") == 1


async def test_a_duplicate_event_id_with_on_conflict_do_nothing_inserts_nothing(
    engine: AsyncEngine,
) -> None:
    statement = insert(movements).on_conflict_do_nothing(index_elements=["event_id"])
    async with engine.begin() as conn:
        first = await conn.execute(statement, [movement("e-dup")])
        assert first.rowcount == 1
    async with engine.begin() as conn:
        again = await conn.execute(statement, [movement("e-dup", sku="SKU-OTHER", version=9)])
        assert again.rowcount == 0
        rows = (await conn.execute(movements.select())).mappings().all()
    assert [(r["event_id"], r["sku"], r["version"]) for r in rows] == [("e-dup", "SKU-1", 1)]


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"type": "stolen"}, "ck_movements_type"),
        ({"type": "RECEIVED"}, "ck_movements_type"),
        ({"on_hand": -1}, "ck_movements_levels"),
        ({"held": -1}, "ck_movements_levels"),
        ({"committed": -1}, "ck_movements_levels"),
        ({"version": -1}, "ck_movements_version"),
    ],
)
async def test_check_constraints_refuse_bad_movements(
    owner: Any, overrides: dict[str, Any], constraint: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await insert_row(owner, "movements", movement(**overrides))
    assert caught.value.constraint_name == constraint
    assert await owner.fetchval("SELECT count(*) FROM movements") == 0


async def test_check_constraints_of_the_other_tables(owner: Any) -> None:
    reservation = {
        "reservation_id": "r-1",
        "status": "pending",
        "status_rank": 0,
        "fingerprint": "f",
        "created_ms": 1,
        "deadline_ms": 2,
        "max_deadline_ms": 3,
        "updated_ms": 1,
    }
    with pytest.raises(asyncpg.CheckViolationError, match="ck_reservations_status"):
        await insert_row(owner, "reservations", {**reservation, "status": "lost"})
    await insert_row(owner, "reservations", reservation)
    allocation = {"reservation_id": "r-1", "line": 0, "warehouse": "WH-1", "sku": "S", "qty": 0}
    with pytest.raises(asyncpg.CheckViolationError, match="ck_reservation_allocations_qty"):
        await insert_row(owner, "reservation_allocations", allocation)
    # No foreign key on purpose: the writer inserts allocations at stream speed (the
    # reservation row is written in the same transaction), so one is not paid for here.
    with pytest.raises(asyncpg.CheckViolationError, match="ck_warehouses_geo"):
        await insert_row(owner, "warehouses", {"warehouse_id": "WH-1", "latitude": 91.0})
