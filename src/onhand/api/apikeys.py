"""API keys: creation (shown once), hashed storage in Postgres, verification, revocation.

A key reads ``onh_<key_id>_<secret>``: ``key_id`` (16 hex digits) finds the row,
the secret (32 random bytes, URL-safe base64) is compared by SHA-256 in constant
time. Only the hash is stored. Verification results are cached per process for
``cache_ttl_s`` (default 5 s) so the hot path does not query Postgres on every
request: a revocation takes effect at once in the process that revoked the key and
within ``cache_ttl_s`` everywhere else (documented in docs/api.md).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from onhand.errors import InvalidInput

__all__ = ["SCOPES", "ApiKey", "KeyStore", "NewKey", "hash_secret", "parse_token"]

SCOPES = ("availability:read", "reservations:write", "stock:write", "admin")
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,16}")
_TOKEN = re.compile(r"onh_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A verified key: who calls (``client_id``) and what it may do."""

    key_id: str
    client_id: str
    name: str
    scopes: frozenset[str]
    max_line_qty: int | None = None
    max_active_holds: int | None = None
    created_at: str = ""
    revoked: bool = False

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def as_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "client_id": self.client_id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "max_line_qty": self.max_line_qty,
            "max_active_holds": self.max_active_holds,
            "created_at": self.created_at,
            "revoked": self.revoked,
        }


@dataclass(frozen=True, slots=True)
class NewKey:
    key: ApiKey
    token: str
    """The whole key, shown once: it cannot be recovered later."""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else ``None``."""
    m = _TOKEN.fullmatch(token)
    return (m.group(1), m.group(2)) if m else None


def _check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    out = frozenset(scopes)
    if not out or not out <= set(SCOPES):
        raise InvalidInput("scopes", f"one or more of {', '.join(SCOPES)}")
    return out


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        row["key_id"],
        row["client_id"],
        row["name"],
        frozenset(row["scopes"]),
        row["max_line_qty"],
        row["max_active_holds"],
        row["created_at"].isoformat(),
        row["revoked_at"] is not None,
    )


class KeyStore:
    """API keys in Postgres (table ``api_keys``), with a short per-process cache."""

    def __init__(self, pool: asyncpg.Pool, *, cache_ttl_s: float = 5.0) -> None:
        self.pool = pool
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, str, ApiKey | None]] = {}

    async def create(
        self,
        client_id: str,
        scopes: Iterable[str],
        *,
        name: str = "",
        max_line_qty: int | None = None,
        max_active_holds: int | None = None,
    ) -> NewKey:
        if CLIENT_ID.fullmatch(client_id) is None:
            raise InvalidInput("client_id", "must match [A-Za-z0-9_-]{1,16}")
        checked = _check_scopes(scopes)
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        row = await self.pool.fetchrow(
            "INSERT INTO api_keys (key_id, client_id, name, secret_sha256, scopes,"
            " max_line_qty, max_active_holds) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
            key_id,
            client_id,
            name,
            hash_secret(secret),
            sorted(checked),
            max_line_qty,
            max_active_holds,
        )
        assert row is not None
        return NewKey(_key(row), f"onh_{key_id}_{secret}")

    async def list(self) -> list[ApiKey]:
        rows = await self.pool.fetch("SELECT * FROM api_keys ORDER BY created_at, key_id")
        return [_key(r) for r in rows]

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key (idempotent). False if no such key."""
        status = await self.pool.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1",
            key_id,
        )
        self._cache.pop(key_id, None)
        return status != "UPDATE 0"

    async def verify(self, token: str) -> ApiKey | None:
        """The live key ``token`` names, or ``None`` (malformed, unknown, wrong, revoked)."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is None or cached[0] < now:
            row = await self.pool.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
            live = row is not None and row["revoked_at"] is None
            digest = row["secret_sha256"] if row is not None else ""
            cached = (now + self.cache_ttl_s, digest, _key(row) if live and row else None)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = cached
        _, digest, key = cached
        if key is None or not hmac.compare_digest(digest, hash_secret(secret)):
            return None
        return key
