"""/readyz follows the writer: not ready while events wait longer than the limit."""

from __future__ import annotations

import asyncio
from typing import Any

from onhand.ledger.writer import StreamWriter
from onhand.settings import Settings
from tests.api.support import open_api, stock


async def _readyz(http) -> tuple[int, dict[str, Any]]:
    r = await http.get("/readyz")
    return r.status_code, r.json()


async def test_readyz_fails_while_the_ledger_lags_and_recovers_once_drained(
    api_settings: Settings,
) -> None:
    settings = api_settings.model_copy(update={"ready_max_lag_ms": 300})
    async with open_api(settings) as api:
        admin = await api.client("admin")
        await stock(admin, "S-1", "W-1", 5)
        await asyncio.sleep(1.5)  # no writer runs: the receipt waits in the stream
        for _ in range(50):
            status, body = await _readyz(admin)
            if status == 503:
                break
            await asyncio.sleep(0.1)
        assert status == 503 and body["checks"]["writer_lag"] != "ok", body
        assert body["writer_lag_ms"] >= 300
        svc = api.services
        writer = StreamWriter(
            svc.engine.client, svc.store, svc.engine.keys, burst=True, block_ms=50
        )
        await writer.main()
        for _ in range(50):
            status, body = await _readyz(admin)
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200, body
        assert body["writer_lag_ms"] == 0
