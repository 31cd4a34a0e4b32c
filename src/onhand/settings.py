"""Settings, read from ``ONHAND_*`` environment variables (and a ``.env`` file).

Nothing reads settings at import: each process builds one :class:`Settings` in its
composition root (the CLI command, ``create_app``) and passes it on.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every knob of an onhand process. Units are in the names."""

    model_config = SettingsConfigDict(
        env_prefix="ONHAND_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    redis_url: str | None = Field(
        default=None, description="Redis URL; unset means an embedded server (dev only)."
    )
    database_url: str | None = Field(
        default=None, description="Postgres URL (postgresql://…); unset means embedded."
    )
    namespace: str = Field(default="onhand", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    partitions: int = Field(default=16, ge=1, le=16384)
    max_hold_lifetime_ms: int = Field(default=2 * 60 * 60 * 1000, ge=1)
    retention_ms: int = Field(default=24 * 60 * 60 * 1000, ge=1)

    reaper_interval_ms: int = Field(default=100, ge=1)
    reaper_batch: int = Field(default=500, ge=1, le=10_000)

    writer_group: str = Field(default="onhand-ledger", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    writer_batch: int = Field(default=20_000, ge=1, le=100_000)
    writer_block_ms: int = Field(default=200, ge=1)
    writer_claim_idle_ms: int = Field(default=30_000, ge=100)
    writer_max_attempts: int = Field(default=3, ge=1)
    writer_trim_interval_ms: int = Field(default=1_000, ge=1)
    writer_linger_ms: int = Field(default=100, ge=0, le=1_000)
    writer_metrics_port: int = Field(default=0, ge=0, le=65535)

    confirm_barrier_timeout_ms: int = Field(default=2_000, ge=1)

    api_host: str = Field(default="127.0.0.1", description="Address `onhand serve` binds.")
    api_port: int = Field(default=8000, ge=0, le=65535)
    api_workers: int = Field(default=1, ge=1, le=64)
    api_keep_alive_s: int = Field(
        default=75,
        ge=1,
        le=3_600,
        description="Seconds an idle keep-alive connection stays open (longer than the "
        "idle timeout of clients' pools and load balancers, so they close first).",
    )
    hold_ttl_ms: int = Field(default=600_000, ge=1_000, le=86_400_000)
    max_body_bytes: int = Field(default=262_144, ge=1_024, le=16_777_216)
    client_max_line_qty: int = Field(
        default=10_000, ge=1, le=10**9, description="Anti-hoarding: units per line per client."
    )
    client_max_active_holds: int = Field(
        default=100_000, ge=1, le=10**9, description="Anti-hoarding: live holds per client."
    )
    idempotency_ttl_ms: int = Field(default=86_400_000, ge=1_000)
    idempotency_lock_ms: int = Field(default=60_000, ge=100, le=86_400_000)
    key_cache_ttl_ms: int = Field(default=5_000, ge=0, le=600_000)
    ready_max_lag_ms: int = Field(default=10_000, ge=1)
    data_dir: str = Field(
        default=".onhand", description="Where embedded servers keep their data (dev only)."
    )

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ValueError("ONHAND_REDIS_URL is not set")
        return self.redis_url

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ValueError("ONHAND_DATABASE_URL is not set")
        return self.database_url
