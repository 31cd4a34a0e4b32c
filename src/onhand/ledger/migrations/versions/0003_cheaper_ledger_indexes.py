"""Cheaper indexes for the writer's inserts, still serving every ledger query.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

Every index on ``movements`` and ``reservations`` is paid for on each of tens of
thousands of inserts a second (the writer's drain rate). This revision:

* drops ``reservations (owner, status)``: no query reads reservations by owner (the
  per-client hold limits live in Redis), and it was ~15 % of the CPU of the writer's
  reservations insert.
* replaces ``movements (sku, warehouse, version)`` with ``(sku, at_ms)``: the same
  cost per insert (measured), but it serves the ledger API's ``sku`` filter (with or
  without ``warehouse``, a time range, the ``(at_ms, event_id)`` cursor) in the API's
  own order instead of sorting every movement of the SKU. Nothing reads movements in
  version order.

On a large ledger, building the new index takes a while under a lock that blocks the
writer's inserts: run it in a maintenance window, or build ``ix_movements_sku_at_ms``
``CONCURRENTLY`` by hand first (the migration then only drops the old ones).
Downgrade restores the previous indexes.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_reservations_owner_status", table_name="reservations")
    op.execute("CREATE INDEX IF NOT EXISTS ix_movements_sku_at_ms ON movements (sku, at_ms)")
    op.drop_index("ix_movements_sku_warehouse_version", table_name="movements")


def downgrade() -> None:
    op.create_index(
        "ix_movements_sku_warehouse_version", "movements", ["sku", "warehouse", "version"]
    )
    op.drop_index("ix_movements_sku_at_ms", table_name="movements")
    op.create_index("ix_reservations_owner_status", "reservations", ["owner", "status"])
