"""Every endpoint of the API end to end over HTTP, against a real Redis and Postgres.

Each response seen by a client of this file is recorded (method, path); the last test
checks that every operation of the OpenAPI document was exercised here.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import Any

import httpx
import pytest

from onhand.api.observer import sample
from onhand.ledger.writer import StreamWriter
from onhand.reaper import Reaper
from onhand.settings import Settings
from tests.api.support import Api, idem, open_api, order, stock, warehouse
from tests.proxy import TcpProxy

HITS: set[tuple[str, str]] = set()


async def _record(response: httpx.Response) -> None:
    HITS.add((response.request.method, response.request.url.path))


async def client(api: Api, *scopes: str, public: bool = False) -> httpx.AsyncClient:
    """A client with a new key of ``scopes`` (all if none), or with no key if ``public``."""
    c = await api.stack.enter_async_context(api.http()) if public else await api.client(*scopes)
    c.event_hooks["response"].append(_record)
    return c


async def shop(api: Api, *records: tuple[str, str, int], **warehouses: Any) -> httpx.AsyncClient:
    """An admin client; ``warehouses`` (id → fields) and those of ``records`` created, and
    each record's stock received."""
    c = await client(api)
    for wid, fields in warehouses.items():
        await warehouse(c, wid, **fields)
    for wid in dict.fromkeys(w for _, w, _ in records if w not in warehouses):
        await warehouse(c, wid)
    for sku, wid, qty in records:
        await stock(c, sku, wid, qty)
    return c


async def post(c: httpx.AsyncClient, path: str, body: Any = None, **headers: str) -> httpx.Response:
    """POST with a fresh Idempotency-Key (and ``headers``; ``_`` in names becomes ``-``)."""
    extra = {k.replace("_", "-"): v for k, v in headers.items()}
    return await c.post(path, json=body, headers={**idem(), **extra})


async def drain(api: Api) -> None:
    s = api.services
    await StreamWriter(s.engine.client, s.store, s.engine.keys, burst=True, block_ms=50).main()


def problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["type"] == f"urn:onhand:problem:{slug}", body
    return body


async def reserve(c: httpx.AsyncClient, body: dict[str, Any]) -> Any:
    r = await post(c, "/v1/reservations", body)
    assert r.status_code == 201, r.text
    return r.json()


async def act(c: httpx.AsyncClient, rid: str, action: str, **body: Any) -> Any:
    r = await post(c, f"/v1/reservations/{rid}:{action}", body or None)
    assert r.status_code == 200, r.text
    return r.json()


async def level(c: httpx.AsyncClient, sku: str, wh: str, *fields: str) -> Any:
    r = await c.get(f"/v1/stock-levels/{sku}/{wh}")
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'"{r.json()["version"]}"'
    return tuple(r.json()[f] for f in fields) if fields else r.json()


def placed(res: Any) -> list[tuple[str, int]]:
    return [(a["warehouse"], a["qty"]) for a in res["allocations"]]


# -- reservations -------------------------------------------------------------------------
async def test_a_fixed_warehouse_reservation_holds_there_and_reads_back(api: Api):
    c = await shop(api, ("A", "W1", 10), ("A", "W2", 10))
    fixed = {"mode": "fixed", "warehouse": "W2"}
    r = await post(c, "/v1/reservations", order("o1", ("A", 3), allocation=fixed))
    assert r.status_code == 201, r.text
    res = r.json()
    assert (res["status"], res["order_id"], placed(res)) == ("pending", "o1", [("W2", 3)])
    assert r.headers["location"] == f"/v1/reservations/{res['reservation_id']}"
    got = await c.get(r.headers["location"])
    assert got.status_code == 200 and got.json()["allocations"] == res["allocations"]
    assert [await level(c, "A", w, "held") for w in ("W1", "W2")] == [(0,), (3,)]
    problem(await c.get("/v1/reservations/nobody.none"), 404, "not-found")


async def test_nearest_allocation_picks_the_closest_warehouse_that_has_the_stock(api: Api):
    spots = {w: {"latitude": x, "longitude": x} for w, x in (("near", 0), ("mid", 10), ("far", 50))}
    c = await shop(api, ("A", "mid", 5), ("A", "far", 5), **spots)
    for oid, x, wid in (("o1", 1.0, "mid"), ("o2", 49.0, "far")):
        spot = {"mode": "nearest", "latitude": x, "longitude": x}
        assert placed(await reserve(c, order(oid, ("A", 2), allocation=spot))) == [(wid, 2)]


async def test_priority_allocation_goes_lowest_first_and_only_split_lines_spread(api: Api):
    prios = {w: {"priority": int(w[1])} for w in ("P5", "P1", "P9")}
    c = await shop(api, ("A", "P5", 5), ("A", "P1", 5), ("A", "P9", 5), **prios)
    assert placed(await reserve(c, order("o1", ("A", 3)))) == [("P1", 3)]
    short = problem(
        await post(c, "/v1/reservations", order("o2", ("A", 9))), 409, "insufficient-stock"
    )
    assert short["shortfalls"] == [{"sku": "A", "requested": 9, "available": 5}]
    split = {"order_id": "o3", "lines": [{"sku": "A", "qty": 9, "allow_split": True}]}
    spread = placed(await reserve(c, split))
    assert sum(q for _, q in spread) == 9 and len(spread) >= 2
    for w, q in spread:
        assert (await level(c, "A", w))["held"] >= q


async def test_insufficient_stock_answers_409_with_every_short_line_and_holds_nothing(api: Api):
    c = await shop(api, ("A", "W1", 5), ("B", "W1", 1))
    before = await level(c, "A", "W1")
    r = await post(c, "/v1/reservations", order("o1", ("A", 2), ("B", 3), ("C", 1)))
    assert problem(r, 409, "insufficient-stock")["shortfalls"] == [
        {"sku": "B", "requested": 3, "available": 1},
        {"sku": "C", "requested": 1, "available": 0},
    ]
    assert await level(c, "A", "W1") == before
    assert await level(c, "B", "W1", "held") == (0,)
    items = (await c.get("/v1/availability?sku=A&sku=B&sku=C")).json()["items"]
    assert [(i["held"], i["available"]) for i in items] == [(0, 5), (0, 1), (0, 0)]


async def test_a_confirm_is_in_the_ledger_as_soon_as_it_is_answered(api: Api):
    c = await shop(api, ("A", "W1", 5))
    rid = (await reserve(c, order("o1", ("A", 2))))["reservation_id"]
    assert (await act(c, rid, "confirm"))["status"] == "confirmed"
    r = await c.get("/v1/movements", params={"reservation_id": rid, "type": "confirmed"})
    assert r.status_code == 200, r.text
    [moved] = r.json()["items"]
    assert (moved["reservation_id"], moved["sku"], moved["d_committed"]) == (rid, "A", 2)
    assert await level(c, "A", "W1", "held", "committed") == (0, 2)


async def test_release_returns_the_stock_and_extend_moves_the_deadline_later(api: Api):
    c = await shop(api, ("A", "W1", 5))
    one = (await reserve(c, order("o1", ("A", 2))))["reservation_id"]
    two = await reserve(c, order("o2", ("A", 1), ttl_ms=5_000))
    assert (await act(c, one, "release"))["status"] == "released"
    assert await level(c, "A", "W1", "held", "available") == (1, 4)
    longer = await act(c, two["reservation_id"], "extend", ttl_ms=600_000)
    assert longer["status"] == "pending" and longer["deadline_ms"] > two["deadline_ms"]
    r = await c.get(f"/v1/reservations/{two['reservation_id']}")
    assert r.json()["deadline_ms"] == longer["deadline_ms"]
    r = await post(c, f"/v1/reservations/{one}:confirm")
    assert problem(r, 409, "invalid-transition")["reservation_status"] == "released"


async def test_fulfill_ships_the_stock_and_cancel_makes_committed_stock_available(api: Api):
    c = await shop(api, ("A", "W1", 10))
    shipped = (await reserve(c, order("o1", ("A", 3))))["reservation_id"]
    kept = (await reserve(c, order("o2", ("A", 4))))["reservation_id"]
    for rid in (shipped, kept):
        await act(c, rid, "confirm")
    assert (await act(c, shipped, "fulfill"))["status"] == "fulfilled"
    assert await level(c, "A", "W1", "on_hand", "committed", "available") == (7, 4, 3)
    assert (await act(c, kept, "cancel"))["status"] == "cancelled"
    assert await level(c, "A", "W1", "on_hand", "committed", "available") == (7, 0, 7)


# -- availability -------------------------------------------------------------------------
async def test_availability_of_one_and_many_skus_with_etags_that_track_changes(api: Api):
    c = await shop(api, ("A", "W1", 4), ("A", "W2", 6), ("B", "W1", 1))
    urls = ("/v1/skus/A/availability", "/v1/availability?sku=A&sku=B")
    one, many = [await c.get(url) for url in urls]
    assert one.status_code == 200 and one.json()["available"] == 10
    assert {w["warehouse"]: w["on_hand"] for w in one.json()["warehouses"]} == {"W1": 4, "W2": 6}
    assert [(i["sku"], i["available"]) for i in many.json()["items"]] == [("A", 10), ("B", 1)]
    etags = [one.headers["etag"], many.headers["etag"]]
    for url, etag in zip(urls, etags, strict=True):
        again = await c.get(url, headers={"If-None-Match": etag})
        assert (again.status_code, again.headers["etag"], again.content) == (304, etag, b"")
    await reserve(c, order("o1", ("A", 1)))
    for url, etag in zip(urls, etags, strict=True):
        after = await c.get(url, headers={"If-None-Match": etag})
        assert after.status_code == 200 and after.headers["etag"] != etag
    problem(await c.get("/v1/availability?sku=A&sku=A"), 422, "invalid-input")


async def test_availability_shows_backorder_preorder_low_stock_and_a_stable_sold_out_etag(
    api: Api,
):
    c = await shop(api, ("A", "W1", 3))
    policy = {"backorder_limit": 5, "reorder_point": 4, "reorder_qty": 10, "lead_time_days": 7}
    assert (await c.put("/v1/skus/A/policy", json=policy)).status_code == 200
    await reserve(c, order("o1", ("A", 3)))
    sold_out = await c.get("/v1/skus/A/availability")
    body = sold_out.json()
    assert (body["available"], body["held"], body["low_stock"]) == (0, 3, True)
    assert (body["backorder_remaining"], body["preorder_remaining"]) == (5, 0)
    assert body["expected_restock_ms"] is None  # a lead time is no date
    await asyncio.sleep(0.005)
    same = await c.get(
        "/v1/skus/A/availability", headers={"If-None-Match": sold_out.headers["etag"]}
    )
    assert same.status_code == 304
    await reserve(c, order("o2", ("A", 2)))  # beyond stock, within the backorder limit
    assert (await c.get("/v1/skus/A/availability")).json()["backorder_remaining"] == 3

    release_ms = body["at_ms"] + 86_400_000
    pre = {"preorder_limit": 10, "preorder_release_ms": release_ms, "backorder_limit": 2}
    assert (await c.put("/v1/skus/B/policy", json=pre)).status_code == 200
    b = (await c.get("/v1/skus/B/availability")).json()
    assert (b["available"], b["preorder_remaining"], b["backorder_remaining"]) == (0, 10, 0)
    assert b["expected_restock_ms"] == release_ms


async def test_the_oversell_counter_counts_units_promised_behind_the_engines_back_only(api: Api):
    probe = await client(api, public=True)
    c = await shop(api, ("A", "W1", 5), ("B", "W1", 5))
    await reserve(c, order("o1", ("A", 4)))
    body = {"sku": "A", "warehouse": "W1", "delta": -3, "reason": "damaged"}
    assert (await post(c, "/v1/adjustments", body)).status_code in (200, 201)
    await c.get("/v1/skus/A/availability")  # a write-down left 2 promised units uncovered
    assert "onhand_oversell_total 0.0" in (await probe.get("/metrics")).text

    engine = api.services.engine
    await engine.client.hset(engine.keys.stock("B", "W1"), "he", "8")  # 8 held of 5
    await c.get("/v1/availability?sku=A&sku=B")
    assert "onhand_oversell_total 3.0" in (await probe.get("/metrics")).text


async def test_the_read_fast_path_answers_exactly_as_the_routes(api: Api) -> None:
    """Every availability read, well-formed or not, gets from the app (fast path first)
    what the documented route alone answers: status, body, ETag, content type."""
    c = await shop(api, ("A", "W1", 4), ("A.B", "W2", 6), ("B", "W1", 1))
    token = c.headers["authorization"]
    app = api.app
    route_only = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app.route_slowly),  # type: ignore[attr-defined]
        base_url="http://onhand",
        headers={"Authorization": token},
    )
    many = "&".join(f"sku=X{i}" for i in range(501))
    urls = [
        "/v1/skus/A/availability", "/v1/skus/A.B/availability", "/v1/skus/NONE/availability",
        "/v1/skus/a%20b/availability", "/v1/availability?sku=A&sku=B",
        "/v1/availability?sku=A%2EB&other=1&sku=NONE", "/v1/availability?sku=A+B",
        "/v1/availability?sku=", "/v1/availability", "/v1/availability?sku=B&sku=B",
        f"/v1/availability?{many}", "/v1/availability?sku=" + "x" * 65,
    ]  # fmt: skip
    async with route_only:
        for url in urls:
            fast, slow = await c.get(url), await route_only.get(url)
            assert fast.status_code == slow.status_code, (url, fast.text, slow.text)
            for header in ("content-type", "etag"):
                assert fast.headers.get(header) == slow.headers.get(header), (url, header)
            if fast.status_code == 200:
                strip = re.compile(rb'"at_ms":\d+')  # read at different instants
                assert strip.sub(b"", fast.content) == strip.sub(b"", slow.content), url
            else:
                assert fast.json() == slow.json(), url
        for bad_key in ("Bearer nope", "Basic x"):
            for url in urls[:1] + urls[4:5]:
                r = await c.get(url, headers={"Authorization": bad_key})
                assert r.status_code == 401, (url, r.text)


# -- stock operations ---------------------------------------------------------------------
async def test_receipts_adjustments_transfers_and_safety_stock_change_the_record(api: Api):
    c = await client(api, "stock:write")
    r = await post(c, "/v1/stock-receipts", {"sku": "A", "warehouse": "W1", "qty": 10})
    assert r.status_code == 201 and r.json()["on_hand"] == 10, r.text
    adj = {"sku": "A", "warehouse": "W1", "delta": -2, "reason": "damaged"}
    r = await post(c, "/v1/adjustments", adj)
    assert r.status_code == 201 and r.json()["on_hand"] == 8, r.text
    no_reason = {k: v for k, v in adj.items() if k != "reason"}
    for bad in (no_reason, {**adj, "reason": "found"}, {**adj, "delta": 2}):
        problem(await post(c, "/v1/adjustments", bad), 422, "invalid-input")
    move = {"sku": "A", "source": "W1", "destination": "W2", "qty": 3}
    r = await post(c, "/v1/transfers", move)
    assert r.status_code == 201, r.text
    assert (r.json()["source"]["on_hand"], r.json()["destination"]["on_hand"]) == (5, 3)
    problem(await post(c, "/v1/transfers", {**move, "qty": 50}), 409, "insufficient-stock")
    problem(await post(c, "/v1/transfers", {**move, "destination": "W1"}), 422, "invalid-input")
    r = await c.put("/v1/stock-levels/A/W1/safety-stock", json={"qty": 2})
    assert r.status_code == 200 and (r.json()["safety_stock"], r.json()["available"]) == (2, 3)
    assert await level(c, "A", "W1", "on_hand", "available") == (5, 3)
    assert await level(c, "A", "W2", "on_hand") == (3,)


async def test_a_stock_count_needs_the_current_version_in_if_match(api: Api):
    c = await client(api, "stock:write")
    await stock(c, "A", "W1", 10)
    etag = (await c.get("/v1/stock-levels/A/W1")).headers["etag"]
    body = {"sku": "A", "warehouse": "W1", "count": 7}
    problem(await post(c, "/v1/stock-counts", body), 428, "precondition-required")
    await stock(c, "A", "W1", 1)  # the record moves on: the ETag read above is stale
    stale = problem(
        await post(c, "/v1/stock-counts", body, If_Match=etag), 412, "precondition-failed"
    )
    assert stale["current_version"] > int(etag.strip('"'))
    assert await level(c, "A", "W1", "on_hand") == (11,)
    fresh = (await c.get("/v1/stock-levels/A/W1")).headers["etag"]
    r = await post(c, "/v1/stock-counts", body, If_Match=fresh)
    assert r.status_code == 201 and r.json()["on_hand"] == 7, r.text
    assert r.headers["etag"] != fresh


async def test_bulk_receipts_and_adjustments_answer_207_and_apply_every_good_item(api: Api):
    c = await client(api, "stock:write")
    await stock(c, "FULL", "W1", 1)
    etag = (await c.get("/v1/stock-levels/FULL/W1")).headers["etag"]
    top = {"sku": "FULL", "warehouse": "W1", "count": 2**53 - 1}
    assert (await post(c, "/v1/stock-counts", top, If_Match=etag)).status_code == 201
    items = [("A", "W1", 4), ("FULL", "W1", 1), ("B", "W2", 6)]
    receipts = [{"sku": s, "warehouse": w, "qty": q} for s, w, q in items]
    r = await post(c, "/v1/stock-receipts:bulk", {"items": receipts})
    assert r.status_code == 207, r.text
    results = r.json()["results"]
    assert [(x["index"], x["status"]) for x in results] == [(0, 201), (1, 422), (2, 201)]
    assert results[1]["problem"]["type"] == "urn:onhand:problem:stock-limit-exceeded"
    assert (results[1]["level"], results[2]["level"]["on_hand"]) == (None, 6)
    changes = [("A", "W1", -1, "lost"), ("A", "W1", 5, "damaged"), ("B", "W2", 2, "returned")]
    adjustments = [{"sku": s, "warehouse": w, "delta": d, "reason": x} for s, w, d, x in changes]
    r = await post(c, "/v1/adjustments:bulk", {"items": adjustments})
    assert r.status_code == 207, r.text
    assert [x["status"] for x in r.json()["results"]] == [201, 422, 201]
    assert r.json()["results"][1]["problem"]["type"] == "urn:onhand:problem:invalid-input"
    assert await level(c, "A", "W1", "on_hand") == (3,)
    assert await level(c, "B", "W2", "on_hand") == (8,)
    assert await level(c, "FULL", "W1", "on_hand") == (2**53 - 1,)


async def test_a_bulk_stocktake_applies_each_count_against_its_own_version(api: Api):
    c = await client(api, "stock:write")
    await stock(c, "A", "W1", 10)
    await stock(c, "B", "W1", 10)
    version_a, version_b = [(await level(c, s, "W1", "version"))[0] for s in ("A", "B")]
    await stock(c, "B", "W1", 1)  # B moved after it was counted: its count is stale
    counts = [
        {"sku": "A", "warehouse": "W1", "count": 7, "expected_version": version_a},
        {"sku": "B", "warehouse": "W1", "count": 3, "expected_version": version_b},
        {"sku": "C", "warehouse": "W1", "count": 4, "expected_version": 0},  # never seen
    ]
    r = await post(c, "/v1/stock-counts:bulk", {"items": counts, "reference": "q4"})
    problem(r, 422, "invalid-input")  # unknown fields are refused, as everywhere
    r = await post(c, "/v1/stock-counts:bulk", {"items": counts})
    assert r.status_code == 207, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [201, 412, 201]
    assert results[1]["problem"]["type"] == "urn:onhand:problem:precondition-failed"
    assert [await level(c, s, "W1", "on_hand") for s in "ABC"] == [(7,), (11,), (4,)]


# -- catalog ------------------------------------------------------------------------------
async def test_warehouses_are_created_read_replaced_listed_and_usable_at_once(api: Api):
    c = await client(api, "admin")
    body = {"warehouse_id": "NEW", "name": "New", "latitude": 40.0, "longitude": -3.0}
    r = await post(c, "/v1/warehouses", body)
    assert r.status_code == 201 and r.headers["location"] == "/v1/warehouses/NEW", r.text
    problem(await post(c, "/v1/warehouses", body), 409, "already-exists")
    got = await c.get("/v1/warehouses/NEW")
    assert got.json() == {**body, "priority": 100, "active": True}
    r = await c.put("/v1/warehouses/NEW", json={"name": "Renamed", "priority": 3})
    assert r.status_code == 200 and r.json()["latitude"] == 0.0
    assert (await c.get("/v1/warehouses/NEW")).json()["name"] == "Renamed"
    await warehouse(c, "OLD", priority=50)
    listed = (await c.get("/v1/warehouses")).json()["items"]
    assert [(w["warehouse_id"], w["priority"]) for w in listed] == [("NEW", 3), ("OLD", 50)]
    problem(await c.get("/v1/warehouses/NONE"), 404, "not-found")
    await warehouse(c, "FIRST", priority=0)
    for wid in ("FIRST", "NEW"):
        await stock(c, "A", wid, 1)
    assert placed(await reserve(c, order("o1", ("A", 1)))) == [("FIRST", 1)]
    assert (await c.put("/v1/warehouses/NEW", json={"active": False})).status_code == 200
    problem(await post(c, "/v1/reservations", order("o2", ("A", 1))), 409, "insufficient-stock")


async def test_sku_policies_are_in_the_ledger_when_set_and_listed_page_by_page(api: Api):
    c = await client(api, "admin")
    policy = {"backorder_limit": 2, "reorder_point": 5, "reorder_qty": 20, "max_line_qty": 9}
    for sku in ("P3", "P1", "P2"):
        r = await c.put(f"/v1/skus/{sku}/policy", json=policy)
        assert r.status_code == 200 and r.json()["reorder_point"] == 5, r.text
    got = (await c.get("/v1/skus/P1/policy")).json()
    assert got == {**got, **policy, "sku": "P1", "lead_time_days": 0}
    assert (await c.get("/v1/skus/NEVER/policy")).json()["backorder_limit"] == 0
    problem(await c.put("/v1/skus/P1/policy", json={"reorder_point": -1}), 422, "invalid-input")
    # No writer ran: an acknowledged PUT was written through to the ledger.
    first = (await c.get("/v1/sku-policies", params={"limit": 2})).json()
    assert [p["sku"] for p in first["items"]] == ["P1", "P2"] and first["items"][0] == got
    rest = (await c.get("/v1/sku-policies", params={"cursor": first["next_cursor"]})).json()
    assert ([p["sku"] for p in rest["items"]], rest["next_cursor"]) == (["P3"], None)


async def test_a_policy_change_applies_to_the_very_next_reservation(api: Api):
    c = await shop(api, ("A", "W1", 20))
    await reserve(c, order("o1", ("A", 10)))
    assert (await c.put("/v1/skus/A/policy", json={"max_line_qty": 9})).status_code == 200
    problem(await post(c, "/v1/reservations", order("o2", ("A", 10))), 422, "line-limit-exceeded")
    await reserve(c, order("o3", ("A", 9)))
    short = await post(c, "/v1/reservations", order("o4", ("A", 3)))
    problem(short, 409, "insufficient-stock")
    assert (await c.put("/v1/skus/A/policy", json={"backorder_limit": 2})).status_code == 200
    problem(await post(c, "/v1/reservations", order("o4", ("A", 4))), 409, "insufficient-stock")
    await reserve(c, order("o5", ("A", 3)))  # 1 in stock + 2 on backorder


# -- the ledger ---------------------------------------------------------------------------
async def _movements(c: httpx.AsyncClient, **params: Any) -> list[Any]:
    r = await c.get("/v1/movements", params={"limit": 1000, **params})
    assert r.status_code == 200 and r.json()["next_cursor"] is None, r.text
    items: list[Any] = r.json()["items"]
    return items


async def test_movements_filter_by_every_field_and_paginate_without_gaps(api: Api):
    c = await shop(api, W1={})
    for sku, wh, ref in (("A", "W1", "po-1"), ("A", "W2", "po-2"), ("B", "W1", "po-3")):
        receipt = {"sku": sku, "warehouse": wh, "qty": 5, "reference": ref}
        assert (await post(c, "/v1/stock-receipts", receipt)).status_code == 201
        await asyncio.sleep(0.003)  # distinct at_ms, so time windows split the ledger
    rid = (await reserve(c, order("o1", ("A", 2))))["reservation_id"]
    await act(c, rid, "confirm")
    await drain(api)
    everything = await _movements(c)
    keys = [(m["at_ms"], m["event_id"]) for m in everything]
    assert keys == sorted(set(keys)) and len(keys) >= 5
    filters = {"sku": "A", "warehouse": "W2", "type": "received", "reference": "po-3"}
    for field, value in {**filters, "reservation_id": rid}.items():
        want = [m for m in everything if m[field] == value]
        assert want and await _movements(c, **{field: value}) == want, field
    assert {m["type"] for m in await _movements(c, reservation_id=rid)} == {"reserved", "confirmed"}
    middle = everything[len(everything) // 2]["at_ms"]
    late, early = await _movements(c, from_ms=middle), await _movements(c, to_ms=middle)
    assert all(m["at_ms"] >= middle for m in late) and all(m["at_ms"] < middle for m in early)
    assert early + late == everything and early and late
    seen: list[Any] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await c.get("/v1/movements", params=params)).json()
        assert 1 <= len(page["items"]) <= 2
        seen += page["items"]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == everything
    problem(await c.get("/v1/movements?type=teleported"), 422, "invalid-input")
    problem(await c.get("/v1/movements?cursor=!!!"), 422, "invalid-input")


# -- API keys -----------------------------------------------------------------------------
async def test_api_keys_are_created_listed_and_revoked(api: Api):
    c = await client(api, "admin")
    body = {"client_id": "shop", "scopes": ["availability:read"], "name": "storefront"}
    r = await post(c, "/v1/api-keys", body)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["token"].startswith(f"onh_{made['key_id']}_") and made["revoked"] is False
    secret = made["token"].split("_", 2)[2]
    row = await api.services.store.pool.fetchrow(
        "SELECT * FROM api_keys WHERE key_id = $1", made["key_id"]
    )
    assert row is not None and row["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    stored = " ".join(str(v) for v in row.values())
    assert secret not in stored and made["token"] not in stored  # only its hash is kept
    async with api.http(made["token"]) as shop:
        assert (await shop.get("/v1/skus/A/availability")).status_code == 200
        problem(await shop.get("/v1/warehouses"), 403, "forbidden")
        listed = (await c.get("/v1/api-keys")).json()["items"]
        mine = [k for k in listed if k["key_id"] == made["key_id"]]
        assert mine == [{k: v for k, v in made.items() if k != "token"}]
        assert all("token" not in k and "secret_sha256" not in k for k in listed)
        r = await post(c, f"/v1/api-keys/{made['key_id']}:revoke")
        assert r.status_code == 200 and r.json()["revoked"] is True, r.text
        problem(await shop.get("/v1/skus/A/availability"), 401, "unauthorized")
    problem(await post(c, "/v1/api-keys/0000000000000000:revoke"), 404, "not-found")


# -- operations and docs ------------------------------------------------------------------
async def _ready(c: httpx.AsyncClient, status: int, within_s: float = 5.0) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        r = await c.get("/readyz")
        if r.status_code == status or time.monotonic() > deadline:
            assert r.status_code == status, r.text
            return r.json()
        await asyncio.sleep(0.1)


async def test_probes_say_live_and_ready_and_a_fenced_engine_is_not_ready(api: Api):
    probe = await client(api, public=True)
    await shop(api, ("A", "W1", 1))
    await drain(api)
    r = await probe.get("/livez")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    body = await _ready(probe, 200)
    assert body["checks"] == {"redis": "ok", "postgres": "ok", "writer_lag": "ok"}
    await api.services.engine.fence()
    body = await _ready(probe, 503, within_s=0)
    assert body["status"] == "not ready" and body["checks"]["redis"].startswith("fenced")
    assert (await probe.get("/livez")).status_code == 200


async def test_readiness_is_503_while_postgres_is_cut_off_and_ready_again_after(
    api_settings: Settings,
):
    async with TcpProxy.for_url(api_settings.require_database_url()) as proxy:
        proxied = api_settings.model_copy(
            update={"database_url": proxy.url_for(api_settings.require_database_url())}
        )
        async with open_api(proxied) as cut_api:
            probe = await client(cut_api, public=True)
            await drain(cut_api)
            await _ready(probe, 200)
            await proxy.cut()
            body = await _ready(probe, 503)
            assert body["checks"]["postgres"].startswith("unreachable"), body
            assert body["checks"]["redis"] == "ok"
            assert (await probe.get("/livez")).status_code == 200
            await proxy.restore()
            assert (await _ready(probe, 200))["checks"]["postgres"] == "ok"


async def test_metrics_expose_the_oversell_counter_at_zero_and_reservation_outcomes(api: Api):
    probe, c = await client(api, public=True), await shop(api, ("A", "W1", 1))
    await reserve(c, order("o1", ("A", 1)))
    await c.get("/v1/skus/A/availability")
    r = await probe.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "onhand_oversell_total 0.0" in r.text
    assert 'onhand_reservations_total{outcome="held"} 1.0' in r.text
    assert "onhand_http_requests_total" in r.text


async def test_metrics_show_confirm_latency_expired_holds_and_writer_lag(api: Api):
    probe, c = await client(api, public=True), await shop(api, ("A", "W1", 5))
    kept = await reserve(c, order("kept", ("A", 1)))
    await act(c, kept["reservation_id"], "confirm")
    await reserve(c, order("lapsed", ("A", 1), ttl_ms=1_000))
    await asyncio.sleep(1.05)
    assert await Reaper(api.services.engine, burst=True).tick() == 1
    await reserve(c, order("waiting", ("A", 1)))  # not drained: the writer lags
    assert await sample(api.services, count_expired=False) > 0
    text = (await probe.get("/metrics")).text
    assert "onhand_confirm_seconds_count 1.0" in text
    assert "onhand_expired_holds 0.0" in text  # not counted in this sample
    assert re.search(r"^onhand_writer_lag_seconds [1-9e.0-9-]+$", text, re.M), text
    assert re.search(r"^onhand_writer_lag_seconds 0\.0$", text, re.M) is None
    await drain(api)
    assert await sample(api.services) == 0
    text = (await probe.get("/metrics")).text
    assert "onhand_expired_holds 1.0" in text
    assert "onhand_writer_lag_seconds 0.0" in text


async def test_docs_are_served_from_this_app_without_a_cdn(api: Api):
    probe = await client(api, public=True)
    r = await probe.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assets = re.findall(r"""<(?:script|link)[^>]*?(?:src|href)=["']([^"']+)""", r.text)
    assert "/docs/static/swagger-ui-bundle.js" in assets and "/docs/static/swagger-ui.css" in assets
    assert not [a for a in assets if "http" in a or a.startswith("//")], assets
    for asset in assets:
        assert (await probe.get(asset)).status_code == 200, asset
    assert (await probe.get("/openapi.json")).json()["info"]["title"] == "onhand"


def _template(path: str) -> re.Pattern[str]:
    parts = re.split(r"\{[^}]+\}", path)
    return re.compile("[^/:]+".join(re.escape(p) for p in parts) + "$")


async def test_every_operation_of_the_openapi_document_is_exercised_by_this_file(
    api: Api, request: pytest.FixtureRequest
):
    module = request.module
    defined = {n for n in vars(module) if n.startswith("test_")}
    ran = {i.name for i in request.session.items if getattr(i, "module", None) is module}
    if ran != defined:
        pytest.skip("meaningful only when the whole file runs")
    operations = [
        (method.upper(), path, _template(path))
        for path, item in api.app.openapi()["paths"].items()
        for method in item
    ]
    missed = [
        f"{method} {path}"
        for method, path, pattern in operations
        if not any(m == method and pattern.match(p) for m, p in HITS)
    ]
    assert missed == []
