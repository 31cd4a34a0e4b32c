"""The API against a real Redis (own namespace) and a real Postgres (own database).

``api`` is the app with its lifespan running, driven in-process through httpx's ASGI
transport; Redis is opened for this namespace the way the ledger opens it in
production (``verify_and_reopen``). ``api.client(...)`` makes a key with the scopes
asked for and returns an httpx client sending it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from onhand.settings import Settings
from tests.api.support import Api, open_api


@pytest.fixture
def api_settings(redis_url: str, database_url: str, namespace: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        namespace=namespace,
        partitions=4,
        key_cache_ttl_ms=0,
    )


@pytest.fixture
async def api(api_settings: Settings) -> AsyncIterator[Api]:
    async with open_api(api_settings) as opened:
        yield opened
