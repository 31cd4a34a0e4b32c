"""Postgres tables (SQLAlchemy Core), kept apart from the domain classes.

``movements`` is the append-only ledger: one row per event, keyed by the event's own
id (stable on replay), never updated or deleted (a trigger refuses both; corrections
are new movements). Everything else is a projection of it, or catalog data whose
record is Postgres: ``stock_levels`` (guarded by record version), ``sku_policies``,
``reservations`` and their allocations, per-partition ``stream_watermarks`` (the last
stream id committed), ``dead_letters``, ``lost_events`` and ``redis_epochs``.
Schema changes go through Alembic (``onhand/ledger/migrations``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

__all__ = [
    "api_keys",
    "dead_letters",
    "lost_events",
    "metadata",
    "movements",
    "redis_epochs",
    "reservation_allocations",
    "reservations",
    "sku_policies",
    "stock_levels",
    "stream_positions",
    "stream_watermarks",
    "warehouses",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

EVENT_TYPES = (
    "received", "adjusted", "counted", "transfer_out", "transfer_in", "safety_stock_set",
    "reserved", "confirmed", "released", "expired", "fulfilled", "cancelled", "extended",
    "policy_set", "low_stock", "reconciled",
)  # fmt: skip
_TYPES_SQL = ", ".join(f"'{t}'" for t in EVENT_TYPES)
STATUSES = ("pending", "confirmed", "released", "expired", "fulfilled", "cancelled")
_STATUSES_SQL = ", ".join(f"'{s}'" for s in STATUSES)


def _now() -> Column[object]:
    return Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now())


movements = Table(
    "movements",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("partition", SmallInteger, nullable=False),
    Column("stream_ms", BigInteger, nullable=False),
    Column("stream_seq", BigInteger, nullable=False),
    Column("type", Text, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("sku", Text, nullable=False),
    Column("warehouse", Text),
    Column("d_on_hand", BigInteger, nullable=False, server_default="0"),
    Column("d_held", BigInteger, nullable=False, server_default="0"),
    Column("d_committed", BigInteger, nullable=False, server_default="0"),
    Column("on_hand", BigInteger),
    Column("held", BigInteger),
    Column("committed", BigInteger),
    Column("safety_stock", BigInteger),
    Column("version", BigInteger, nullable=False),
    Column("low", Boolean),
    Column("beyond", BigInteger),
    Column("reservation_id", Text),
    Column("line", Integer),
    Column("deadline_ms", BigInteger),
    Column("max_deadline_ms", BigInteger),
    Column("fingerprint", Text),
    Column("owner", Text),
    Column("reason", Text),
    Column("reference", Text),
    Column("actor", Text),
    Column("policy", Text),
    _now(),
    CheckConstraint(f"type IN ({_TYPES_SQL})", name="type"),
    CheckConstraint(
        "on_hand IS NULL OR (on_hand >= 0 AND held >= 0 AND committed >= 0)", name="levels"
    ),
    CheckConstraint("version >= 0", name="version"),
    # Few indexes: every one is paid for on each of tens of thousands of inserts a second.
    # The ledger API filters by sku (and warehouse, time range) in (at_ms, event_id) order.
    Index(None, "sku", "at_ms"),
    Index(None, "reservation_id", postgresql_where=text("reservation_id IS NOT NULL")),
    Index(None, "reference", postgresql_where=text("reference IS NOT NULL")),
    Index(None, "at_ms", postgresql_using="brin"),
)

stock_levels = Table(
    "stock_levels",
    metadata,
    Column("sku", Text, nullable=False),
    Column("warehouse", Text, nullable=False),
    Column("on_hand", BigInteger, nullable=False),
    Column("held", BigInteger, nullable=False),
    Column("committed", BigInteger, nullable=False),
    Column("safety_stock", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("low", Boolean, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("sku", "warehouse"),
)

warehouses = Table(
    "warehouses",
    metadata,
    Column("warehouse_id", Text, primary_key=True),
    Column("name", Text, nullable=False, server_default=""),
    Column("latitude", Double, nullable=False, server_default="0"),
    Column("longitude", Double, nullable=False, server_default="0"),
    Column("priority", Integer, nullable=False, server_default="100"),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("latitude BETWEEN -90 AND 90 AND longitude BETWEEN -180 AND 180", name="geo"),
)

sku_policies = Table(
    "sku_policies",
    metadata,
    Column("sku", Text, primary_key=True),
    Column("backorder_limit", BigInteger, nullable=False, server_default="0"),
    Column("preorder_limit", BigInteger, nullable=False, server_default="0"),
    Column("preorder_release_ms", BigInteger, nullable=False, server_default="0"),
    Column("reorder_point", BigInteger, nullable=False, server_default="0"),
    Column("reorder_qty", BigInteger, nullable=False, server_default="0"),
    Column("lead_time_days", Integer, nullable=False, server_default="0"),
    Column("max_line_qty", BigInteger, nullable=False, server_default="1000000000"),
    Column("policy_version", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

reservations = Table(
    "reservations",
    metadata,
    Column("reservation_id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("status_rank", SmallInteger, nullable=False),
    Column("owner", Text, nullable=False, server_default=""),
    Column("fingerprint", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("deadline_ms", BigInteger, nullable=False),
    Column("max_deadline_ms", BigInteger, nullable=False),
    Column("extensions", Integer, nullable=False, server_default="0"),
    Column("updated_ms", BigInteger, nullable=False),
    CheckConstraint(f"status IN ({_STATUSES_SQL})", name="status"),
    Index(None, "status", "deadline_ms"),
)

reservation_allocations = Table(
    "reservation_allocations",
    metadata,
    Column("reservation_id", Text, nullable=False),
    Column("line", Integer, nullable=False),
    Column("warehouse", Text, nullable=False),
    Column("sku", Text, nullable=False),
    Column("qty", BigInteger, nullable=False),
    PrimaryKeyConstraint("reservation_id", "line", "warehouse"),
    CheckConstraint("qty > 0", name="qty"),
)

stream_watermarks = Table(
    "stream_watermarks",
    metadata,
    Column("partition", SmallInteger, primary_key=True, autoincrement=False),
    Column("stream_ms", BigInteger, nullable=False),
    Column("stream_seq", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

stream_positions = Table(
    "stream_positions",
    metadata,
    # The highest stream position of any stored movement, per partition: written by the
    # writer and by the confirm barrier (which does not advance the watermark).
    Column("partition", SmallInteger, primary_key=True, autoincrement=False),
    Column("stream_ms", BigInteger, nullable=False),
    Column("stream_seq", BigInteger, nullable=False),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("partition", SmallInteger, nullable=False),
    Column("stream_id", Text, nullable=False),
    Column("fields", JSONB, nullable=False),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    _now(),
)

lost_events = Table(
    "lost_events",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("partition", SmallInteger, nullable=False),
    Column("stream_id", Text, nullable=False),
    Column("cause", Text, nullable=False),
    _now(),
)

redis_epochs = Table(
    "redis_epochs",
    metadata,
    Column("epoch", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("client_id", Text, nullable=False, index=True),
    Column("name", Text, nullable=False, server_default=""),
    Column("secret_sha256", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("max_line_qty", BigInteger),
    Column("max_active_holds", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    CheckConstraint(
        "scopes <@ ARRAY['availability:read','reservations:write','stock:write','admin']",
        name="scopes",
    ),
)
