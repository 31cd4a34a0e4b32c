"""API keys: hashed secrets, scopes, per-client anti-hoarding limits.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

A key is shown once, at creation, as ``onh_<key_id>_<secret>``; only the SHA-256 of
the secret is stored (the secret is 256 random bits, so a fast hash is enough: there
is nothing to brute-force). ``client_id`` owns the reservations made with any of its
keys (several keys per client allow rotation). Revocation sets ``revoked_at``; rows
are never deleted, so an audit can still name the key behind a movement's actor.
``onhand_app`` may read, insert and update keys (revoke), not delete them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False, server_default=""),
        sa.Column("secret_sha256", sa.Text(), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("max_line_qty", sa.BigInteger(), nullable=True),
        sa.Column("max_active_holds", sa.Integer(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_api_keys"),
        sa.CheckConstraint(
            "scopes <@ ARRAY['availability:read','reservations:write','stock:write','admin']",
            name=op.f("ck_api_keys_scopes"),
        ),
    )
    op.create_index("ix_api_keys_client_id", "api_keys", ["client_id"])
    op.execute("GRANT SELECT, INSERT, UPDATE ON api_keys TO onhand_app")


def downgrade() -> None:
    op.drop_table("api_keys")
