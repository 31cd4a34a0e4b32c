"""Driving the API in tests: keys with scopes, clients, and common calls."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI

from onhand.api.app import create_app
from onhand.api.services import Services
from onhand.ledger.fencing import verify_and_reopen
from onhand.settings import Settings

ALL_SCOPES = ("availability:read", "reservations:write", "stock:write", "admin")
_clients = itertools.count(1)


@dataclass
class Api:
    app: FastAPI
    settings: Settings
    stack: AsyncExitStack
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    async def token(self, *scopes: str, client_id: str | None = None, **limits: Any) -> str:
        new = await self.services.api_keys.create(
            client_id or f"c{next(_clients)}", scopes or ALL_SCOPES, **limits
        )
        return new.token

    def http(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="http://onhand", headers=headers)

    async def client(self, *scopes: str, **kwargs: Any) -> httpx.AsyncClient:
        client = self.http(await self.token(*scopes, **kwargs))
        return await self.stack.enter_async_context(client)


def idem() -> dict[str, str]:
    """A fresh Idempotency-Key header."""
    return {"Idempotency-Key": str(uuid.uuid4())}


@asynccontextmanager
async def open_api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        api = Api(app, settings, stack)
        await verify_and_reopen(api.services.engine, api.services.store)
        yield api


async def stock(client: httpx.AsyncClient, sku: str, warehouse: str, qty: int) -> None:
    r = await client.post(
        "/v1/stock-receipts", json={"sku": sku, "warehouse": warehouse, "qty": qty}, headers=idem()
    )
    assert r.status_code == 201, r.text


async def warehouse(client: httpx.AsyncClient, wid: str, **fields: Any) -> None:
    r = await client.post("/v1/warehouses", json={"warehouse_id": wid, **fields}, headers=idem())
    assert r.status_code == 201, r.text


def order(order_id: str, *lines: tuple[str, int], **extra: Any) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "lines": [{"sku": sku, "qty": qty} for sku, qty in lines],
        **extra,
    }


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    """Assert ``r`` is an RFC 9457 problem with HTTP ``status``; return its body."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    media_type = r.headers.get("content-type", "").split(";")[0].strip()
    assert media_type == "application/problem+json", (media_type, r.text[:500])
    body = r.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("type"), str) and body["type"], body
    assert isinstance(body.get("title"), str) and body["title"], body
    assert body.get("status") == status, body
    return body


async def stop_observer_task() -> None:
    """Cancel the app's observer task of this event loop until it has really stopped.

    Only the shutdown regression test uses this, to clean up after a failure: a
    cancellation that lands while a Redis command is sent can be swallowed (redis-py's
    ``asyncio.wait_for`` on Python 3.11); the app's lifespan now cancels until done.
    """
    import asyncio

    for task in asyncio.all_tasks():
        if getattr(task.get_coro(), "__qualname__", "") == "observe":
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.05)
