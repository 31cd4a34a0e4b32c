"""Who may call what: the route table's scopes, 401/403 on every route, ownership, limits.

The route matrix is built from the app's own route table: every API route must declare
exactly one :class:`~onhand.api.services.RequireScope` (public probes and the docs
aside), and each one answers 401 without a valid live key and 403 with a key that has
every other scope. Each route's request is otherwise valid — the same request with a
key of exactly the required scope is not refused for auth or for its input — so the
401/403 is really the key's doing.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from onhand.api.app import create_app
from onhand.api.routes.ops import PUBLIC_PATHS
from onhand.api.services import RequireScope
from onhand.settings import Settings
from tests.api.support import (
    ALL_SCOPES,
    Api,
    assert_problem,
    idem,
    order,
    stock,
    warehouse,
)

DOCS_PATHS = frozenset({"/docs", "/openapi.json", "/docs/static", "/redoc"})


# -- the route table ----------------------------------------------------------------------
@dataclass(frozen=True)
class RouteInfo:
    method: str
    path: str
    scopes: tuple[str, ...]
    """The ``scope`` of every RequireScope the route depends on (directly or not)."""

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


def _scopes(dependant: Dependant) -> Iterator[str]:
    for dep in dependant.dependencies:
        if isinstance(dep.call, RequireScope):
            yield dep.call.scope
        yield from _scopes(dep)


def api_routes(app: FastAPI) -> list[RouteInfo]:
    """Every API route of ``app`` (included routers resolved), one per method."""
    out: list[RouteInfo] = []
    for ctx in iter_route_contexts(app.routes):
        if not isinstance(ctx.original_route, APIRoute):
            continue
        path = ctx.path
        assert isinstance(path, str)
        scopes = tuple(_scopes(ctx.dependant))
        for method in sorted(ctx.methods or ()):
            out.append(RouteInfo(method, path, scopes))
    return out


def _is_exempt(path: str) -> bool:
    return path in PUBLIC_PATHS or path in DOCS_PATHS or path.startswith("/docs/")


# The app whose routes parametrize the matrix (create_app opens nothing).
_TABLE_APP = create_app(
    Settings(redis_url="redis://unused", database_url="postgresql://unused/x", namespace="t")
)
SCOPED = [r for r in api_routes(_TABLE_APP) if not _is_exempt(r.path)]


# -- a valid request for every scoped route -----------------------------------------------
@dataclass(frozen=True)
class Call:
    method: str
    url: str
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    async def send(self, client: httpx.AsyncClient) -> httpx.Response:
        headers = {**idem(), **self.headers}
        if self.json is None:
            return await client.request(self.method, self.url, headers=headers)
        return await client.request(self.method, self.url, json=self.json, headers=headers)


SKU, WH, WH2, RID, KEY_ID = "sku-1", "w1", "w2", "c0.o1", "0123456789abcdef"
RECEIPT = {"sku": SKU, "warehouse": WH, "qty": 1}
ADJUSTMENT = {"sku": SKU, "warehouse": WH, "delta": 1, "reason": "found"}
CALLS: dict[str, Callable[[], Call]] = {
    "POST /v1/reservations": lambda: Call("POST", "/v1/reservations", order("o1", (SKU, 1))),
    "GET /v1/reservations/{reservation_id}": lambda: Call("GET", f"/v1/reservations/{RID}"),
    "POST /v1/reservations/{reservation_id}:confirm": lambda: Call(
        "POST", f"/v1/reservations/{RID}:confirm"
    ),
    "POST /v1/reservations/{reservation_id}:release": lambda: Call(
        "POST", f"/v1/reservations/{RID}:release"
    ),
    "POST /v1/reservations/{reservation_id}:fulfill": lambda: Call(
        "POST", f"/v1/reservations/{RID}:fulfill"
    ),
    "POST /v1/reservations/{reservation_id}:cancel": lambda: Call(
        "POST", f"/v1/reservations/{RID}:cancel"
    ),
    "POST /v1/reservations/{reservation_id}:extend": lambda: Call(
        "POST", f"/v1/reservations/{RID}:extend", {"ttl_ms": 60_000}
    ),
    "GET /v1/skus/{sku}/availability": lambda: Call("GET", f"/v1/skus/{SKU}/availability"),
    "GET /v1/availability": lambda: Call("GET", f"/v1/availability?sku={SKU}"),
    "GET /v1/stock-levels/{sku}/{warehouse}": lambda: Call("GET", f"/v1/stock-levels/{SKU}/{WH}"),
    "POST /v1/stock-receipts": lambda: Call("POST", "/v1/stock-receipts", RECEIPT),
    "POST /v1/adjustments": lambda: Call("POST", "/v1/adjustments", ADJUSTMENT),
    "POST /v1/stock-counts": lambda: Call(
        "POST",
        "/v1/stock-counts",
        {"sku": SKU, "warehouse": WH, "count": 0},
        {"If-Match": '"0"'},
    ),
    "POST /v1/transfers": lambda: Call(
        "POST", "/v1/transfers", {"sku": SKU, "source": WH, "destination": WH2, "qty": 1}
    ),
    "PUT /v1/stock-levels/{sku}/{warehouse}/safety-stock": lambda: Call(
        "PUT", f"/v1/stock-levels/{SKU}/{WH}/safety-stock", {"qty": 0}
    ),
    "POST /v1/stock-receipts:bulk": lambda: Call(
        "POST", "/v1/stock-receipts:bulk", {"items": [RECEIPT]}
    ),
    "POST /v1/stock-counts:bulk": lambda: Call(
        "POST",
        "/v1/stock-counts:bulk",
        {"items": [{"sku": SKU, "warehouse": WH, "count": 0, "expected_version": 0}]},
    ),
    "POST /v1/adjustments:bulk": lambda: Call(
        "POST", "/v1/adjustments:bulk", {"items": [ADJUSTMENT]}
    ),
    "POST /v1/warehouses": lambda: Call("POST", "/v1/warehouses", {"warehouse_id": "w9"}),
    "PUT /v1/warehouses/{warehouse_id}": lambda: Call("PUT", "/v1/warehouses/w9", {}),
    "GET /v1/warehouses/{warehouse_id}": lambda: Call("GET", f"/v1/warehouses/{WH}"),
    "GET /v1/warehouses": lambda: Call("GET", "/v1/warehouses"),
    "PUT /v1/skus/{sku}/policy": lambda: Call("PUT", f"/v1/skus/{SKU}/policy", {}),
    "GET /v1/skus/{sku}/policy": lambda: Call("GET", f"/v1/skus/{SKU}/policy"),
    "GET /v1/sku-policies": lambda: Call("GET", "/v1/sku-policies"),
    "GET /v1/movements": lambda: Call("GET", "/v1/movements"),
    "POST /v1/api-keys": lambda: Call(
        "POST", "/v1/api-keys", {"client_id": "cx", "scopes": ["availability:read"]}
    ),
    "GET /v1/api-keys": lambda: Call("GET", "/v1/api-keys"),
    "POST /v1/api-keys/{key_id}:revoke": lambda: Call("POST", f"/v1/api-keys/{KEY_ID}:revoke"),
}
"""A minimal valid request per route; a new route without one fails the matrix."""

# Statuses that would mean the request itself, not its key, was refused.
INPUT_REFUSALS = frozenset({400, 401, 403, 405, 411, 413, 415, 422, 428})


def call_for(route: RouteInfo) -> Call:
    assert route.label in CALLS, f"no valid request in CALLS for the route {route.label}"
    return CALLS[route.label]()


def required_scope(route: RouteInfo) -> str:
    assert len(route.scopes) == 1, f"{route.label} declares scopes {route.scopes}"
    return route.scopes[0]


def unknown_token() -> str:
    return f"onh_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


def key_id_of(token: str) -> str:
    prefix, key_id, _ = token.split("_", 2)
    assert prefix == "onh" and len(key_id) == 16
    return key_id


matrix = pytest.mark.parametrize("route", SCOPED, ids=[r.label for r in SCOPED])


def assert_unauthorized(r: httpx.Response, case: str) -> None:
    assert r.status_code == 401, f"{case}: {r.status_code} {r.text[:300]}"
    body = assert_problem(r, 401)
    assert body["type"] == "urn:onhand:problem:unauthorized", case
    assert r.headers.get("www-authenticate", "").startswith("Bearer"), case


# -- the route table itself ---------------------------------------------------------------
async def test_every_api_route_declares_exactly_one_required_scope_unless_public_or_docs(
    api: Api,
) -> None:
    routes = api_routes(api.app)
    assert len(routes) >= len(SCOPED) > 20
    missing = [r.label for r in routes if not _is_exempt(r.path) and len(r.scopes) != 1]
    assert missing == [], f"routes without exactly one RequireScope: {missing}"
    public = [r for r in routes if r.path in PUBLIC_PATHS]
    assert {r.path for r in public} == set(PUBLIC_PATHS)
    assert all(r.scopes == () for r in public), public


async def test_every_scoped_route_has_a_valid_request_in_the_matrix(api: Api) -> None:
    labels = {r.label for r in api_routes(api.app) if not _is_exempt(r.path)}
    assert labels == {r.label for r in SCOPED}
    assert labels == set(CALLS), f"CALLS out of date: {labels ^ set(CALLS)}"


def test_every_declared_scope_is_a_known_scope() -> None:
    assert {s for r in SCOPED for s in r.scopes} <= set(ALL_SCOPES)


async def test_public_probes_and_the_docs_answer_without_a_key(api: Api) -> None:
    async with api.http() as anon:
        assert (await anon.get("/livez")).status_code == 200
        assert (await anon.get("/readyz")).status_code in (200, 503)
        assert (await anon.get("/metrics")).status_code == 200
        assert (await anon.get("/openapi.json")).status_code == 200
        assert (await anon.get("/docs")).status_code == 200


# -- the 401/403 matrix -------------------------------------------------------------------
async def _no_authorization_is_401(api: Api, route: RouteInfo) -> None:
    async with api.http() as anon:
        assert_unauthorized(await call_for(route).send(anon), "no Authorization")
        anon.headers["Authorization"] = "Basic dXNlcjpwYXNz"
        assert_unauthorized(await call_for(route).send(anon), "not a bearer token")


async def _unknown_key_is_401(api: Api, route: RouteInfo) -> None:
    async with api.http(unknown_token()) as stranger:
        assert_unauthorized(await call_for(route).send(stranger), "well-formed unknown key")
    real = await api.token()
    forged = f"onh_{key_id_of(real)}_{secrets.token_urlsafe(32)}"
    async with api.http(forged) as forger:
        assert_unauthorized(await call_for(route).send(forger), "known key id, wrong secret")
    async with api.http("onh_not-a-key") as garbled:
        assert_unauthorized(await call_for(route).send(garbled), "malformed key")


async def _key_without_the_scope_is_403(api: Api, route: RouteInfo) -> None:
    scope = required_scope(route)
    others = [s for s in ALL_SCOPES if s not in (scope, "admin")]
    async with api.http(await api.token(*others)) as lacking:
        r = await call_for(route).send(lacking)
    body = assert_problem(r, 403)
    assert body["type"] == "urn:onhand:problem:forbidden"
    assert body["required_scope"] == scope
    # The same request with exactly that scope is not refused: the 403 was the key's.
    async with api.http(await api.token(scope)) as allowed:
        ok = await call_for(route).send(allowed)
    assert ok.status_code not in INPUT_REFUSALS, f"control request refused: {ok.text}"
    assert ok.status_code < 500, ok.text


async def _revoked_key_is_401(api: Api, route: RouteInfo) -> None:
    admin = await api.client("admin")
    token = await api.token(*ALL_SCOPES)
    async with api.http(token) as holder:
        before = await call_for(route).send(holder)
        assert before.status_code not in INPUT_REFUSALS, before.text
        r = await admin.post(f"/v1/api-keys/{key_id_of(token)}:revoke", headers=idem())
        assert r.status_code == 200, r.text
        assert r.json()["revoked"] is True
        assert_unauthorized(await call_for(route).send(holder), "revoked key")


@matrix
async def test_every_scoped_route_answers_401_without_a_live_key_and_403_without_its_scope(
    api: Api, route: RouteInfo
) -> None:
    """One app per route (setting one up is most of the cost), four kinds of caller."""
    await _no_authorization_is_401(api, route)
    await _unknown_key_is_401(api, route)
    await _key_without_the_scope_is_403(api, route)
    await _revoked_key_is_401(api, route)


# -- ownership ----------------------------------------------------------------------------
async def _stocked(api: Api, qty: int) -> httpx.AsyncClient:
    """An admin client, with warehouse ``WH`` and ``qty`` of ``SKU`` in it."""
    admin = await api.client("admin")
    await warehouse(admin, WH)
    await stock(admin, SKU, WH, qty)
    return admin


async def _hold(client: httpx.AsyncClient, order_id: str, qty: int = 1) -> str:
    r = await client.post("/v1/reservations", json=order(order_id, (SKU, qty)), headers=idem())
    assert r.status_code == 201, r.text
    rid = r.json()["reservation_id"]
    assert isinstance(rid, str)
    return rid


async def _availability(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get(f"/v1/skus/{SKU}/availability")
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, dict)
    body.pop("at_ms")
    return body


TRANSITIONS = ("confirm", "release", "extend", "fulfill", "cancel")


async def test_another_clients_reservation_is_404_everywhere_and_nothing_changes(
    api: Api,
) -> None:
    admin = await api.client("admin")
    await warehouse(admin, WH)
    await stock(admin, SKU, WH, 10)
    owner = await api.client("reservations:write", "availability:read")
    other = await api.client(*ALL_SCOPES[:3])  # every scope but admin
    rid = await _hold(owner, "o1", 2)
    before = await _availability(admin)
    missing = await other.get("/v1/reservations/nobody.o1")
    nobody = assert_problem(missing, 404)

    r = await other.get(f"/v1/reservations/{rid}")
    body = assert_problem(r, 404)
    # Indistinguishable from a reservation that does not exist.
    assert {k: body[k] for k in ("type", "title", "detail")} == {
        k: nobody[k] for k in ("type", "title", "detail")
    }
    for action in TRANSITIONS:
        extend = {"ttl_ms": 60_000} if action == "extend" else None
        r = await other.post(f"/v1/reservations/{rid}:{action}", headers=idem(), json=extend)
        assert_problem(r, 404)
        assert r.json()["type"] == nobody["type"]
    assert await _availability(admin) == before

    seen = await admin.get(f"/v1/reservations/{rid}")
    assert seen.status_code == 200, seen.text
    assert seen.json()["status"] == "pending"
    assert seen.json()["reservation_id"] == rid
    mine = await owner.get(f"/v1/reservations/{rid}")
    assert mine.status_code == 200, mine.text
    assert {k: v for k, v in mine.json().items() if k != "at_ms"} == {
        k: v for k, v in seen.json().items() if k != "at_ms"
    }


async def test_the_owner_can_still_make_every_transition_of_its_reservations(api: Api) -> None:
    admin = await api.client("admin")
    await warehouse(admin, WH)
    await stock(admin, SKU, WH, 10)
    owner = await api.client("reservations:write")
    other = await api.client("reservations:write")
    first, second, third = [await _hold(owner, f"o{i}") for i in (1, 2, 3)]
    for rid in (first, second, third):
        r = await other.post(f"/v1/reservations/{rid}:release", headers=idem())
        assert_problem(r, 404)

    async def step(rid: str, action: str, status: str, **kw: Any) -> None:
        r = await owner.post(f"/v1/reservations/{rid}:{action}", headers=idem(), **kw)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == status

    await step(first, "extend", "pending", json={"ttl_ms": 120_000})
    await step(first, "confirm", "confirmed")
    await step(first, "fulfill", "fulfilled")
    await step(second, "release", "released")
    await step(third, "confirm", "confirmed")
    await step(third, "cancel", "cancelled")
    level = await _availability(admin)
    assert (level["on_hand"], level["held"], level["committed"]) == (9, 0, 0)


# -- anti-hoarding ------------------------------------------------------------------------
def retry_after(r: httpx.Response) -> int:
    raw = r.headers.get("retry-after", "")
    assert raw.isdigit(), f"Retry-After {raw!r} is not a whole number of seconds"
    assert int(raw) > 0
    return int(raw)


async def test_a_line_above_the_keys_max_line_qty_is_429_and_nothing_is_held(api: Api) -> None:
    admin = await _stocked(api, 100)
    capped = await api.client("reservations:write", max_line_qty=5)
    before = await _availability(admin)

    r = await capped.post("/v1/reservations", json=order("big", (SKU, 6)), headers=idem())
    body = assert_problem(r, 429)
    assert body["type"] == "urn:onhand:problem:line-quantity-limit"
    assert body["limit"] == 5
    retry_after(r)
    assert await _availability(admin) == before
    rid = r.headers.get("location", "").rpartition("/")[2] or "unknown.big"
    assert (await admin.get(f"/v1/reservations/{rid}")).status_code == 404
    # Exactly the cap is fine.
    ok = await capped.post("/v1/reservations", json=order("five", (SKU, 5)), headers=idem())
    assert ok.status_code == 201, ok.text
    assert (await _availability(admin))["held"] == 5


async def test_the_hold_above_max_active_holds_is_429_until_one_is_released(api: Api) -> None:
    admin = await _stocked(api, 100)
    hoarder = await api.client("reservations:write", max_active_holds=2)
    first = await _hold(hoarder, "h1")
    await _hold(hoarder, "h2")
    before = await _availability(admin)
    assert before["held"] == 2

    r = await hoarder.post("/v1/reservations", json=order("h3", (SKU, 1)), headers=idem())
    body = assert_problem(r, 429)
    assert body["type"] == "urn:onhand:problem:too-many-holds"
    assert body["limit"] == 2
    assert retry_after(r) <= 600  # at most the hold TTL (the default, 600 s)
    assert await _availability(admin) == before

    r = await hoarder.post(f"/v1/reservations/{first}:release", headers=idem())
    assert r.status_code == 200, r.text
    again = await hoarder.post("/v1/reservations", json=order("h3", (SKU, 1)), headers=idem())
    assert again.status_code == 201, again.text
    assert (await _availability(admin))["held"] == 2


async def test_reusing_a_confirmed_order_id_differently_does_not_keep_a_hold_slot(
    api: Api,
) -> None:
    await _stocked(api, 100)
    single = await api.client("reservations:write", max_active_holds=1)
    rid = await _hold(single, "o1")
    r = await single.post(f"/v1/reservations/{rid}:confirm", headers=idem())
    assert r.status_code == 200, r.text

    reused = await single.post("/v1/reservations", json=order("o1", (SKU, 2)), headers=idem())
    assert_problem(reused, 422)
    fresh = await single.post("/v1/reservations", json=order("o2", (SKU, 1)), headers=idem())
    assert fresh.status_code == 201, fresh.text


async def test_a_repeated_pending_hold_keeps_its_slot_only_until_its_own_deadline(
    api: Api,
) -> None:
    await _stocked(api, 100)
    single = await api.client("reservations:write", max_active_holds=1)
    first = await single.post(
        "/v1/reservations", json=order("o1", (SKU, 1), ttl_ms=60_000), headers=idem()
    )
    assert first.status_code == 201, first.text
    deadline_ms = first.json()["deadline_ms"]
    same = await single.post(
        "/v1/reservations", json=order("o1", (SKU, 1), ttl_ms=60_000), headers=idem()
    )
    assert same.status_code == 200, same.text
    assert same.json()["deadline_ms"] == deadline_ms
    other_ttl = await single.post(
        "/v1/reservations", json=order("o1", (SKU, 1), ttl_ms=600_000), headers=idem()
    )
    assert_problem(other_ttl, 422)

    r = await single.post("/v1/reservations", json=order("o2", (SKU, 1)), headers=idem())
    assert_problem(r, 429)
    # The slot ends with the original hold (60 s), not with the repeat's 600 s TTL.
    assert retry_after(r) <= 60


async def test_admission_happens_once_per_idempotency_key_and_a_429_is_replayed(
    api: Api,
) -> None:
    """The reservation route admits in the same script call as the key's begin: a retry
    with the key replays and takes no second slot; a stored 429 stays the answer."""
    admin = await _stocked(api, 100)
    hoarder = await api.client("reservations:write", max_active_holds=1)
    first_key, second_key = idem(), idem()
    r = await hoarder.post("/v1/reservations", json=order("k1", (SKU, 1)), headers=first_key)
    assert r.status_code == 201, r.text
    rid = r.json()["reservation_id"]
    again = await hoarder.post("/v1/reservations", json=order("k1", (SKU, 1)), headers=first_key)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == r.json()

    full = await hoarder.post("/v1/reservations", json=order("k2", (SKU, 1)), headers=second_key)
    assert assert_problem(full, 429)["type"] == "urn:onhand:problem:too-many-holds"
    released = await hoarder.post(f"/v1/reservations/{rid}:release", headers=idem())
    assert released.status_code == 200, released.text
    replay = await hoarder.post("/v1/reservations", json=order("k2", (SKU, 1)), headers=second_key)
    assert replay.status_code == 429 and replay.headers["idempotent-replayed"] == "true"
    assert (await _availability(admin))["held"] == 0
    fresh = await hoarder.post("/v1/reservations", json=order("k2", (SKU, 1)), headers=idem())
    assert fresh.status_code == 201, fresh.text
