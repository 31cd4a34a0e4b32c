"""Initial ledger schema: every table, append-only movements, the onhand_app role.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Creates the tables of ``onhand.ledger.tables`` as they stood at this revision (a
frozen copy: later schema changes get their own revisions), then:

* ``movements_append_only()`` and two statement-level triggers on ``movements``:
  BEFORE UPDATE OR DELETE and BEFORE TRUNCATE raise ``movements is append-only``.
  Statement-level, so even an UPDATE or DELETE that matches no row is refused (and so
  is ``INSERT … ON CONFLICT DO UPDATE``; ``ON CONFLICT DO NOTHING`` is fine).
* The NOLOGIN role ``onhand_app`` (created only if it does not exist yet) with
  SELECT, INSERT on ``movements``; SELECT, INSERT, UPDATE, DELETE on every other
  table; USAGE on the four serial sequences. Operators make the service's login
  role a member (``GRANT onhand_app TO <login role>``); the owner that runs the
  migrations stays a separate role. Without UPDATE/DELETE/TRUNCATE privileges and
  without ownership (needed to disable a trigger), a member cannot rewrite history.

Downgrade drops the triggers, the function and every table (their grants go with
them) but never the role: roles are cluster-wide, may predate this database, and
may be used by other databases on the same server.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "onhand_app"

EVENT_TYPES_SQL = (
    "'received', 'adjusted', 'counted', 'transfer_out', 'transfer_in', 'safety_stock_set', "
    "'reserved', 'confirmed', 'released', 'expired', 'fulfilled', 'cancelled', 'extended', "
    "'policy_set', 'low_stock', 'reconciled'"
)
STATUSES_SQL = "'pending', 'confirmed', 'released', 'expired', 'fulfilled', 'cancelled'"

# Tables the service may read and change freely; movements is insert-only.
READ_WRITE_TABLES = (
    "stock_levels",
    "warehouses",
    "sku_policies",
    "reservations",
    "reservation_allocations",
    "stream_watermarks",
    "stream_positions",
    "dead_letters",
    "lost_events",
    "redis_epochs",
)
SEQUENCES = (
    "dead_letters_id_seq",
    "lost_events_id_seq",
    "redis_epochs_epoch_seq",
)

CREATE_APPEND_ONLY_FUNCTION = """
CREATE FUNCTION movements_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'movements is append-only'
        USING DETAIL = format('%s on %s refused', TG_OP, TG_TABLE_NAME),
              HINT = 'Record a correction as a new movement.';
END
$$
"""

# CREATE ROLE has no IF NOT EXISTS. A concurrent creator surfaces as duplicate_object
# or, when both transactions raced on pg_authid's unique index, unique_violation.
CREATE_APP_ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{APP_ROLE}') THEN
        BEGIN
            CREATE ROLE {APP_ROLE} NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'role {APP_ROLE} does not exist and % may not create it',
                    current_user
                    USING HINT = 'Have a superuser or a CREATEROLE role run: '
                                 'CREATE ROLE {APP_ROLE} NOLOGIN';
        END;
    END IF;
END
$$
"""


def _now() -> sa.Column[datetime]:
    return sa.Column(
        "recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    _create_tables()
    _make_movements_append_only()
    _grant_app_role()


def downgrade() -> None:
    op.execute("DROP TRIGGER movements_no_truncate ON movements")
    op.execute("DROP TRIGGER movements_no_update_delete ON movements")
    op.execute("DROP FUNCTION movements_append_only()")
    op.drop_table("redis_epochs")
    op.drop_table("lost_events")
    op.drop_table("dead_letters")
    op.drop_table("stream_positions")
    op.drop_table("stream_watermarks")
    op.drop_table("reservation_allocations")
    op.drop_index(op.f("ix_reservations_owner_status"), table_name="reservations")
    op.drop_index(op.f("ix_reservations_status_deadline_ms"), table_name="reservations")
    op.drop_table("reservations")
    op.drop_table("sku_policies")
    op.drop_table("warehouses")
    op.drop_table("stock_levels")
    op.drop_index(op.f("ix_movements_reference"), table_name="movements")
    op.drop_index(op.f("ix_movements_at_ms"), table_name="movements")
    op.drop_index(op.f("ix_movements_reservation_id"), table_name="movements")
    op.drop_index(op.f("ix_movements_sku_warehouse_version"), table_name="movements")
    op.drop_table("movements")
    # The role onhand_app stays: see the module docstring.


def _make_movements_append_only() -> None:
    op.execute(CREATE_APPEND_ONLY_FUNCTION)
    op.execute(
        "CREATE TRIGGER movements_no_update_delete BEFORE UPDATE OR DELETE ON movements "
        "FOR EACH STATEMENT EXECUTE FUNCTION movements_append_only()"
    )
    op.execute(
        "CREATE TRIGGER movements_no_truncate BEFORE TRUNCATE ON movements "
        "FOR EACH STATEMENT EXECUTE FUNCTION movements_append_only()"
    )


def _grant_app_role() -> None:
    op.execute(CREATE_APP_ROLE)
    op.execute(f"GRANT SELECT, INSERT ON movements TO {APP_ROLE}")
    op.execute(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(READ_WRITE_TABLES)} TO {APP_ROLE}"
    )
    op.execute(f"GRANT USAGE ON SEQUENCE {', '.join(SEQUENCES)} TO {APP_ROLE}")


def _create_tables() -> None:
    op.create_table(
        "movements",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("partition", sa.SmallInteger(), nullable=False),
        sa.Column("stream_ms", sa.BigInteger(), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("warehouse", sa.Text(), nullable=True),
        sa.Column("d_on_hand", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("d_held", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("d_committed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("on_hand", sa.BigInteger(), nullable=True),
        sa.Column("held", sa.BigInteger(), nullable=True),
        sa.Column("committed", sa.BigInteger(), nullable=True),
        sa.Column("safety_stock", sa.BigInteger(), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("low", sa.Boolean(), nullable=True),
        sa.Column("beyond", sa.BigInteger(), nullable=True),
        sa.Column("reservation_id", sa.Text(), nullable=True),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.Column("deadline_ms", sa.BigInteger(), nullable=True),
        sa.Column("max_deadline_ms", sa.BigInteger(), nullable=True),
        sa.Column("fingerprint", sa.Text(), nullable=True),
        sa.Column("owner", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("policy", sa.Text(), nullable=True),
        _now(),
        sa.CheckConstraint(f"type IN ({EVENT_TYPES_SQL})", name=op.f("ck_movements_type")),
        sa.CheckConstraint(
            "on_hand IS NULL OR (on_hand >= 0 AND held >= 0 AND committed >= 0)",
            name=op.f("ck_movements_levels"),
        ),
        sa.CheckConstraint("version >= 0", name=op.f("ck_movements_version")),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_movements")),
    )
    op.create_index(
        op.f("ix_movements_sku_warehouse_version"), "movements", ["sku", "warehouse", "version"]
    )
    op.create_index(
        op.f("ix_movements_reservation_id"),
        "movements",
        ["reservation_id"],
        postgresql_where=sa.text("reservation_id IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_movements_reference"),
        "movements",
        ["reference"],
        postgresql_where=sa.text("reference IS NOT NULL"),
    )
    op.create_index(op.f("ix_movements_at_ms"), "movements", ["at_ms"], postgresql_using="brin")

    op.create_table(
        "stock_levels",
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("warehouse", sa.Text(), nullable=False),
        sa.Column("on_hand", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.Column("committed", sa.BigInteger(), nullable=False),
        sa.Column("safety_stock", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("low", sa.Boolean(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sku", "warehouse", name=op.f("pk_stock_levels")),
    )

    op.create_table(
        "warehouses",
        sa.Column("warehouse_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), server_default="", nullable=False),
        sa.Column("latitude", sa.Double(), server_default="0", nullable=False),
        sa.Column("longitude", sa.Double(), server_default="0", nullable=False),
        sa.Column("priority", sa.Integer(), server_default="100", nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "latitude BETWEEN -90 AND 90 AND longitude BETWEEN -180 AND 180",
            name=op.f("ck_warehouses_geo"),
        ),
        sa.PrimaryKeyConstraint("warehouse_id", name=op.f("pk_warehouses")),
    )

    op.create_table(
        "sku_policies",
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("backorder_limit", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("preorder_limit", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("preorder_release_ms", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reorder_point", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reorder_qty", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lead_time_days", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_line_qty", sa.BigInteger(), server_default="1000000000", nullable=False),
        sa.Column("policy_version", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_sku_policies")),
    )

    op.create_table(
        "reservations",
        sa.Column("reservation_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("status_rank", sa.SmallInteger(), nullable=False),
        sa.Column("owner", sa.Text(), server_default="", nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("deadline_ms", sa.BigInteger(), nullable=False),
        sa.Column("max_deadline_ms", sa.BigInteger(), nullable=False),
        sa.Column("extensions", sa.Integer(), server_default="0", nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(f"status IN ({STATUSES_SQL})", name=op.f("ck_reservations_status")),
        sa.PrimaryKeyConstraint("reservation_id", name=op.f("pk_reservations")),
    )
    op.create_index(
        op.f("ix_reservations_status_deadline_ms"), "reservations", ["status", "deadline_ms"]
    )
    op.create_index(op.f("ix_reservations_owner_status"), "reservations", ["owner", "status"])

    op.create_table(
        "reservation_allocations",
        sa.Column("reservation_id", sa.Text(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("warehouse", sa.Text(), nullable=False),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("qty", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("qty > 0", name=op.f("ck_reservation_allocations_qty")),
        sa.PrimaryKeyConstraint(
            "reservation_id", "line", "warehouse", name=op.f("pk_reservation_allocations")
        ),
    )

    op.create_table(
        "stream_watermarks",
        sa.Column("partition", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("stream_ms", sa.BigInteger(), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("partition", name=op.f("pk_stream_watermarks")),
    )
    op.create_table(
        "stream_positions",
        sa.Column("partition", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("stream_ms", sa.BigInteger(), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("partition", name=op.f("pk_stream_positions")),
    )

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("partition", sa.SmallInteger(), nullable=False),
        sa.Column("stream_id", sa.Text(), nullable=False),
        sa.Column("fields", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _now(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )

    op.create_table(
        "lost_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("partition", sa.SmallInteger(), nullable=False),
        sa.Column("stream_id", sa.Text(), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        _now(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lost_events")),
    )

    op.create_table(
        "redis_epochs",
        sa.Column("epoch", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("epoch", name=op.f("pk_redis_epochs")),
    )
