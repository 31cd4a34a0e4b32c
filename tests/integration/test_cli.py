"""The ``onhand`` command against real Redis and Postgres, as an operator runs it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from onhand.domain import Line, ReserveRequest
from tests.integration.ledger_support import PARTITIONS, open_stack
from tests.integration.support import new_id

pytestmark = pytest.mark.postgres


def _onhand(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onhand", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_operator_commands_drain_report_reconcile_and_rebuild(
    redis_url: str, database_url: str, namespace: str
):
    env = {
        "ONHAND_REDIS_URL": redis_url,
        "ONHAND_DATABASE_URL": database_url,
        "ONHAND_NAMESPACE": namespace,
        "ONHAND_PARTITIONS": str(PARTITIONS),
    }
    async with open_stack(redis_url, database_url, namespace, stamp=False) as stack:
        reopen = _onhand(env, "reopen")  # a fresh Redis and an empty ledger: safe to open
        assert reopen.returncode == 0, reopen.stderr
        sku, wh = new_id("s"), new_id("w")
        await stack.engine.receive(sku, wh, 10)
        await stack.engine.reserve(ReserveRequest(new_id("r"), (Line(sku, 3, (wh,)),), 60_000))

        writer = _onhand(env, "writer", "--burst")
        assert writer.returncode == 0, writer.stderr
        assert "2 events written, 0 lost, 0 dead-lettered" in writer.stderr
        status = _onhand(env, "status")
        assert status.returncode == 0, status.stderr
        assert "lost events: 0, dead letters: 0" in status.stderr

        assert _onhand(env, "reconcile", "--wait-ms", "1000").returncode == 0
        await stack.client.hincrby(stack.engine.keys.stock(sku, wh), "on", 5)
        drift = _onhand(env, "reconcile", "--wait-ms", "1000")
        assert drift.returncode == 1 and sku in drift.stdout
        assert _onhand(env, "reconcile", "--fix", "--wait-ms", "1000").returncode == 0

        refused = _onhand(env, "rehydrate")
        assert refused.returncode == 2 and "--force" in refused.stderr
        rebuilt = _onhand(env, "rehydrate", "--force")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert "verified" in rebuilt.stderr
        level = await stack.engine.stock_level(sku, wh)
        assert (level.on_hand, level.held) == (10, 3)

        short = new_id("r")
        await stack.engine.reserve(ReserveRequest(short, (Line(sku, 2, (wh,)),), 1_000))
        await asyncio.sleep(1.1)
        reaped = _onhand(env, "reaper", "--burst")
        assert reaped.returncode == 0, reaped.stderr
        assert (await stack.engine.get_reservation(short)).status.value == "expired"
        assert (await stack.engine.stock_level(sku, wh)).held == 3


async def test_keys_create_list_revoke_and_seed_work_as_an_operator_runs_them(
    redis_url: str, database_url: str, namespace: str
):
    env = {
        "ONHAND_REDIS_URL": redis_url,
        "ONHAND_DATABASE_URL": database_url,
        "ONHAND_NAMESPACE": namespace,
        "ONHAND_PARTITIONS": str(PARTITIONS),
    }
    created = _onhand(env, "keys", "create", "--client-id", "ops", "--scope", "stock:write")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("onh_") and len(token) == 4 + 16 + 1 + 43
    key_id = token[4:20]
    listed = _onhand(env, "keys", "list")
    assert listed.returncode == 0 and key_id in listed.stdout and token[21:] not in listed.stdout
    bad = _onhand(env, "keys", "create", "--client-id", "ops", "--scope", "root")
    assert bad.returncode != 0
    assert _onhand(env, "keys", "revoke", key_id).returncode == 0
    assert _onhand(env, "keys", "revoke", "0" * 16).returncode == 1
    async with open_stack(redis_url, database_url, namespace, stamp=False) as stack:
        assert _onhand(env, "reopen").returncode == 0
        seeded = _onhand(env, "seed")
        assert seeded.returncode == 0 and "seeded" in seeded.stderr, seeded.stderr
        again = _onhand(env, "seed")
        assert again.returncode == 0 and "not seeding" in again.stderr
        assert await stack.fetchval("SELECT count(*) FROM warehouses") == 4
        assert (await stack.engine.stock_level("MUG-WHITE", "BER")).on_hand == 500
        catalog = await stack.client.hkeys(stack.engine.keys.warehouse_catalog())
        assert sorted(k.decode() if isinstance(k, bytes) else k for k in catalog) == [
            "BER",
            "FRA",
            "HAM",
            "MUC",
        ]
        revoked = await stack.fetchval("SELECT revoked_at IS NOT NULL FROM api_keys")
        assert revoked is True
